package spool_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink/spool"
)

// watermarker is the uplink.LiveQueue addition (redeclared: these tests
// do not import uplink).
type watermarker interface {
	Watermark(device secrets.DeviceID) (uint64, error)
}

var (
	_ watermarker = (*spool.Mem)(nil)
	_ watermarker = (*spool.Spool)(nil)
)

func watermark(t testing.TB, q queue, d secrets.DeviceID) uint64 {
	t.Helper()
	w, err := q.(watermarker).Watermark(d)
	if err != nil {
		t.Fatalf("watermark of %s: %v", d, err)
	}
	return w
}

// The watermark separates what is queued from what is appended later, for
// every device, and everything at or below it is visible to Read.
func TestWatermarkContract(t *testing.T) {
	for _, im := range impls {
		t.Run(im.name, func(t *testing.T) {
			q := im.open(t, spool.Options{})
			a, b := dev(1), dev(2)
			if w := watermark(t, q, a); w != 0 {
				t.Fatalf("empty queue: watermark %d, want 0", w)
			}
			s1 := mustAppend(t, q, a, msg("a1"))
			s2 := mustAppend(t, q, b, msg("b1"))
			for _, d := range []secrets.DeviceID{a, b, dev(3)} {
				if w := watermark(t, q, d); w < max(s1, s2) {
					t.Fatalf("%s: watermark %d below the queued seqs %d, %d", d, w, s1, s2)
				}
			}
			w := watermark(t, q, a)
			s3 := mustAppend(t, q, a, msg("a2"))
			if s3 <= w {
				t.Fatalf("appended after the watermark %d but got seq %d", w, s3)
			}
			// Acknowledging the newest message does not lower it.
			if err := q.Ack(a, s3); err != nil {
				t.Fatal(err)
			}
			if w2 := watermark(t, q, a); w2 < s3 {
				t.Fatalf("watermark %d after ack of %d", w2, s3)
			}
			if err := q.Close(); err != nil {
				t.Fatal(err)
			}
			if _, err := q.(watermarker).Watermark(a); !errors.Is(err, spool.ErrClosed) {
				t.Fatalf("watermark after close: %v, want ErrClosed", err)
			}
		})
	}
}

// Under concurrent appends to many devices (group commits in flight): a
// message appended after Watermark returned has a larger seq, and a
// message whose Append returned is at or below the next watermark and
// readable.
func TestWatermarkConcurrent(t *testing.T) {
	for _, im := range impls {
		t.Run(im.name, func(t *testing.T) {
			q := im.open(t, spool.Options{})
			const devices, per = 8, 150
			var wg sync.WaitGroup
			errs := make(chan error, devices)
			for i := range devices {
				wg.Add(1)
				go func() {
					defer wg.Done()
					d := dev(i)
					for j := range per {
						w, err := q.(watermarker).Watermark(d)
						if err != nil {
							errs <- err
							return
						}
						seq, err := q.Append(context.Background(), d, msg(fmt.Sprint(j)))
						if err != nil {
							errs <- err
							return
						}
						if seq <= w {
							errs <- fmt.Errorf("%s: seq %d appended after watermark %d", d, seq, w)
							return
						}
						w2, err := q.(watermarker).Watermark(d)
						if err != nil {
							errs <- err
							return
						}
						if w2 < seq {
							errs <- fmt.Errorf("%s: watermark %d below the stored seq %d", d, w2, seq)
							return
						}
						ms, err := q.Read(d, seq-1, 1)
						if err != nil {
							errs <- err
							return
						}
						if len(ms) != 1 || ms[0].Seq != seq {
							errs <- fmt.Errorf("%s: stored seq %d (watermark %d) not readable: %v", d, seq, w2, ms)
							return
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
		})
	}
}

// After a restart the watermark covers every stored message.
func TestWatermarkAfterReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spool.db")
	s, err := spool.Open(path, spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var last uint64
	for i := range 5 {
		last = mustAppend(t, s, dev(i%2), msg(fmt.Sprint(i)))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = mustOpen(t, path, spool.Options{})
	if w := watermark(t, s, dev(0)); w < last {
		t.Fatalf("reopened: watermark %d below the stored seq %d", w, last)
	}
	if seq := mustAppend(t, s, dev(0), msg("x")); seq <= last {
		t.Fatalf("reopened: new seq %d not above %d", seq, last)
	}
}
