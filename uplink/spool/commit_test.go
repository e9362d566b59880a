package spool_test

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/uplink/spool"
)

// An acknowledgement waits for the next commit that appends anyway: at a
// steady trickle each message costs one fsync, not one to store it and one
// to delete it.
func TestAckRidesWithNextAppend(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spool.db")
	s := mustOpen(t, path, spool.Options{AckDelay: time.Hour, CommitDelay: -1})
	ctx := context.Background()
	seq1, err := s.Append(ctx, dev(1), msg("one"))
	if err != nil {
		t.Fatal(err)
	}
	before := s.Totals()
	if err := s.Ack(dev(1), seq1); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append(ctx, dev(1), msg("two")); err != nil {
		t.Fatal(err)
	}
	after := s.Totals()
	if got := after.Commits - before.Commits; got != 1 {
		t.Errorf("ack then append: %d commits, want 1 (the append's, carrying the ack)", got)
	}
	if got := after.Acked - before.Acked; got != 1 {
		t.Errorf("acknowledged messages deleted: %d, want 1", got)
	}
	// Read never returns an acknowledged message, committed or not.
	if got := readAll(t, s, dev(1)); len(got) != 1 || string(got[0].Payload) != "two" {
		t.Errorf("read after ack: %+v", got)
	}
}

// With nothing to append, acknowledgements get their own commit once the
// oldest has waited AckDelay; and Close commits what is still pending.
func TestAckDelayBoundsAckOnlyCommits(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spool.db")
	s := mustOpen(t, path, spool.Options{AckDelay: 20 * time.Millisecond})
	ctx := context.Background()
	seq, err := s.Append(ctx, dev(1), msg("one"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Ack(dev(1), seq); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, func() bool { return s.Totals().Acked == 1 }, "the acknowledgement committed on its own")

	// A long delay: Close still deletes the acknowledged message.
	s2path := filepath.Join(t.TempDir(), "spool.db")
	s2 := mustOpen(t, s2path, spool.Options{AckDelay: time.Hour})
	seq, err = s2.Append(ctx, dev(2), msg("two"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s2.Ack(dev(2), seq); err != nil {
		t.Fatal(err)
	}
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
	s2 = mustOpen(t, s2path, spool.Options{})
	if got := readAll(t, s2, dev(2)); len(got) != 0 {
		t.Errorf("after close and reopen: %d messages, want the acknowledged one deleted", len(got))
	}
}

// Appends arriving while the oldest waits out CommitDelay join its commit;
// MaxBatch appends commit at once without waiting for the rest of it.
func TestCommitDelayGathersAppends(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spool.db")
	s := mustOpen(t, path, spool.Options{CommitDelay: time.Hour, MaxBatch: 4})
	before := s.Totals()
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for i := range 4 {
		wg.Go(func() {
			_, err := s.Append(context.Background(), dev(i), msg("x"))
			errs <- err
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("four appends with MaxBatch 4 still waiting: the commit delay was not cut short")
	}
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := s.Totals().Commits - before.Commits; got != 1 {
		t.Errorf("%d commits for 4 appends arriving within the commit delay, want 1", got)
	}
}

// A request that waited CommitDelay commits alone, and Close does not wait
// for the delay.
func TestCommitDelayIsBounded(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spool.db")
	s := mustOpen(t, path, spool.Options{CommitDelay: 30 * time.Millisecond})
	start := time.Now()
	if _, err := s.Append(context.Background(), dev(1), msg("x")); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < 30*time.Millisecond {
		t.Errorf("a lone append committed after %v, before the commit delay", took)
	}

	s2 := mustOpen(t, filepath.Join(t.TempDir(), "spool.db"), spool.Options{CommitDelay: time.Hour})
	res := make(chan error, 1)
	go func() {
		_, err := s2.Append(context.Background(), dev(1), msg("x"))
		res <- err
	}()
	closed := make(chan error, 1)
	go func() { closed <- s2.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Close waited for the commit delay")
	}
	// Either the append was accepted and committed by Close, or it came
	// after Close began.
	if err := <-res; err != nil && !errors.Is(err, spool.ErrClosed) {
		t.Errorf("append during close: %v", err)
	}
}

// Read takes its candidates under the spool's lock and reads them without
// it; a message whose Ack returned before a Read began is never returned
// by it, while commits delete acknowledged messages concurrently.
func TestReadNeverReturnsAcknowledged(t *testing.T) {
	s := mustOpen(t, filepath.Join(t.TempDir(), "spool.db"), spool.Options{AckDelay: time.Millisecond, CommitDelay: -1})
	ctx := context.Background()
	const n = 3000
	var (
		mu    sync.Mutex
		acked = map[uint64]bool{}
		seqs  = make(chan uint64, n)
		wg    sync.WaitGroup
	)
	wg.Go(func() { // appends keep the writer committing
		for range n {
			seq, err := s.Append(ctx, dev(1), msg("x"))
			if err != nil {
				t.Error(err)
				return
			}
			seqs <- seq
		}
		close(seqs)
	})
	wg.Go(func() {
		for seq := range seqs {
			if err := s.Ack(dev(1), seq); err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			acked[seq] = true
			mu.Unlock()
		}
	})
	stop := make(chan struct{})
	var reads, checked int
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		for {
			select {
			case <-stop:
				return
			default:
			}
			mu.Lock()
			before := make(map[uint64]bool, len(acked))
			for k := range acked {
				before[k] = true
			}
			mu.Unlock()
			got, err := s.Read(dev(1), 0, 64)
			if err != nil {
				t.Error(err)
				return
			}
			reads++
			for _, m := range got {
				checked++
				if before[m.Seq] {
					t.Errorf("Read returned seq %d, acknowledged before it began", m.Seq)
					return
				}
			}
		}
	}()
	wg.Wait()
	close(stop)
	<-readerDone
	t.Logf("%d reads, %d messages checked", reads, checked)
}
