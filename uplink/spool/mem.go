package spool

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/edgegw/edgegw/secrets"
)

// Mem is the in-memory queue for gateways run with durability off, and
// for tests. It keeps the Spool's contract except durability: budgets,
// overflow policy, TTL, dead letters and statistics behave the same, and
// everything is lost when the process ends. Append never waits for a
// disk. A Mem is safe for concurrent use.
type Mem struct {
	mu     sync.Mutex
	led    *ledger
	queues map[secrets.DeviceID]*memQueue
	dead   map[secrets.DeviceID][]DeadLetter
	notify notifier
	now    func() time.Time
	closed bool
}

type memQueue struct {
	msgs []Message // msgs[head:] are queued, in seq order
	head int
}

func (q *memQueue) live() []Message { return q.msgs[q.head:] }

// index returns the position in q.msgs of the first message with Seq >= seq.
func (q *memQueue) index(seq uint64) int {
	live := q.live()
	return q.head + sort.Search(len(live), func(i int) bool { return live[i].Seq >= seq })
}

func (q *memQueue) popFront() Message {
	m := q.msgs[q.head]
	q.msgs[q.head] = Message{}
	q.head++
	if q.head == len(q.msgs) && cap(q.msgs) > 1024 {
		q.msgs, q.head = nil, 0
	} else if q.head == len(q.msgs) {
		q.msgs, q.head = q.msgs[:0], 0
	} else if q.head >= 1024 && q.head*2 >= len(q.msgs) {
		n := copy(q.msgs, q.msgs[q.head:])
		clear(q.msgs[n:])
		q.msgs, q.head = q.msgs[:n], 0
	}
	return m
}

func (q *memQueue) removeAt(i int) Message {
	if i == q.head {
		return q.popFront()
	}
	m := q.msgs[i]
	copy(q.msgs[i:], q.msgs[i+1:])
	q.msgs[len(q.msgs)-1] = Message{}
	q.msgs = q.msgs[:len(q.msgs)-1]
	return m
}

// NewMem returns an empty in-memory queue. Only the budget, overflow,
// TTL, dead-letter, clock and logging options apply.
func NewMem(opts Options) (*Mem, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Mem{
		led:    newLedger(o),
		queues: make(map[secrets.DeviceID]*memQueue),
		dead:   make(map[secrets.DeviceID][]DeadLetter),
		now:    o.Now,
	}, nil
}

// memStore is the store of the ledger operations of a Mem.
type memStore Mem

func (s *memStore) popOldest(d *devState) (int64, error) {
	q := s.queues[d.id]
	if q == nil || len(q.live()) == 0 {
		return 0, fmt.Errorf("drop oldest of %s: %w: queue empty, accounted %d messages", d.id, errMismatch, d.depth)
	}
	return Size(q.popFront()), nil
}

func (s *memStore) first(d *devState) (uint64, time.Time, error) {
	q := s.queues[d.id]
	if q == nil || len(q.live()) == 0 {
		return 0, time.Time{}, fmt.Errorf("oldest of %s: %w: queue empty, accounted %d messages", d.id, errMismatch, d.depth)
	}
	m := q.msgs[q.head]
	return m.Seq, m.Received, nil
}

func (s *memStore) count(d *devState) (int, int64, error) {
	q := s.queues[d.id]
	if q == nil {
		return 0, 0, nil
	}
	var n int64
	for _, m := range q.live() {
		n += Size(m)
	}
	return len(q.live()), n, nil
}

func (s *memStore) popOldestDeadLetter(d *devState) (int64, error) {
	dls := s.dead[d.id]
	if len(dls) == 0 {
		return 0, fmt.Errorf("evict dead letter of %s: %w: none stored, accounted %d", d.id, errMismatch, d.dlCount)
	}
	size := Size(dls[0].Message)
	dls[0] = DeadLetter{}
	s.dead[d.id] = dls[1:]
	return size, nil
}

func (m *Mem) store() *memStore { return (*memStore)(m) }

// lock locks m, fails if closed, and drops expired messages.
func (m *Mem) lock(op string, device secrets.DeviceID) (time.Time, error) {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return time.Time{}, fmt.Errorf("%s for %s: %w", op, device, ErrClosed)
	}
	now := m.now()
	if _, err := m.led.expire(now, math.MaxInt, m.store()); err != nil {
		m.mu.Unlock()
		return now, fmt.Errorf("%s for %s: expire: %w", op, device, err)
	}
	return now, nil
}

func (m *Mem) unlock(now time.Time) {
	m.led.flushEvents(now)
	m.mu.Unlock()
}

