package uplink

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink/spool"
)

func TestMain(m *testing.M) {
	// paho's loggers are process globals: route them once, to a logger that
	// outlives every test (a t.Log-backed one would panic after its test).
	level := slog.LevelError
	if os.Getenv("UPLINK_TEST_PAHO_LOG") != "" {
		level = slog.LevelDebug
	}
	RoutePahoLogs(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})))
	os.Exit(m.Run())
}

// memQueue is an in-memory Queue for these tests. It records every Ack
// and keeps dead letters in the order they came.
type memQueue struct {
	mu      sync.Mutex
	next    map[secrets.DeviceID]uint64
	msgs    map[secrets.DeviceID][]spool.Message
	notify  map[secrets.DeviceID]chan struct{}
	acks    map[secrets.DeviceID][]uint64
	dead    []deadMsg
	readErr error
}

func newMemQueue() *memQueue {
	return &memQueue{
		next:   make(map[secrets.DeviceID]uint64),
		msgs:   make(map[secrets.DeviceID][]spool.Message),
		notify: make(map[secrets.DeviceID]chan struct{}),
		acks:   make(map[secrets.DeviceID][]uint64),
	}
}

func (q *memQueue) Append(_ context.Context, id secrets.DeviceID, m spool.Message) (uint64, error) {
	q.mu.Lock()
	q.next[id]++
	m.Seq = q.next[id]
	q.msgs[id] = append(q.msgs[id], m)
	ch := q.notifyLocked(id)
	q.mu.Unlock()
	select {
	case ch <- struct{}{}:
	default:
	}
	return m.Seq, nil
}

func (q *memQueue) Read(id secrets.DeviceID, after uint64, max int) ([]spool.Message, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.readErr != nil {
		return nil, q.readErr
	}
	var out []spool.Message
	for _, m := range q.msgs[id] {
		if m.Seq > after {
			out = append(out, m)
			if len(out) == max {
				break
			}
		}
	}
	return out, nil
}

func (q *memQueue) Ack(id secrets.DeviceID, seq uint64) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.acks[id] = append(q.acks[id], seq)
	q.removeLocked(id, seq)
	return nil
}

func (q *memQueue) DeadLetter(id secrets.DeviceID, seq uint64, reason string) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if m, ok := q.removeLocked(id, seq); ok {
		q.dead = append(q.dead, deadMsg{id, m, reason})
	}
	return nil
}

// removeLocked removes message seq of id and returns it.
func (q *memQueue) removeLocked(id secrets.DeviceID, seq uint64) (spool.Message, bool) {
	ms := q.msgs[id]
	for i, m := range ms {
		if m.Seq == seq {
			q.msgs[id] = append(ms[:i:i], ms[i+1:]...)
			return m, true
		}
	}
	return spool.Message{}, false
}

func (q *memQueue) deadLetters() []deadMsg {
	q.mu.Lock()
	defer q.mu.Unlock()
	return append([]deadMsg(nil), q.dead...)
}

func (q *memQueue) Notify(id secrets.DeviceID) <-chan struct{} {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.notifyLocked(id)
}

func (q *memQueue) notifyLocked(id secrets.DeviceID) chan struct{} {
	ch := q.notify[id]
	if ch == nil {
		ch = make(chan struct{}, 1)
		q.notify[id] = ch
	}
	return ch
}

func (q *memQueue) depth(id secrets.DeviceID) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.msgs[id])
}

func (q *memQueue) acked(id secrets.DeviceID) []uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return append([]uint64(nil), q.acks[id]...)
}

// appendN queues n messages for id on topic with payloads "<seq>".
func (q *memQueue) appendN(t testing.TB, id secrets.DeviceID, topic string, qos byte, n int) {
	t.Helper()
	for range n {
		q.mu.Lock()
		seq := q.next[id] + 1
		q.mu.Unlock()
		if _, err := q.Append(context.Background(), id, spool.Message{Topic: topic, QoS: qos, Payload: fmt.Appendf(nil, "%d", seq)}); err != nil {
			t.Fatal(err)
		}
	}
}

