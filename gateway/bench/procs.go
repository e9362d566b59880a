package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat.
// Linux fixes it at 100 on every architecture Go supports.
const clockTicks = 100

// child is a process the benchmark started: the gateway, a cloud
// simulator or a mosquitto broker.
type child struct {
	name string
	cmd  *exec.Cmd
	out  *lineLog
	done chan struct{}
	err  error // the exit status, once done is closed
}

// startChild starts path with args; its output goes to a line log (the
// last lines are kept for error messages), to each watcher line by line
// and, when echo is not nil, to echo.
func startChild(name, path string, args, env []string, echo io.Writer, watchers ...func(line string)) (*child, error) {
	cmd := exec.Command(path, args...)
	cmd.Env = append(os.Environ(), env...)
	out := &lineLog{echo: echo, prefix: name + ": ", watchers: watchers}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s (%s): %w", name, path, err)
	}
	c := &child{name: name, cmd: cmd, out: out, done: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		close(c.done)
	}()
	return c, nil
}

// pid returns the child's process id.
func (c *child) pid() int { return c.cmd.Process.Pid }

// exited reports whether the child has exited.
func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM and waits up to grace, then kills. It returns an
// error if the child had to be killed or did not exit cleanly.
func (c *child) stop(grace time.Duration) error {
	if c.exited() {
		return nil
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
		if c.err != nil {
			return fmt.Errorf("stop %s: %w: %s", c.name, c.err, c.out.lastLine())
		}
		return nil
	case <-time.After(grace):
	}
	c.kill()
	return fmt.Errorf("stop %s: still running %v after SIGTERM, killed", c.name, grace)
}

// kill sends SIGKILL and waits for the exit.
func (c *child) kill() {
	if c.exited() {
		return
	}
	_ = c.cmd.Process.Kill()
	<-c.done
}

// goroutines makes a Go child dump its goroutines (SIGQUIT, with
// GOTRACEBACK=all or system in its environment) and counts them. The child
// exits.
func (c *child) goroutines(limit time.Duration) (int, error) {
	d, err := c.dumpGoroutines(limit)
	return d.count, err
}

// dumpGoroutines is goroutines, also returning what the dump tells by part
// (with GOTRACEBACK=system, which prints each frame's stack pointers).
func (c *child) dumpGoroutines(limit time.Duration) (goroutineDump, error) {
	c.out.resetGoroutines()
	if err := c.cmd.Process.Signal(syscall.SIGQUIT); err != nil {
		return goroutineDump{}, fmt.Errorf("signal %s for a goroutine dump: %w", c.name, err)
	}
	select {
	case <-c.done:
	case <-time.After(limit):
		c.kill()
		return goroutineDump{}, fmt.Errorf("goroutine dump of %s: no exit within %v", c.name, limit)
	}
	d := c.out.goroutineDump()
	if d.count == 0 {
		return d, fmt.Errorf("goroutine dump of %s: no goroutines in its output (exit: %v)", c.name, c.err)
	}
	return d, nil
}

// cpu returns the child's user+system CPU time so far.
func (c *child) cpu() (time.Duration, error) { return procCPU(c.pid()) }

// mem returns the child's memory figures.
func (c *child) mem() (procMem, error) { return procStatus(c.pid()) }

// lineLog is the output of a child: it keeps the last lines, counts
// goroutine headers of a SIGQUIT dump and calls watchers on each line.
type lineLog struct {
	echo   io.Writer
	prefix string

	mu       sync.Mutex
	partial  []byte
	last     []string
	gor      int
	counting bool
	dump     goroutineDump
	cur      dumpedGoroutine
	watchers []func(line string)
}

var goroutineHeader = regexp.MustCompile(`^goroutine \d+ .*\[.*\]:$`)

const keepLines = 40

func (l *lineLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.partial = append(l.partial, p...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		line := string(l.partial[:i])
		l.partial = l.partial[i+1:]
		l.line(line)
	}
	if len(l.partial) > 64<<10 { // a line without end: keep memory bounded
		l.line(string(l.partial))
		l.partial = l.partial[:0]
	}
	return len(p), nil
}