// Append stores msg for device and returns its Seq. It fails with ErrFull
// or ErrTooLarge when the message does not fit (see Options.Overflow).
func (m *Mem) Append(ctx context.Context, device secrets.DeviceID, msg Message) (uint64, error) {
	if err := validateDevice(device); err != nil {
		return 0, fmt.Errorf("append: %w", err)
	}
	if err := validateMessage(device, &msg); err != nil {
		return 0, err
	}
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("append for %s: %w", device, err)
	}
	now, err := m.lock("append", device)
	if err != nil {
		return 0, err
	}
	defer m.unlock(now)
	if msg.Received.IsZero() {
		msg.Received = now
	}
	d := m.led.device(device, true)
	size := Size(msg)
	if err := m.led.admit(d, size, m.store()); err != nil {
		if errors.Is(err, ErrFull) || errors.Is(err, ErrTooLarge) {
			m.led.reject(d)
		}
		return 0, err
	}
	q := m.queues[device]
	if q == nil {
		q = &memQueue{}
		m.queues[device] = q
	}
	msg.Seq = m.led.seq + 1
	msg.Payload = clone(msg.Payload)
	q.msgs = append(q.msgs, msg)
	m.led.added(d, msg.Seq, size, msg.Received)
	m.notify.signal(device)
	return msg.Seq, nil
}

// AppendAsync is Append reporting through done, as Spool.AppendAsync: done
// is called exactly once, here always on the caller's goroutine before
// AppendAsync returns (Mem has no commit to wait for).
func (m *Mem) AppendAsync(ctx context.Context, device secrets.DeviceID, msg Message, done func(seq uint64, err error)) {
	done(m.Append(ctx, device, msg))
}

// Read returns up to max messages of device with Seq > after, oldest
// first, without removing them. Expired messages are skipped.
func (m *Mem) Read(device secrets.DeviceID, after uint64, max int) ([]Message, error) {
	now, err := m.lock("read", device)
	if err != nil {
		return nil, err
	}
	defer m.unlock(now)
	q := m.queues[device]
	if q == nil || max <= 0 {
		return nil, nil
	}
	var out []Message
	for _, msg := range q.msgs[q.index(after+1):] {
		if len(out) == max {
			break
		}
		if m.led.expired(msg.Received, now) {
			continue
		}
		msg.Payload = clone(msg.Payload)
		out = append(out, msg)
	}
	return out, nil
}

// Watermark returns the highest Seq assigned so far: every message of
// device already appended has a Seq no larger, every message appended
// later gets a larger one (seqs come from one counter for all devices).
func (m *Mem) Watermark(device secrets.DeviceID) (uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return 0, fmt.Errorf("watermark of %s: %w", device, ErrClosed)
	}
	return m.led.seq, nil
}

// Ack removes message seq of device. Unknown seqs are ignored.
func (m *Mem) Ack(device secrets.DeviceID, seq uint64) error {
	now, err := m.lock("ack", device)
	if err != nil {
		return err
	}
	defer m.unlock(now)
	d := m.led.device(device, false)
	q := m.queues[device]
	if d == nil || q == nil {
		return nil
	}
	d.lastAck = now
	i := q.index(seq)
	if i == len(q.msgs) || q.msgs[i].Seq != seq {
		return nil
	}
	wasFirst := i == q.head
	msg := q.removeAt(i)
	m.led.removed(d, Size(msg), "")
	if wasFirst {
		return m.led.refreshFirst(d, m.store())
	}
	return nil
}

// Notify returns the channel signalled (capacity 1, never blocking) when
// a message is appended for device.
func (m *Mem) Notify(device secrets.DeviceID) <-chan struct{} { return m.notify.get(device) }

// Purge drops all queued messages of device (counted as ReasonPurge) and
// returns how many. Dead letters stay.
func (m *Mem) Purge(device secrets.DeviceID) (int, error) {
	now, err := m.lock("purge", device)
	if err != nil {
		return 0, err
	}
	defer m.unlock(now)
	return m.purgeLocked(device)
}

func (m *Mem) purgeLocked(device secrets.DeviceID) (int, error) {
	d := m.led.device(device, false)
	if d == nil {
		return 0, nil
	}
	n := d.depth
	for d.depth > 0 {
		if err := m.led.dropOldest(d, ReasonPurge, m.store()); err != nil {
			return n - d.depth, fmt.Errorf("purge %s: %w", device, err)
		}
	}
	return n, nil
}