// fakeClock is a Clock whose time moves only when a test advances it.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers map[*fakeTimer]struct{} // armed
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC), timers: make(map[*fakeTimer]struct{})}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) NewTimer(d time.Duration) Timer {
	t := &fakeTimer{clk: c, ch: make(chan time.Time, 1)}
	t.Reset(d)
	return t
}

// Advance moves the clock and fires every timer that is due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	now := c.now
	for t := range c.timers {
		if !t.when.After(now) {
			delete(c.timers, t)
			select {
			case t.ch <- now:
			default:
			}
		}
	}
	c.mu.Unlock()
}

// Armed returns the number of timers waiting to fire.
func (c *fakeClock) Armed() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.timers)
}

// ArmedWithin returns the number of armed timers due within d.
func (c *fakeClock) ArmedWithin(d time.Duration) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for t := range c.timers {
		if !t.when.After(c.now.Add(d)) {
			n++
		}
	}
	return n
}

// NextDue returns the delay until the earliest armed timer.
func (c *fakeClock) NextDue() (time.Duration, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var best time.Duration
	found := false
	for t := range c.timers {
		if d := t.when.Sub(c.now); !found || d < best {
			best, found = d, true
		}
	}
	return best, found
}

type fakeTimer struct {
	clk  *fakeClock
	ch   chan time.Time
	when time.Time
}

func (t *fakeTimer) C() <-chan time.Time { return t.ch }

func (t *fakeTimer) Stop() bool {
	t.clk.mu.Lock()
	defer t.clk.mu.Unlock()
	_, armed := t.clk.timers[t]
	delete(t.clk.timers, t)
	return armed
}

func (t *fakeTimer) Reset(d time.Duration) bool {
	t.clk.mu.Lock()
	defer t.clk.mu.Unlock()
	_, armed := t.clk.timers[t]
	select { // like Go 1.23 timers: no stale tick after Reset
	case <-t.ch:
	default:
	}
	t.when = t.clk.now.Add(d)
	if d <= 0 {
		delete(t.clk.timers, t)
		t.ch <- t.clk.now
		return armed
	}
	t.clk.timers[t] = struct{}{}
	return armed
}

// testLogger logs through t.Log until the test ends (and discards after,
// so goroutines that outlive the test cannot panic).
func testLogger(t testing.TB) *slog.Logger {
	w := &tWriter{t: t}
	t.Cleanup(func() { w.done.Store(true) })
	level := slog.LevelInfo
	if os.Getenv("UPLINK_TEST_DEBUG") != "" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

type tWriter struct {
	t    testing.TB
	done atomic.Bool
}

func (w *tWriter) Write(p []byte) (int, error) {
	if !w.done.Load() {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

// startManager runs m until the test ends and checks that Run returns nil.
func startManager(t testing.TB, m *Manager) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-errc:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Errorf("Run did not return within 15 s of cancel")
		}
	})
	// Run has started once the manager left phaseNew.
	testutil.Eventually(t, 5*time.Second, func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		return m.phase == phaseRunning
	}, "manager running")
}

func waitState(t testing.TB, m *Manager, id secrets.DeviceID, want State) SessionStatus {
	t.Helper()
	var st SessionStatus
	testutil.Eventually(t, 10*time.Second, func() bool {
		st, _ = m.Status(id)
		return st.State == want
	}, "%s in state %s", id, want)
	return st
}

// checkOrder verifies that the first occurrences of the payload sequence
// numbers are exactly 1..n in order and returns the number of duplicates.
func checkOrder(t testing.TB, label string, got []uint64, n int) (dups int) {
	t.Helper()
	seen := make(map[uint64]bool, len(got))
	var next uint64 = 1
	for i, s := range got {
		if seen[s] {
			dups++
			continue
		}
		if s != next {
			t.Fatalf("%s: message %d (position %d) arrived before %d: reordered or lost", label, s, i, next)
		}
		seen[s] = true
		next++
	}
	if int(next-1) != n {
		t.Fatalf("%s: received %d distinct messages, want %d", label, next-1, n)
	}
	return dups
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func slogText(w *testutil.SyncBuffer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

var tlsCertPlaceholder tls.Certificate

var errTest = errors.New("injected test failure")
