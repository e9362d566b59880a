package uplink

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/edgegw/edgegw/internal/loglimit"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink/spool"
)

// The express lane (time-critical traffic)
//
// An NTP request, an RRPC response or the reply to a cloud request
// (Classify) is worth sending only fresh: the device's clock is skewed by
// half the time an NTP request waited, an RRPC caller gives up after at
// most 8 s, and a reply replayed hours after an outage answers a question
// nobody is asking any more. So such a message does not wait behind the
// device's backlog: Manager.Expedite puts it on the device's express lane,
// which the drain serves before the queue, as soon as the session is up;
// and it is dropped, counted (SessionStatus.Expired) and logged
// (rate-limited) once its class's TTL (TimeCritical) has passed.
//
// Durability follows the device's QoS, as for any message:
//   - QoS 1: the device's PUBACK promises that the message survives a
//     crash, so Expedite appends it to the Queue first (durable, the same
//     fsync as any publish), then registers its Seq on the express lane.
//     It leaves the queue on the cloud's PUBACK, or when it expires. The
//     queue's ordinary lanes skip a Seq the express lane holds; after a
//     restart (the express lane is memory only) the message is found in the
//     queue in its place and dropped there if it has expired by then
//     (measured from Message.Received).
//   - QoS 0: promises nothing, and Alibaba requires RRPC responses at QoS
//     0; the message is held in memory only, with no fsync, until it is
//     sent or expires. It is never spooled, whatever spool.qos0 says.
//
// Each device's express lane is bounded (expressMaxMessages,
// expressMaxBytes). A message that does not fit takes the ordinary path
// (spooled and sent in order, and still dropped if it has expired when the
// drain reaches it): nothing is dropped for lack of room. Express messages
// go out in the order they arrived, keep to the device's and the
// gateway's rates (at most one message holding rate tokens goes first),
// and may exceed the in-flight window by expressWindow. Everything else
// keeps its order.

// TimeCritical are the TTLs of the time-critical classes: a message of
// the class that could not be sent within its TTL of arriving is dropped
// and counted. Zero fields take the defaults.
type TimeCritical struct {
	NTP   time.Duration // default 5 s: the device's clock is off by up to half of it
	RRPC  time.Duration // default 8 s: the longest an RRPC caller waits
	Reply time.Duration // default 30 s: a short reconnect, not an outage
}

// Default TTLs of the time-critical classes.
const (
	DefaultNTPTTL   = 5 * time.Second
	DefaultRRPCTTL  = 8 * time.Second
	DefaultReplyTTL = 30 * time.Second
)

func (tc TimeCritical) withDefaults() (TimeCritical, error) {
	for _, f := range []struct {
		p    *time.Duration
		def  time.Duration
		name string
	}{{&tc.NTP, DefaultNTPTTL, "ntp"}, {&tc.RRPC, DefaultRRPCTTL, "rrpc"}, {&tc.Reply, DefaultReplyTTL, "reply"}} {
		if *f.p == 0 {
			*f.p = f.def
		}
		if *f.p < 0 {
			return tc, fmt.Errorf("%s TTL %v: must be positive", f.name, *f.p)
		}
	}
	return tc, nil
}

// TTL returns class c's TTL (0 for ClassNormal: no expiry).
func (tc TimeCritical) TTL(c Class) time.Duration {
	switch c {
	case ClassNTP:
		return tc.NTP
	case ClassRRPC:
		return tc.RRPC
	case ClassReply:
		return tc.Reply
	}
	return 0
}

// expired reports whether a message of class c that arrived at since has
// outlived its TTL at now, and its age. A message from the future (the
// clock stepped back) has age 0.
func (tc TimeCritical) expired(c Class, since, now time.Time) (time.Duration, bool) {
	ttl := tc.TTL(c)
	if ttl <= 0 || since.IsZero() || now.Before(since) {
		return 0, false
	}
	age := now.Sub(since)
	return age, age >= ttl
}

// ExpiredCounts counts time-critical messages dropped because their TTL
// passed before they could be sent, by class.
type ExpiredCounts struct {
	NTP, RRPC, Reply uint64
}

// Of returns the count of class c.
func (e ExpiredCounts) Of(c Class) uint64 {
	switch c {
	case ClassNTP:
		return e.NTP
	case ClassRRPC:
		return e.RRPC
	case ClassReply:
		return e.Reply
	}
	return 0
}

func (e *ExpiredCounts) add(c Class) {
	switch c {
	case ClassNTP:
		e.NTP++
	case ClassRRPC:
		e.RRPC++
	case ClassReply:
		e.Reply++
	}
}

