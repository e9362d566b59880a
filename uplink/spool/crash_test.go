package spool_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgegw/edgegw/uplink/spool"
)

const (
	crashPathEnv = "EDGEGW_SPOOL_CRASH_PATH"
	crashIterEnv = "EDGEGW_SPOOL_CRASH_RUN"
	crashDevices = 4 // device 0 also acknowledges its messages
)

// TestHelperProcess is the child of TestCrashKill9: it appends from one
// goroutine per device and prints "A device seq run/i" only after Append
// returned (and "k seq" before, "K seq" after acknowledging device 0's
// previous message),
// until it is killed.
func TestHelperProcess(t *testing.T) {
	path := os.Getenv(crashPathEnv)
	if path == "" {
		t.Skip("helper process of TestCrashKill9")
	}
	run := os.Getenv(crashIterEnv)
	s, err := spool.Open(path, spool.Options{})
	if err != nil {
		fmt.Printf("E open: %v\n", err)
		os.Exit(3)
	}
	out := make(chan string, 1024)
	for g := range crashDevices {
		go func() {
			var prev uint64
			for i := 0; ; i++ {
				m := spool.Message{Topic: "/pk/dev/user/data", Payload: []byte(fmt.Sprintf("%s/%d", run, i)), QoS: 1}
				seq, err := s.Append(context.Background(), dev(g), m)
				if err != nil {
					out <- fmt.Sprintf("E append: %v\n", err)
					return
				}
				out <- fmt.Sprintf("A %d %d %s/%d\n", g, seq, run, i)
				if g == 0 && prev != 0 {
					// Say so before asking: the deletion may commit
					// after this line and before the kill, with no
					// time left to print "K". Written directly (one
					// write(2) into the pipe, atomic), so it is out
					// before the Ack can commit.
					os.Stdout.WriteString(fmt.Sprintf("k %d\n", prev))
					if err := s.Ack(dev(0), prev); err != nil {
						out <- fmt.Sprintf("E ack: %v\n", err)
						return
					}
					out <- fmt.Sprintf("K %d\n", prev)
				}
				prev = seq
			}
		}()
	}
	deadline := time.After(time.Minute) // the parent died: do not linger
	for {
		select {
		case line := <-out:
			os.Stdout.WriteString(line) // one write per line, unbuffered
		case <-deadline:
			os.Exit(4)
		}
	}
}

type crashRecord struct {
	seq     uint64
	payload string
}

