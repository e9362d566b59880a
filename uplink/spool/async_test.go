package spool_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/uplink/spool"
)

// asyncResult is what one AppendAsync reported.
type asyncResult struct {
	seq uint64
	err error
}

// A device with many appends in flight gets them all into one commit:
// AppendAsync returns without waiting for the disk, and the writer
// reports each append after the commit holding it, in the order made.
// Append (one at a time per caller) would need one commit each.
func TestAppendAsyncOneCommitForManyInFlight(t *testing.T) {
	var gate testutil.Gate
	s := mustOpen(t, filepath.Join(t.TempDir(), "spool.db"), spool.Options{BeforeCommit: gate.Pass})
	before := s.Totals().Commits

	// Hold the writer in a commit of another device's message, so that
	// the 16 appends below all wait for the next one.
	gate.Close()
	blocker := make(chan asyncResult, 1)
	s.AppendAsync(context.Background(), dev(1), msg("blocker"), func(seq uint64, err error) { blocker <- asyncResult{seq, err} })
	gate.WaitEntered(t, 10*time.Second)

	const inFlight = 16
	var mu sync.Mutex
	var order []int
	results := make([]asyncResult, inFlight)
	var finished sync.WaitGroup
	finished.Add(inFlight)
	for i := range inFlight {
		// Returns at once: the writer is held, nothing is on disk.
		s.AppendAsync(context.Background(), dev(0), msg(fmt.Sprint(i)), func(seq uint64, err error) {
			mu.Lock()
			order = append(order, i)
			results[i] = asyncResult{seq, err}
			mu.Unlock()
			finished.Done()
		})
	}
	mu.Lock()
	early := len(order)
	mu.Unlock()
	if early != 0 {
		t.Fatalf("%d appends reported done while no commit could finish", early)
	}
	gate.Open()
	finished.Wait()
	if r := <-blocker; r.err != nil {
		t.Fatalf("blocker: %v", r.err)
	}

	for i, r := range results {
		if r.err != nil {
			t.Fatalf("append %d: %v", i, r.err)
		}
		if i > 0 && r.seq <= results[i-1].seq {
			t.Errorf("append %d got seq %d after %d", i, r.seq, results[i-1].seq)
		}
		if order[i] != i {
			t.Errorf("done calls in order %v, want the order of the appends", order)
			break
		}
	}
	if got := s.Totals().Commits - before; got != 2 {
		t.Errorf("%d commits for the blocker and 16 appends in flight, want 2", got)
	}
	if ms := readAll(t, s, dev(0)); len(ms) != inFlight {
		t.Errorf("%d messages readable, want %d", len(ms), inFlight)
	}
}

