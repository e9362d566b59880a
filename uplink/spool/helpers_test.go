package spool_test

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink/spool"
)

// queue is what both implementations offer: uplink.Queue (redeclared so
// that these tests do not depend on package uplink, which imports spool)
// plus the management and visibility methods.
type queue interface {
	Append(ctx context.Context, device secrets.DeviceID, m spool.Message) (uint64, error)
	AppendAsync(ctx context.Context, device secrets.DeviceID, m spool.Message, done func(seq uint64, err error))
	Read(device secrets.DeviceID, after uint64, max int) ([]spool.Message, error)
	Ack(device secrets.DeviceID, seq uint64) error
	Notify(device secrets.DeviceID) <-chan struct{}
	Purge(device secrets.DeviceID) (int, error)
	Remove(device secrets.DeviceID) error
	DeadLetter(device secrets.DeviceID, seq uint64, reason string) error
	DeadLetters(device secrets.DeviceID) ([]spool.DeadLetter, error)
	ClearDeadLetters(device secrets.DeviceID) (int, error)
	Stats(device secrets.DeviceID) spool.DeviceStats
	Devices() []spool.DeviceStats
	Totals() spool.Totals
	Sync(ctx context.Context) error
	Close() error
}

var (
	_ queue = (*spool.Mem)(nil)
	_ queue = (*spool.Spool)(nil)
)

type impl struct {
	name string
	open func(t testing.TB, o spool.Options) queue
}

var impls = []impl{
	{"mem", func(t testing.TB, o spool.Options) queue {
		t.Helper()
		m, err := spool.NewMem(o)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		return m
	}},
	{"spool", func(t testing.TB, o spool.Options) queue {
		t.Helper()
		return mustOpen(t, filepath.Join(t.TempDir(), "spool.db"), o)
	}},
}

// mustOpen opens a spool and closes it on cleanup, then checks that the
// file reopens cleanly (verification and bbolt's consistency check).
func mustOpen(t testing.TB, path string, o spool.Options) *spool.Spool {
	t.Helper()
	s, err := spool.Open(path, o)
	if err != nil {
		t.Fatalf("open spool: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close: %v", err)
			return
		}
		o.CompactMinSize = -1
		o.Logger = nil
		s2, err := spool.Open(path, o)
		if err != nil {
			t.Errorf("reopen for integrity check: %v", err)
			return
		}
		s2.Close()
	})
	return s
}

func dev(i int) secrets.DeviceID {
	return secrets.DeviceID{ProductKey: "pk", DeviceName: fmt.Sprintf("dev%04d", i)}
}

func msg(payload string) spool.Message {
	return spool.Message{Topic: "/pk/dev/user/data", Payload: []byte(payload), QoS: 1}
}

// payload200 is a 200-byte payload.
func payload200(i int) []byte {
	b := make([]byte, 200)
	copy(b, fmt.Sprintf("message %d ", i))
	return b
}

func mustAppend(t testing.TB, q queue, d secrets.DeviceID, m spool.Message) uint64 {
	t.Helper()
	seq, err := q.Append(context.Background(), d, m)
	if err != nil {
		t.Fatalf("append for %s: %v", d, err)
	}
	return seq
}

func readAll(t testing.TB, q queue, d secrets.DeviceID) []spool.Message {
	t.Helper()
	var out []spool.Message
	after := uint64(0)
	for {
		ms, err := q.Read(d, after, 1000)
		if err != nil {
			t.Fatalf("read %s: %v", d, err)
		}
		if len(ms) == 0 {
			return out
		}
		out = append(out, ms...)
		after = ms[len(ms)-1].Seq
	}
}

func seqs(ms []spool.Message) []uint64 {
	out := make([]uint64, len(ms))
	for i, m := range ms {
		out[i] = m.Seq
	}
	return out
}

func payloads(ms []spool.Message) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = string(m.Payload)
	}
	return out
}

// syncQ commits pending acknowledgements (a no-op for Mem).
func syncQ(t testing.TB, q queue) {
	t.Helper()
	if err := q.Sync(context.Background()); err != nil {
		t.Fatalf("sync: %v", err)
	}
}

// fakeClock is an injectable clock that tests advance by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 3, 1, 8, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}