func (l *lineLog) line(s string) {
	if l.counting && strings.HasPrefix(s, "goroutine ") && goroutineHeader.MatchString(s) {
		l.dump.add(l.cur)
		l.cur = dumpedGoroutine{started: true, system: strings.HasPrefix(s, "goroutine 0 ")}
		if !l.cur.system {
			l.gor++
		}
		return
	}
	if l.counting && l.cur.frame(s) {
		return // stack frames of the dump
	}
	if l.counting && (strings.HasPrefix(s, "\t") || strings.Contains(s, "(...)") || strings.HasPrefix(s, "created by ") || s == "") {
		return // stack frames of the dump
	}
	if len(l.last) == keepLines {
		copy(l.last, l.last[1:])
		l.last = l.last[:keepLines-1]
	}
	l.last = append(l.last, s)
	if l.echo != nil {
		fmt.Fprintf(l.echo, "%s%s\n", l.prefix, s)
	}
	for _, w := range l.watchers {
		w(s)
	}
}

func (l *lineLog) resetGoroutines() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.gor, l.counting = 0, true
	l.dump, l.cur = goroutineDump{}, dumpedGoroutine{}
}

// goroutineDump returns what the last dump told.
func (l *lineLog) goroutineDump() goroutineDump {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.dump.add(l.cur)
	l.cur = dumpedGoroutine{}
	d := l.dump
	d.count = l.gor
	return d
}

func (l *lineLog) lastLine() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.last) == 0 {
		return "(no output)"
	}
	return l.last[len(l.last)-1]
}

func (l *lineLog) tail() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.last, "\n")
}

// procCPU reads utime+stime of a process from /proc/PID/stat.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read CPU time of process %d: %w", pid, err)
	}
	// The command name (field 2) may hold spaces: fields are counted
	// after its closing parenthesis, where field 3 (state) is index 0.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("read CPU time of process %d: malformed stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("read CPU time of process %d: malformed stat", pid)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("read CPU time of process %d: malformed utime/stime", pid)
	}
	return time.Duration(ut+st) * time.Second / clockTicks, nil
}

// procMem is a process's memory from /proc/PID/status.
type procMem struct {
	RSS     int64 // bytes resident now (VmRSS)
	HWM     int64 // peak resident bytes (VmHWM)
	Threads int
}

// procStatus reads VmRSS, VmHWM and Threads of a process.
func procStatus(pid int) (procMem, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return procMem{}, fmt.Errorf("read memory of process %d: %w", pid, err)
	}
	var m procMem
	for line := range strings.Lines(string(b)) {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "VmRSS":
			m.RSS = n << 10
		case "VmHWM":
			m.HWM = n << 10
		case "Threads":
			m.Threads = int(n)
		}
	}
	if m.RSS == 0 {
		return m, fmt.Errorf("read memory of process %d: no VmRSS in status", pid)
	}
	return m, nil
}

// freePort returns a loopback address that was free a moment ago.
func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// waitPort polls addr until it accepts a TCP connection, the child exits
// or ctx ends.
func waitPort(ctx context.Context, addr string, c *child) error {
	for {
		conn, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err == nil {
			conn.Close()
			return nil
		}
		if c != nil && c.exited() {
			return fmt.Errorf("%s exited before listening on %s: %v; last output:\n%s", c.name, addr, c.err, c.out.tail())
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for a listener on %s: %w", addr, context.Cause(ctx))
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// randomHex returns n random bytes, hex-encoded.
func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go ≥ 1.24)
	return hex.EncodeToString(b)
}

// raiseFileLimit raises the soft open-file limit to the hard one. Calling
// Setrlimit also makes children inherit the raised limit (os/exec restores
// the original soft limit otherwise), which the brokers need for thousands
// of connections.
func raiseFileLimit() (uint64, error) {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return 0, fmt.Errorf("read the open-file limit: %w", err)
	}
	r.Cur = r.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return 0, fmt.Errorf("raise the open-file limit: %w", err)
	}
	return r.Cur, nil
}

// ErrPeerMissing is returned (wrapped) by scenarios that need a
// third-party program, such as Debian's mosquitto, that is not installed.
var ErrPeerMissing = errors.New("peer program not installed")
