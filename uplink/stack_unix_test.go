//go:build unix

package uplink

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgegw/edgegw/secrets"
)

// TestIdleSessionStack checks the stack an idle connected session's
// goroutine uses. A goroutine's stack grows during a connect (signing,
// logging) and Go's collector halves it only while the goroutine uses less
// than a quarter of it, counting 800 bytes of guard: an idle session that
// uses less than 1,248 bytes gets back to 4 KiB, one that uses more keeps
// 8 KiB for good (4 KiB more per device). Go reports no stack usage, so the
// test runs an idle session in a child process and reads the stack pointers
// of its SIGQUIT dump (GOTRACEBACK=system).
func TestIdleSessionStack(t *testing.T) {
	if os.Getenv("EDGEGW_TEST_IDLE_SESSION_CHILD") == "1" {
		idleSessionChild(t)
		return
	}
	if raceEnabled {
		t.Skip("the race detector changes frames and stack guards")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestIdleSessionStack$")
	cmd.Env = append(os.Environ(), "EDGEGW_TEST_IDLE_SESSION_CHILD=1", "GOTRACEBACK=system")
	var dump bytes.Buffer
	cmd.Stderr = &dump
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if sc.Text() == "IDLE SESSION READY" {
				ready <- true
			}
		}
		ready <- false
	}()
	select {
	case ok := <-ready:
		if !ok {
			_ = cmd.Wait()
			t.Fatalf("child ended before its session was idle:\n%s", dump.String())
		}
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("child's session not idle within 30 s:\n%s", dump.String())
	}
	_ = cmd.Process.Signal(syscall.SIGQUIT)
	_ = cmd.Wait()

	used, frames, ok := sessionStackUse(dump.String())
	if !ok {
		t.Fatalf("no idle session goroutine in the child's dump:\n%s", dump.String())
	}
	t.Logf("an idle session's goroutine uses %d bytes of stack:\n%s", used, frames)
	// From 8 KiB to 4 KiB: the goroutine must use less than 8192/4 with
	// the guard.
	if used+800 >= 8192/4 {
		t.Errorf("an idle session uses %d bytes of stack: its stack cannot shrink back to 4 KiB (it must use less than %d)", used, 8192/4-800)
	}
}

// idleSessionChild runs one idle connected session and waits for SIGQUIT.
func idleSessionChild(t *testing.T) {
	cloud := startMochi(t, secrets.Aliyun)
	r := newRig(t, cloud.url)
	d := testDevice(1)
	cloud.register(d.ID, d.Secret)
	r.add(d)
	startManager(t, r.m)
	r.waitStatus(d.ID, "connected", func(st SessionStatus) bool { return st.State == StateConnected })
	fmt.Println("IDLE SESSION READY")
	select {}
}

var frameSP = regexp.MustCompile(`fp=0x([0-9a-f]+) sp=0x([0-9a-f]+)`)

// sessionStackUse finds the goroutine blocked in the drain's wait in a
// GOTRACEBACK=system dump and returns the stack it uses and its frames.
func sessionStackUse(dump string) (int, string, bool) {
	for _, g := range strings.Split(dump, "\ngoroutine ") {
		if !strings.Contains(g, "uplink.(*drainer).wait") {
			continue
		}
		var sp0, fp uint64
		var frames strings.Builder
		fn := ""
		for _, line := range strings.Split(g, "\n") {
			m := frameSP.FindStringSubmatch(line)
			if m == nil {
				if line != "" && !strings.HasPrefix(line, "\t") && !strings.HasPrefix(line, "created by") {
					fn = line
				}
				continue
			}
			f, _ := strconv.ParseUint(m[1], 16, 64)
			s, _ := strconv.ParseUint(m[2], 16, 64)
			if sp0 == 0 {
				sp0 = s
			}
			fp = f
			fmt.Fprintf(&frames, "  %5d %s\n", f-s, fn)
		}
		if sp0 == 0 {
			continue
		}
		hi := (fp + 2047) &^ 2047
		return int(hi - sp0), frames.String(), true
	}
	return 0, "", false
}
