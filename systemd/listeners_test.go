package systemd_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgegw/edgegw/systemd"
)

// helperEnv marks the child process of TestListenersActivated.
const helperEnv = "EDGEGW_SYSTEMD_TEST_HELPER"

// activationResult is what the helper process reports about Listeners.
type activationResult struct {
	Addrs      map[string][]string // name → listener addresses
	Err        string
	SecondSame bool   // the second call returned the same map and error
	EnvLeft    string // LISTEN_FDS after the call
}

// TestListenersHelperProcess is not a test: it is the child that
// TestListenersActivated starts with inherited descriptors, the way
// systemd starts a socket-activated service.
func TestListenersHelperProcess(t *testing.T) {
	if os.Getenv(helperEnv) != "listeners" {
		return
	}
	// systemd sets LISTEN_PID to the service's PID after fork.
	os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))
	m, err := systemd.Listeners()
	m2, err2 := systemd.Listeners()
	res := activationResult{Addrs: map[string][]string{}, EnvLeft: os.Getenv("LISTEN_FDS")}
	for name, ls := range m {
		for _, l := range ls {
			res.Addrs[name] = append(res.Addrs[name], l.Addr().String())
		}
	}
	if err != nil {
		res.Err = err.Error()
	}
	res.SecondSame = reflect.ValueOf(m).Pointer() == reflect.ValueOf(m2).Pointer() && err == err2
	b, _ := json.Marshal(res)
	fmt.Printf("RESULT %s\n", b)

	// Prove the inherited listener serves: greet one connection.
	if ls := m["mqtt"]; len(ls) == 1 {
		c, err := ls[0].Accept()
		if err == nil {
			io.WriteString(c, "hello from fd 3\n")
			c.Close()
		}
	}
	os.Exit(0)
}

func TestListenersActivated(t *testing.T) {
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	unnamed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer unnamed.Close()
	udp, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	dir, err := os.MkdirTemp("", "sdl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	unixPath := filepath.Join(dir, "admin.sock")
	unix, err := net.Listen("unix", unixPath)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close()

	files := []*os.File{
		mustFile(t, tcp.(*net.TCPListener)),     // fd 3 "mqtt"
		mustFile(t, udp.(*net.UDPConn)),         // fd 4 "bogus": not a listener
		mustFile(t, unix.(*net.UnixListener)),   // fd 5 "unix"
		mustFile(t, unnamed.(*net.TCPListener)), // fd 6, no name
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestListenersHelperProcess$", "-test.count=1")
	cmd.ExtraFiles = files
	cmd.Env = append(os.Environ(), helperEnv+"=listeners", "LISTEN_FDS=4", "LISTEN_FDNAMES=mqtt:bogus:unix:")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start helper: %v", err)
	}
	for _, f := range files {
		f.Close()
	}
	exited := make(chan error, 1)
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})

	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		exited <- cmd.Wait()
	}()
	var res activationResult
	timeout := time.After(waitLong)
	for res.Addrs == nil {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("helper exited without a result")
			}
			if js, ok := strings.CutPrefix(l, "RESULT "); ok {
				if err := json.Unmarshal([]byte(js), &res); err != nil {
					t.Fatalf("helper result %q: %v", js, err)
				}
			}
		case <-timeout:
			t.Fatal("no result from the helper")
		}
	}

	want := map[string][]string{
		"mqtt":        {tcp.Addr().String()},
		"unix":        {unixPath},
		"LISTEN_FD_6": {unnamed.Addr().String()},
	}
	if !reflect.DeepEqual(res.Addrs, want) {
		t.Errorf("listeners = %v, want %v", sortedKeys(res.Addrs), sortedKeys(want))
		t.Errorf("got %v, want %v", res.Addrs, want)
	}
	if !strings.Contains(res.Err, `fd 4 ("bogus")`) || strings.Contains(res.Err, "fd 3") {
		t.Errorf("error = %q, want one naming fd 4 (\"bogus\") only", res.Err)
	}
	if !res.SecondSame {
		t.Error("a second call returned something else than the first")
	}
	if res.EnvLeft != "" {
		t.Errorf("LISTEN_FDS = %q after the call, want it unset", res.EnvLeft)
	}

	c, err := net.DialTimeout("tcp", tcp.Addr().String(), waitLong)
	if err != nil {
		t.Fatalf("dial the inherited listener: %v", err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(waitLong))
	greeting, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || greeting != "hello from fd 3\n" {
		t.Fatalf("greeting through the inherited listener = %q, %v", greeting, err)
	}
	select {
	case err := <-exited:
		exited <- err // for the cleanup
		if err != nil {
			t.Fatalf("helper: %v", err)
		}
	case <-time.After(waitLong):
		t.Fatal("helper did not exit")
	}
}

func TestListenersNotActivated(t *testing.T) {
	t.Setenv("LISTEN_FDS", "")
	os.Unsetenv("LISTEN_FDS")
	m, err := systemd.Listeners()
	if err != nil || len(m) != 0 {
		t.Fatalf("Listeners() without activation = %v, %v; want an empty map and nil", m, err)
	}
}

type filer interface{ File() (*os.File, error) }

func mustFile(t *testing.T, f filer) *os.File {
	t.Helper()
	file, err := f.File()
	if err != nil {
		t.Fatal(err)
	}
	return file
}

func sortedKeys(m map[string][]string) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