// AppendAsync keeps Append's refusals: each one reaches done, exactly
// once; invalid input and a closed queue before AppendAsync returns.
func TestContractAppendAsyncErrors(t *testing.T) {
	forEachImpl(t, func(t *testing.T, open func(testing.TB, spool.Options) queue) {
		size := spool.Size(msg("00"))
		q := open(t, spool.Options{Budget: 10 * size, DeviceBudget: 2 * size, Overflow: spool.RejectNew})
		call := func(ctx context.Context, m spool.Message) (chan asyncResult, *atomic.Int32) {
			ch := make(chan asyncResult, 2)
			var calls atomic.Int32
			q.AppendAsync(ctx, dev(1), m, func(seq uint64, err error) {
				calls.Add(1)
				ch <- asyncResult{seq, err}
			})
			return ch, &calls
		}
		wait := func(ch chan asyncResult, calls *atomic.Int32) asyncResult {
			t.Helper()
			select {
			case r := <-ch:
				if n := calls.Load(); n != 1 {
					t.Errorf("done called %d times", n)
				}
				return r
			case <-time.After(10 * time.Second):
				t.Fatal("done not called within 10s")
				return asyncResult{}
			}
		}

		for i := range 2 {
			if r := wait(call(context.Background(), msg(fmt.Sprintf("%02d", i)))); r.err != nil || r.seq == 0 {
				t.Fatalf("append %d: seq %d, %v", i, r.seq, r.err)
			}
		}
		if r := wait(call(context.Background(), msg("xx"))); !errors.Is(r.err, spool.ErrFull) {
			t.Errorf("append over the device budget: %v, want ErrFull", r.err)
		}
		big := msg(strings.Repeat("x", int(3*size)))
		if r := wait(call(context.Background(), big)); !errors.Is(r.err, spool.ErrTooLarge) {
			t.Errorf("oversized append: %v, want ErrTooLarge", r.err)
		}
		if st := q.Stats(dev(1)); st.Rejected != 2 || st.Depth != 2 {
			t.Errorf("stats %+v", st)
		}

		// Refused before the writer: done has run when AppendAsync returns.
		long := msg("x")
		long.Topic = strings.Repeat("t", 70000)
		ch, calls := call(context.Background(), long)
		if calls.Load() != 1 {
			t.Error("invalid message: done not called before AppendAsync returned")
		}
		if r := wait(ch, calls); !errors.Is(r.err, spool.ErrTooLarge) {
			t.Errorf("70000-byte topic: %v, want ErrTooLarge", r.err)
		}
		if err := q.Close(); err != nil {
			t.Fatal(err)
		}
		ch, calls = call(context.Background(), msg("y"))
		if calls.Load() != 1 {
			t.Error("closed queue: done not called before AppendAsync returned")
		}
		if r := wait(ch, calls); !errors.Is(r.err, spool.ErrClosed) {
			t.Errorf("append after close: %v, want ErrClosed", r.err)
		}
	})
}

// Close while appenders hand requests over without waiting: every
// AppendAsync gets exactly one answer, every append answered with a seq
// is in the file, every refusal is ErrClosed, and nothing panics (a send
// on a closed channel, a done called twice).
func TestAppendAsyncClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spool.db")
	var gate testutil.Gate
	s, err := spool.Open(path, spool.Options{BeforeCommit: gate.Pass, MaxBatch: 8})
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu      sync.Mutex
		stored  = map[uint64]bool{}
		calls   = map[int]int{}
		made    atomic.Int64
		stopped atomic.Bool
		wg      sync.WaitGroup
		pending sync.WaitGroup
	)
	for w := range 16 {
		wg.Go(func() {
			for i := 0; !stopped.Load(); i++ {
				id := w*1_000_000 + i
				made.Add(1)
				pending.Add(1)
				s.AppendAsync(context.Background(), dev(w), msg(fmt.Sprint(id)), func(seq uint64, err error) {
					defer pending.Done()
					mu.Lock()
					defer mu.Unlock()
					calls[id]++
					switch {
					case err == nil:
						stored[seq] = true
					case !errors.Is(err, spool.ErrClosed):
						t.Errorf("append %d: %v", id, err)
					}
				})
			}
		})
	}
	// Let requests pile up behind a held commit (MaxBatch is small, so
	// appenders also wait for the writer to take theirs), then close.
	testutil.Eventually(t, 10*time.Second, func() bool { return made.Load() > 200 }, "appends running")
	gate.Close()
	gate.WaitEntered(t, 10*time.Second)
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	gate.Open()
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	stopped.Store(true)
	wg.Wait()
	pending.Wait()
	mu.Lock()
	for id, n := range calls {
		if n != 1 {
			t.Errorf("append %d: done called %d times", id, n)
		}
	}
	if int64(len(calls)) != made.Load() {
		t.Errorf("%d appends answered of %d made", len(calls), made.Load())
	}
	mu.Unlock()

	s = mustOpen(t, path, spool.Options{})
	found := 0
	for w := range 16 {
		for _, m := range readAll(t, s, dev(w)) {
			if stored[m.Seq] {
				found++
			}
		}
	}
	if found != len(stored) {
		t.Errorf("%d of %d appends answered with a seq found after close", found, len(stored))
	}
	t.Logf("%d appends made, %d stored", made.Load(), len(stored))
}