// TestCrashKill9 runs the helper, kills it with SIGKILL after a random
// number of acknowledged appends, reopens the spool and checks that every
// acknowledged message is there, in order, with seqs never reused. Then it
// drains the spool and goes again. EDGEGW_CRASH_ITER sets the number of
// kills (default 20).
func TestCrashKill9(t *testing.T) {
	iters := 20
	if v := os.Getenv("EDGEGW_CRASH_ITER"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			t.Fatalf("EDGEGW_CRASH_ITER=%q: want a positive number", v)
		}
		iters = n
	}
	if testing.Short() {
		iters = min(iters, 3)
	}
	path := filepath.Join(t.TempDir(), "spool.db")
	var maxSeq uint64
	lostAcks, totalAppends := 0, 0
	for it := range iters {
		killAfter := 1 + rand.IntN(300)
		lines, stderr := runAndKill(t, path, it, killAfter)

		// What the child reported as done.
		want := map[int][]crashRecord{}
		acked := map[uint64]bool{}
		firstSeq := uint64(0)
		for _, l := range lines {
			f := strings.Fields(l)
			switch {
			case len(f) == 4 && f[0] == "A":
				g, _ := strconv.Atoi(f[1])
				seq, _ := strconv.ParseUint(f[2], 10, 64)
				want[g] = append(want[g], crashRecord{seq, f[3]})
				if firstSeq == 0 || seq < firstSeq {
					firstSeq = seq
				}
				totalAppends++
			case len(f) == 2 && f[0] == "k":
				// Acknowledgement asked for: the message may be gone.
				seq, _ := strconv.ParseUint(f[1], 10, 64)
				acked[seq] = true
			case len(f) == 2 && f[0] == "K":
			default:
				t.Fatalf("run %d: child said %q (stderr: %s)", it, l, stderr)
			}
		}
		if firstSeq != 0 && firstSeq <= maxSeq {
			t.Fatalf("run %d: seq %d reused (seqs up to %d were assigned before)", it, firstSeq, maxSeq)
		}

		s, err := spool.Open(path, spool.Options{CompactMinSize: -1})
		if err != nil {
			t.Fatalf("run %d (killed after %d lines): reopen: %v", it, killAfter, err)
		}
		for g := range crashDevices {
			got := readAll(t, s, dev(g))
			pos := map[uint64]int{}
			for i, m := range got {
				pos[m.Seq] = i
				if i > 0 && !payloadAfter(string(got[i-1].Payload), string(m.Payload)) {
					t.Fatalf("run %d device %d: %q (seq %d) after %q (seq %d): order broken",
						it, g, m.Payload, m.Seq, got[i-1].Payload, got[i-1].Seq)
				}
				maxSeq = max(maxSeq, m.Seq)
			}
			for _, r := range want[g] {
				maxSeq = max(maxSeq, r.seq)
				i, ok := pos[r.seq]
				if !ok {
					if acked[r.seq] {
						continue // acknowledged and deleted
					}
					t.Fatalf("run %d (killed after %d lines): device %d lost acknowledged seq %d (%s)", it, killAfter, g, r.seq, r.payload)
				}
				if string(got[i].Payload) != r.payload {
					t.Fatalf("run %d: device %d seq %d holds %q, want %q", it, g, r.seq, got[i].Payload, r.payload)
				}
				if acked[r.seq] {
					lostAcks++ // the deletion did not commit before the kill: a duplicate
				}
			}
			// Drain, as the uplink would.
			for _, m := range got {
				if err := s.Ack(dev(g), m.Seq); err != nil {
					t.Fatal(err)
				}
			}
		}
		syncQ(t, s)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("survived %d SIGKILLs; %d acknowledged appends checked; %d acknowledgements lost in a kill (duplicates on resend)",
		iters, totalAppends, lostAcks)
}

// payloadAfter reports whether payload b ("run/i") was appended after a.
func payloadAfter(a, b string) bool {
	var ra, ia, rb, ib int
	fmt.Sscanf(a, "%d/%d", &ra, &ia)
	fmt.Sscanf(b, "%d/%d", &rb, &ib)
	return rb > ra || rb == ra && ib > ia
}

// runAndKill starts the helper and kills it once it printed killAfter
// lines; it returns every complete line printed before the kill.
func runAndKill(t *testing.T, path string, run, killAfter int) ([]string, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashPathEnv+"="+path, crashIterEnv+"="+strconv.Itoa(run))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		select {
		case <-done:
		default:
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	var lines []string
	sc := bufio.NewScanner(stdout)
	sc.Split(completeLines)
	killed := false
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) == killAfter && !killed {
			killed = true
			if err := cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
		}
	}
	err = cmd.Wait()
	close(done)
	if !killed {
		t.Fatalf("run %d: helper exited by itself (%v) after %d lines: %s", run, err, len(lines), stderr.String())
	}
	return lines, stderr.String()
}

// completeLines is bufio.ScanLines without the unterminated last line (a
// write cut by the kill; with one write per line into a pipe it does not
// happen, but the check must not depend on it).
func completeLines(data []byte, atEOF bool) (int, []byte, error) {
	if i := bytes.IndexByte(data, '\n'); i >= 0 {
		return i + 1, data[:i], nil
	}
	if atEOF {
		return len(data), nil, nil
	}
	return 0, nil, nil
}