const (
	// expressMaxMessages and expressMaxBytes bound one device's express
	// lane (queued, not yet handed to paho).
	expressMaxMessages = 32
	expressMaxBytes    = 1 << 20
	// expressWindow is how many express messages may be in flight on top
	// of ManagerConfig.Window, so a full window of backlog does not hold
	// them back.
	expressWindow = 8
	// expressSweep is how often lanes holding messages are checked for
	// expiries while their sessions do not drain them (cloud down), so the
	// counts and logs are current. It is real time: only the decision
	// reads the manager's clock.
	expressSweep = time.Second
	// expiryLogEvery: at most one expiry log line per class in this
	// interval (the others are counted into the next line).
	expiryLogEvery = 10 * time.Second
)

// expressItem is one message on an express lane. msg.Seq is 0 for a
// message held in memory only (QoS 0).
type expressItem struct {
	msg    spool.Message
	class  Class
	since  time.Time // manager clock when it arrived (re-anchored if the clock steps back)
	resent bool      // handed to paho on a connection that failed before it was delivered
}

// expressLane is one device's express lane. It belongs to the slot, so it
// outlives sessions: messages wait in it while the device reconnects.
type expressLane struct {
	mu     sync.Mutex
	items  []*expressItem
	bytes  int
	seqs   map[uint64]struct{} // queued Seqs held by the lane: queued here, or taken by a drain and not yet settled
	notify chan struct{}       // capacity 1: an item was pushed
}

func newExpressLane() *expressLane {
	return &expressLane{seqs: make(map[uint64]struct{}), notify: make(chan struct{}, 1)}
}

// push appends it, or reports false when the lane is full.
func (e *expressLane) push(it *expressItem) bool {
	e.mu.Lock()
	if len(e.items) >= expressMaxMessages || e.bytes+len(it.msg.Payload) > expressMaxBytes {
		e.mu.Unlock()
		return false
	}
	e.items = append(e.items, it)
	e.bytes += len(it.msg.Payload)
	if it.msg.Seq != 0 {
		e.seqs[it.msg.Seq] = struct{}{}
	}
	e.mu.Unlock()
	e.signal()
	return true
}

// requeue puts items a drain took but did not deliver back at the front,
// in their order (the bounds do not apply: they were counted before).
func (e *expressLane) requeue(items []*expressItem) {
	if len(items) == 0 {
		return
	}
	e.mu.Lock()
	for _, it := range items {
		e.bytes += len(it.msg.Payload)
	}
	e.items = append(slices.Clone(items), e.items...)
	e.mu.Unlock()
	e.signal()
}

func (e *expressLane) signal() {
	select {
	case e.notify <- struct{}{}:
	default:
	}
}

// pop removes and returns the oldest item, or nil. Its Seq stays held
// until release.
func (e *expressLane) pop() *expressItem {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.items) == 0 {
		return nil
	}
	it := e.items[0]
	e.items[0] = nil
	e.items = e.items[1:]
	e.bytes -= len(it.msg.Payload)
	return it
}

// release forgets seq: it was delivered or dropped.
func (e *expressLane) release(seq uint64) {
	if seq == 0 {
		return
	}
	e.mu.Lock()
	delete(e.seqs, seq)
	e.mu.Unlock()
}

// holds reports whether the lane holds queued message seq.
func (e *expressLane) holds(seq uint64) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	_, ok := e.seqs[seq]
	return ok
}

func (e *expressLane) empty() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.items) == 0
}

// takeExpired removes the items that have expired at now.
func (e *expressLane) takeExpired(tc TimeCritical, now time.Time) []*expressItem {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []*expressItem
	keep := e.items[:0]
	for _, it := range e.items {
		if now.Before(it.since) {
			it.since = now // the clock stepped back: never hold it past another TTL
		}
		if _, exp := tc.expired(it.class, it.since, now); exp {
			out = append(out, it)
			e.bytes -= len(it.msg.Payload)
			continue
		}
		keep = append(keep, it)
	}
	clear(e.items[len(keep):])
	e.items = keep
	return out
}

// expressState is the manager's part of the express lanes: the sweeper
// and the expiry log's rate limit.
type expressState struct {
	mu      sync.Mutex
	pending map[*slot]struct{} // slots whose lanes hold messages
	wake    chan struct{}      // capacity 1: pending became non-empty

	logs *loglimit.Limiter // expiry lines, keyed by class
}