// Remove drops device's queue (counted as ReasonPurge in Totals), its dead
// letters and its counters. Seqs are never reused: a device that comes
// back continues above every Seq assigned before.
func (m *Mem) Remove(device secrets.DeviceID) error {
	now, err := m.lock("remove", device)
	if err != nil {
		return err
	}
	defer m.unlock(now)
	if _, err := m.purgeLocked(device); err != nil {
		return err
	}
	d := m.led.device(device, false)
	if d == nil {
		return nil
	}
	for _, dl := range m.dead[device] {
		m.led.deadLetterRemoved(d, Size(dl.Message))
	}
	delete(m.dead, device)
	delete(m.queues, device)
	m.led.forget(d)
	return nil
}

// DeadLetter moves message seq of device to the dead letters with reason:
// it leaves the queue, is counted as ReasonDeadLetter (not as
// acknowledged) and no longer blocks the queue. If the message is no
// longer queued nothing happens.
func (m *Mem) DeadLetter(device secrets.DeviceID, seq uint64, reason string) error {
	now, err := m.lock("dead-letter", device)
	if err != nil {
		return err
	}
	defer m.unlock(now)
	d := m.led.device(device, false)
	q := m.queues[device]
	if d == nil || q == nil {
		return nil
	}
	i := q.index(seq)
	if i == len(q.msgs) || q.msgs[i].Seq != seq {
		return nil
	}
	wasFirst := i == q.head
	stored := q.removeAt(i)
	size := Size(stored)
	m.led.removed(d, size, ReasonDeadLetter)
	if wasFirst {
		if err := m.led.refreshFirst(d, m.store()); err != nil {
			return fmt.Errorf("dead-letter %s seq %d: %w", device, seq, err)
		}
	}
	ok, err := m.led.admitDeadLetter(d, size, m.store())
	if err != nil {
		return fmt.Errorf("dead-letter %s seq %d: %w", device, seq, err)
	}
	if ok {
		// Kept in Seq order, like the spool's keys.
		dls := m.dead[device]
		i := sort.Search(len(dls), func(i int) bool { return dls[i].Seq > stored.Seq })
		m.dead[device] = slices.Insert(dls, i, DeadLetter{Message: stored, Reason: truncate(reason), At: now})
		m.led.deadLetterAdded(d, size)
	}
	return nil
}

// DeadLetters returns device's dead letters in Seq order.
func (m *Mem) DeadLetters(device secrets.DeviceID) ([]DeadLetter, error) {
	now, err := m.lock("dead letters", device)
	if err != nil {
		return nil, err
	}
	defer m.unlock(now)
	out := make([]DeadLetter, 0, len(m.dead[device]))
	for _, dl := range m.dead[device] {
		dl.Payload = clone(dl.Payload)
		out = append(out, dl)
	}
	return out, nil
}

// ClearDeadLetters deletes device's dead letters and returns how many.
func (m *Mem) ClearDeadLetters(device secrets.DeviceID) (int, error) {
	now, err := m.lock("clear dead letters", device)
	if err != nil {
		return 0, err
	}
	defer m.unlock(now)
	d := m.led.device(device, false)
	if d == nil {
		return 0, nil
	}
	n := len(m.dead[device])
	for _, dl := range m.dead[device] {
		m.led.deadLetterRemoved(d, Size(dl.Message))
	}
	delete(m.dead, device)
	return n, nil
}

// Stats returns device's queue statistics (zero for an unknown device).
func (m *Mem) Stats(device secrets.DeviceID) DeviceStats {
	now, err := m.lock("stats", device)
	if err != nil {
		return DeviceStats{Device: device, Dropped: reasonMap([numReasons]uint64{})}
	}
	defer m.unlock(now)
	d := m.led.device(device, false)
	if d == nil {
		return DeviceStats{Device: device, Dropped: reasonMap([numReasons]uint64{})}
	}
	return m.led.deviceStats(d, now)
}

// Devices returns the statistics of every known device, sorted by id.
func (m *Mem) Devices() []DeviceStats {
	now, err := m.lock("devices", secrets.DeviceID{})
	if err != nil {
		return nil
	}
	defer m.unlock(now)
	ds := m.led.sorted()
	out := make([]DeviceStats, len(ds))
	for i, d := range ds {
		out[i] = m.led.deviceStats(d, now)
	}
	return out
}

// Totals returns queue-wide statistics.
func (m *Mem) Totals() Totals {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.closed {
		now := m.now()
		_, _ = m.led.expire(now, math.MaxInt, m.store())
		m.led.flushEvents(now)
	}
	return m.led.totals()
}

// Sync returns at once: Mem has nothing to commit.
func (m *Mem) Sync(ctx context.Context) error { return ctx.Err() }

// Close discards the queue; later calls fail with ErrClosed.
func (m *Mem) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.closed {
		m.closed = true
		m.led.drops.flush(m.now(), true)
	}
	return nil
}