// Expedite takes a device's time-critical publish (Classify) onto the
// device's express lane, so it bypasses the device's backlog and is
// dropped, counted, if it cannot be sent within its class's TTL. A QoS 1
// message is appended to the Queue first (durable before it returns,
// like any publish); a QoS 0 message is held in memory only.
//
// handled is false, with a nil error, when the message is not
// time-critical, the device has no session, or the cloud would refuse the
// message anyway (too large, not the device's topic): the caller then
// queues it as usual. An error is the Queue's Append error.
func (m *Manager) Expedite(ctx context.Context, id secrets.DeviceID, msg spool.Message) (handled bool, err error) {
	class := Classify(msg.Topic)
	if class == ClassNormal {
		return false, nil
	}
	m.mu.Lock()
	sl := m.slots[id]
	m.mu.Unlock()
	if sl == nil {
		return false, nil
	}
	sl.mu.Lock()
	registered, dev, lim := sl.registered && !sl.dead, sl.dev, sl.lim
	sl.mu.Unlock()
	if !registered || rejects(dev, lim, msg) != "" {
		return false, nil
	}
	since := m.clk.Now()
	if msg.QoS > 0 {
		seq, err := m.cfg.Queue.Append(ctx, id, msg)
		if err != nil {
			return true, err
		}
		msg.Seq = seq
	}
	if !sl.ex.push(&expressItem{msg: msg, class: class, since: since}) {
		// Full: a QoS 1 message is queued already and goes in order (and
		// expires when the drain reaches it); QoS 0 takes the usual path.
		return msg.QoS > 0, nil
	}
	m.expressPending(sl)
	return true, nil
}

func newExpressState(clk Clock) expressState {
	logs := loglimit.New(expiryLogEvery, 1)
	logs.Now = clk.Now
	return expressState{pending: make(map[*slot]struct{}), wake: make(chan struct{}, 1), logs: logs}
}

// expressPending tells the sweeper that sl's lane holds messages.
func (m *Manager) expressPending(sl *slot) {
	m.ex.mu.Lock()
	m.ex.pending[sl] = struct{}{}
	m.ex.mu.Unlock()
	select {
	case m.ex.wake <- struct{}{}:
	default:
	}
}

// sweepExpress drops the expired messages of every lane that holds some,
// every expressSweep while there are any, until ctx ends. A running drain
// also drops what has expired before it sends anything; this keeps counts
// and logs current while the cloud is unreachable.
func (m *Manager) sweepExpress(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.ex.wake:
		}
		t := time.NewTicker(expressSweep)
		for busy := true; busy; {
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			busy = m.sweepOnce()
		}
		t.Stop()
	}
}

// sweepOnce drops expired messages and reports whether lanes still hold
// messages.
func (m *Manager) sweepOnce() bool {
	m.ex.mu.Lock()
	slots := make([]*slot, 0, len(m.ex.pending))
	for sl := range m.ex.pending {
		slots = append(slots, sl)
	}
	m.ex.mu.Unlock()
	now := m.clk.Now()
	for _, sl := range slots {
		for _, it := range sl.ex.takeExpired(m.cfg.TimeCritical, now) {
			sl.ex.release(it.msg.Seq)
			m.dropExpired(sl, it.msg, it.class, now.Sub(it.since))
		}
	}
	m.ex.mu.Lock()
	defer m.ex.mu.Unlock()
	for sl := range m.ex.pending {
		if sl.ex.empty() {
			delete(m.ex.pending, sl)
		}
	}
	return len(m.ex.pending) > 0
}

// dropExpired drops msg of class, age old, whose TTL passed: a queued one
// leaves the queue (with Ack: the queue has no other way to remove one
// message, so the spool counts it as acknowledged), and it is counted and
// logged.
func (m *Manager) dropExpired(sl *slot, msg spool.Message, class Class, age time.Duration) {
	if msg.Seq != 0 {
		if err := m.cfg.Queue.Ack(sl.id, msg.Seq); err != nil {
			// It stays queued; the drain drops it when it reaches it.
			m.log.Error("remove an expired message from the queue", "device", sl.id.String(), "seq", msg.Seq, "err", err)
		}
	}
	sl.statMu.Lock()
	sl.st.Expired.add(class)
	sl.statMu.Unlock()
	m.logExpired(sl.id, msg, class, age)
}

// logExpired logs an expiry, at most one line per class every
// expiryLogEvery; the line counts the ones not logged since.
func (m *Manager) logExpired(id secrets.DeviceID, msg spool.Message, class Class, age time.Duration) {
	ok, suppressed := m.ex.logs.Allow(class.String())
	if !ok {
		return
	}
	m.log.Warn("time-critical message expired before it could be sent; dropped",
		"device", id.String(), "topic", msg.Topic, "class", class.String(), "qos", msg.QoS,
		"age", age.Round(time.Millisecond), "ttl", m.cfg.TimeCritical.TTL(class),
		slog.Int("not_logged_since_last", suppressed))
}
