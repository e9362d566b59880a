package uplink

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
	"unicode/utf8"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink/spool"
)

// flight is a message handed to the connection's publisher. tok is set
// (and ready closed) once paho accepted or refused it.
type flight struct {
	seq     uint64
	topic   string
	qos     byte
	payload []byte
	ready   chan struct{}
	tok     mqtt.Token
	item    *expressItem // set for a message from the express lane
}

// done returns the channel that closes when the flight's outcome is known
// as far as the caller can wait on it now: first ready, then the token.
func (f *flight) wait() <-chan struct{} {
	select {
	case <-f.ready:
		return f.tok.Done()
	default:
		return f.ready
	}
}

// finished reports whether the flight's token completed.
func (f *flight) finished() bool {
	select {
	case <-f.ready:
	default:
		return false
	}
	select {
	case <-f.tok.Done():
		return true
	default:
		return false
	}
}

// publisher calls paho's Publish for one connection, in order, on a
// goroutine of its own: paho's Publish hands the packet over an unbuffered
// channel and can block for WriteTimeout (during a slow write, or for good
// when the connection drops in between), and the drain loop must stay
// responsive. After the first Publish that fails at once nothing more is
// published on the connection, so nothing can overtake a message that was
// never sent.
//
// The goroutine exists only while there is work: send starts it, and it
// ends publisherLinger after the last message (at once after close). An
// idle connection — most of a large fleet, most of the time — costs no
// goroutine and no stack here.
type publisher struct {
	c *conn

	mu      sync.Mutex
	queue   []*flight     // handed over, not yet taken by the goroutine
	wake    chan struct{} // capacity 1; set while the goroutine runs
	running bool
	stopped bool
	failed  bool // a Publish failed at once: refuse the rest
}

// publisherLinger is how long the publisher's goroutine waits for more work
// before it ends, so that a steady stream of messages does not start one
// goroutine per message.
const publisherLinger = time.Second

func newPublisher(c *conn) *publisher { return &publisher{c: c} }

// send queues f; its ready channel closes once paho took or refused it.
// It never blocks.
func (p *publisher) send(f *flight) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.queue = append(p.queue, f)
	if p.running {
		select {
		case p.wake <- struct{}{}:
		default:
		}
		return
	}
	p.running = true
	p.wake = make(chan struct{}, 1)
	go p.run(p.wake)
}

// next takes the next flight, or returns nil and ends the goroutine's turn
// (running false) when there is none and it may end: stopped, or idle once
// more after lingering.
func (p *publisher) next(mayEnd bool) (f *flight, stopped, failed bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.queue) > 0 {
		f = p.queue[0]
		p.queue[0] = nil
		p.queue = p.queue[1:]
		return f, p.stopped, p.failed
	}
	p.queue = nil // no backing array kept while idle
	if mayEnd || p.stopped {
		p.running, p.wake = false, nil
	}
	return nil, p.stopped, p.failed
}

func (p *publisher) run(wake chan struct{}) {
	var linger *time.Timer
	defer func() {
		if linger != nil {
			linger.Stop()
		}
	}()
	mayEnd := false
	for {
		f, stopped, failed := p.next(mayEnd)
		if f == nil {
			if mayEnd || stopped {
				return
			}
			if linger == nil {
				linger = time.NewTimer(publisherLinger)
			} else {
				linger.Reset(publisherLinger)
			}
			select {
			case <-wake:
			case <-linger.C:
				mayEnd = true
			}
			continue
		}
		mayEnd = false
		if failed || stopped || p.c.isLost() || !p.c.client.IsConnectionOpen() {
			f.tok = doneToken{errNotPublished}
		} else {
			f.tok = p.c.client.Publish(f.topic, f.qos, false, f.payload)
			select {
			case <-f.tok.Done():
				if f.tok.Error() != nil {
					p.mu.Lock()
					p.failed = true
					p.mu.Unlock()
				}
			default:
			}
		}
		f.payload = nil
		close(f.ready)
	}
}

// close stops the publisher: what is still queued is refused, and a
// Publish in progress ends within WriteTimeout.
func (p *publisher) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stopped = true
	if p.running {
		select {
		case p.wake <- struct{}{}:
		default:
		}
	}
}

// doneToken is a completed mqtt.Token carrying err.
type doneToken struct{ err error }

var closedCh = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

func (t doneToken) Wait() bool                     { return true }
func (t doneToken) WaitTimeout(time.Duration) bool { return true }
func (t doneToken) Done() <-chan struct{}          { return closedCh }
func (t doneToken) Error() error                   { return t.err }

var errNotPublished = errors.New("not published: the connection failed before")

// readRetry is the wait after the queue failed a Read.
const readRetry = time.Second

// drain publishes the device's queue in order over c until the connection
// fails, stalls or ctx ends. Every message on c is published at most once
// and acknowledged to the queue only on its token's success; the next
// connection starts again from the oldest unacknowledged message. With
// LiveFirst the queue is drained as two lanes (see lanes), each in order.
func (s *session) drain(ctx context.Context, c *conn, subs *subSync) error {
	d := s.newDrainer(c, subs)
	defer d.close()
	for {
		if err := d.settleTokens(); err != nil {
			return err
		}
		d.fillWindow()
		if err := d.wait(ctx); err != nil {
			return err
		}
	}
}

// drainer is the drain of one connection: the window of flights handed to
// paho, the lanes they are taken from, and the timers that pace them. Its
// loop is settleTokens, fillWindow, wait (docs/architecture.md §3.6), on
// the session's goroutine only.
type drainer struct {
	s      *session
	c      *conn
	subs   *subSync
	pub    *publisher
	q      Queue
	id     secrets.DeviceID
	clk    Clock
	window int
	stall  time.Duration

	ls       *lanes
	inflight []*flight     // oldest first
	pinned   *lane         // the lane whose head holds rate tokens
	exPinned bool          // exHead holds rate tokens
	readErr  bool          // the last Read failed; retry on readTimer
	readyAt  time.Time     // when pinned's head may be published
	rateWait time.Duration // the wait reserved for it
	stallRef time.Time     // lastAck when the stall timer was armed
	lastAck  time.Time     // last progress: a PUBACK, or the window opening

	// The express lane (express.go): served before the lanes.
	ex        *expressLane
	exHead    *expressItem        // taken from the express lane, not yet handed to paho
	exFlights int                 // express messages in inflight
	laneSent  map[uint64]struct{} // time-critical queued Seqs the lanes took on this connection

	rateTimer, stallTimer, readTimer lazyTimer
}

func (s *session) newDrainer(c *conn, subs *subSync) *drainer {
	window := s.m.cfg.Window
	return &drainer{
		s: s, c: c, subs: subs,
		pub:    newPublisher(c),
		q:      s.m.cfg.Queue,
		id:     s.dev.ID,
		clk:    s.m.clk,
		window: window,
		stall:  s.m.cfg.StallTimeout,
		ls:     s.newLanes(),
		ex:     s.sl.ex,
	}
}

// close stops the timers and the publisher, and gives the express lane
// back what it took and did not deliver.
func (d *drainer) close() {
	d.readTimer.stop()
	d.stallTimer.stop()
	d.rateTimer.stop()
	d.pub.close()
	d.returnExpress()
}

// returnExpress puts the express messages of this connection that were
// not delivered back at the front of the express lane, in their order, for
// the next connection (or the sweeper, once they expire). One the cloud
// did acknowledge, behind a failed one, is settled instead: it is not
// sent twice.
func (d *drainer) returnExpress() {
	var back []*expressItem
	now := d.clk.Now()
	for _, f := range d.inflight {
		if f.item == nil {
			continue
		}
		if f.finished() && f.tok.Error() == nil {
			d.settled(f, now)
			continue
		}
		// Handed to paho unless the publisher refused it: the cloud may
		// have it.
		select {
		case <-f.ready:
			f.item.resent = f.item.resent || !errors.Is(f.tok.Error(), errNotPublished)
		default:
			f.item.resent = true
		}
		back = append(back, f.item)
	}
	if d.exHead != nil {
		back = append(back, d.exHead)
		d.exHead = nil
	}
	if len(back) > 0 {
		d.ex.requeue(back)
		d.s.m.expressPending(d.s.sl)
	}
}

// settleTokens settles finished tokens, oldest first: a success is
// acknowledged to the queue and counts as progress, a failure ends the
// connection.
func (d *drainer) settleTokens() error {
	for len(d.inflight) > 0 {
		f := d.inflight[0]
		if !f.finished() {
			break
		}
		if err := f.tok.Error(); err != nil {
			return fmt.Errorf("publish seq %d: %w", f.seq, err)
		}
		d.inflight[0] = nil
		d.inflight = d.inflight[1:]
		d.lastAck = d.clk.Now()
		d.settled(f, d.lastAck)
	}
	return nil
}

// settled records the success of f, no longer in inflight.
func (d *drainer) settled(f *flight, now time.Time) {
	if f.item != nil {
		d.exFlights--
		defer d.ex.release(f.seq) // after the Ack: the lanes must not see it again
	}
	if f.seq == 0 { // an express message held in memory only
		d.s.updateStatus(func(st *SessionStatus) {
			st.Sent++
			st.InFlight = len(d.inflight)
		})
		return
	}
	d.s.delivered(d.c, f.seq, len(d.inflight), now)
}

// fillWindow publishes the express lane's messages and then lane heads
// while the window has room, as far as the queue and the rates allow;
// messages the cloud would never accept are dead-lettered on the way, and
// time-critical ones that expired are dropped.
func (d *drainer) fillWindow() {
	for !d.c.isLost() {
		now := d.clk.Now()
		if d.pinned == nil {
			if it := d.expressHead(now); it != nil {
				if !d.rateReady(nil, it.msg, now) {
					return
				}
				if !d.dropIfExpired(it, now) {
					d.publishExpress(it, now)
				}
				d.exHead = nil
				continue
			}
		}
		if len(d.inflight)-d.exFlights >= d.window {
			return
		}
		l := d.nextLane()
		if l == nil {
			return
		}
		m := l.buf[0]
		if d.pinned == nil { // a pinned head was checked when it was pinned
			if reason := d.s.rejects(m); reason != "" {
				l.take()
				d.s.deadLetter(m, reason)
				continue
			}
			if d.skipTimeCritical(l, m, now) {
				continue
			}
		}
		if !d.rateReady(l, m, now) {
			return
		}
		d.publish(l, m, now)
	}
}

// expressHead returns the express message to publish next, taking one
// from the express lane when fewer than expressWindow are in flight, or
// nil. Expired ones are dropped on the way, and so is one a lane of this
// connection already took (registered on the express lane only after the
// lane read it).
func (d *drainer) expressHead(now time.Time) *expressItem {
	for {
		if d.exHead == nil {
			if d.exFlights >= expressWindow {
				return nil
			}
			if d.exHead = d.ex.pop(); d.exHead == nil {
				return nil
			}
		}
		it := d.exHead
		if d.exPinned {
			return it // holds rate tokens; its expiry is checked when they are due
		}
		if _, taken := d.laneSent[it.msg.Seq]; taken && it.msg.Seq != 0 {
			d.ex.release(it.msg.Seq)
			d.exHead = nil
			continue
		}
		if d.dropIfExpired(it, now) {
			d.exHead = nil
			continue
		}
		return it
	}
}

// dropIfExpired drops the express message it if its TTL has passed.
func (d *drainer) dropIfExpired(it *expressItem, now time.Time) bool {
	if now.Before(it.since) {
		it.since = now // the clock stepped back: never hold it past another TTL
	}
	age, expired := d.s.m.cfg.TimeCritical.expired(it.class, it.since, now)
	if !expired {
		return false
	}
	d.ex.release(it.msg.Seq)
	d.s.m.dropExpired(d.s.sl, it.msg, it.class, age)
	return true
}

// skipTimeCritical takes m, the head of l, off the lane when it is
// time-critical and either held by the express lane (which sends it) or
// expired (dropped and counted; Received tells its age, as after a
// restart the express lane knows nothing of it).
func (d *drainer) skipTimeCritical(l *lane, m spool.Message, now time.Time) bool {
	class := Classify(m.Topic)
	if class == ClassNormal {
		return false
	}
	if d.ex.holds(m.Seq) {
		l.take()
		return true
	}
	if age, expired := d.s.m.cfg.TimeCritical.expired(class, m.Received, now); expired {
		l.take()
		d.s.m.dropExpired(d.s.sl, m, class, age)
		return true
	}
	if d.laneSent == nil { // most connections never see a time-critical message
		d.laneSent = make(map[uint64]struct{})
	}
	d.laneSent[m.Seq] = struct{}{}
	return false
}

// publishExpress hands the express message it to the publisher.
func (d *drainer) publishExpress(it *expressItem, now time.Time) {
	m := it.msg
	f := &flight{seq: m.Seq, topic: m.Topic, qos: min(m.QoS, 1), payload: m.Payload, ready: make(chan struct{}), item: it}
	d.pub.send(f)
	if len(d.inflight) == 0 {
		d.lastAck = now
	}
	d.inflight = append(d.inflight, f)
	d.exFlights++
	d.s.published(it.resent, len(d.inflight))
}

// nextLane returns the lane whose head goes next: the pinned one, else the
// one the lanes choose, or nil when there is none now. A failed Read is
// logged and retried on the read timer.
func (d *drainer) nextLane() *lane {
	if d.pinned != nil {
		return d.pinned
	}
	if d.readErr {
		return nil
	}
	l, err := d.ls.next(d.q, d.id, d.window-len(d.inflight))
	if err != nil {
		d.s.log.Error("read queue", "err", err)
		d.readErr = true
		d.readTimer.arm(d.clk, readRetry)
		return nil
	}
	return l
}

// rateReady reports whether m, the head of l (nil: the express lane's
// head), may be published at now. The first time it reserves m's rate
// tokens and pins l (or the express head), so the tokens stay with m;
// while m must wait the rate timer is armed for it.
func (d *drainer) rateReady(l *lane, m spool.Message, now time.Time) bool {
	if d.pinned == nil && !d.exPinned {
		d.rateWait = d.s.reserve(now, m)
		d.readyAt = now.Add(d.rateWait)
		d.pinned, d.exPinned = l, l == nil
	}
	if d.readyAt.Sub(now) > d.rateWait {
		// The clock stepped back: never wait longer than reserved.
		d.readyAt = now.Add(d.rateWait)
	}
	if now.Before(d.readyAt) {
		d.rateTimer.arm(d.clk, d.readyAt.Sub(now))
		return false
	}
	d.pinned, d.exPinned = nil, false
	return true
}

// publish takes m from l and hands it to the publisher.
func (d *drainer) publish(l *lane, m spool.Message, now time.Time) {
	resent := d.ls.resent(l, m.Seq, &d.s.sl.maxPublished)
	l.take()
	f := &flight{seq: m.Seq, topic: m.Topic, qos: min(m.QoS, 1), payload: m.Payload, ready: make(chan struct{})}
	d.pub.send(f)
	if len(d.inflight) == 0 {
		d.lastAck = now
	}
	d.inflight = append(d.inflight, f)
	d.s.published(resent, len(d.inflight))
}

// wait blocks until there is something to do: a token finished, a message
// appended, a timer fired, the subscriptions changed. It returns an error
// when the drain must end.
func (d *drainer) wait(ctx context.Context) error {
	var doneC, notifyC, expressC <-chan struct{}
	if len(d.inflight) > 0 {
		doneC = d.inflight[0].wait()
	}
	if d.exHead == nil && d.exFlights < expressWindow {
		expressC = d.ex.notify
	}
	stallC := d.armStall()
	if d.ls.fresh.exhausted {
		// Also while the backlog lane still has messages: a fresh
		// message must be seen at once, not after the backlog.
		notifyC = d.s.notify
	}
	var woke wakeup
	var tok mqtt.Token
	if doneC == nil && stallC == nil && !d.rateTimer.armed && !d.readTimer.armed {
		woke, tok = d.waitIdle(ctx, notifyC, expressC)
	} else {
		woke, tok = d.waitBusy(ctx, doneC, notifyC, expressC, stallC)
	}
	switch woke {
	case wokeStop:
		d.quiesce()
		return ctx.Err()
	case wokeLost:
		return d.c.lostErr
	case wokeNotify:
		d.ls.fresh.exhausted = false
	case wokeRate:
		d.rateTimer.armed = false
	case wokeRead:
		d.readTimer.armed, d.readErr, d.ls.fresh.exhausted = false, false, false
	case wokeStall:
		return d.stalled()
	case wokeSubs:
		d.s.syncSubs(d.c, d.subs)
	case wokeSubResult:
		if err := d.s.finishSubs(d.subs, tok); err != nil {
			return err
		}
		d.s.syncSubs(d.c, d.subs)
	}
	return nil
}

// wakeup is what ended a wait.
type wakeup int

const (
	wokeStop wakeup = iota
	wokeLost
	wokeToken // the oldest flight progressed
	wokeNotify
	wokeExpress
	wokeRate
	wokeRead
	wokeStall
	wokeSubs
	wokeSubResult
)

// waitIdle is the wait of a drain with nothing in flight and no timer
// armed — where an idle session spends its life — with only the cases
// that can happen then, so that its frame, on the stack of every idle
// session, stays small (see run).
func (d *drainer) waitIdle(ctx context.Context, notifyC, expressC <-chan struct{}) (wakeup, mqtt.Token) {
	select {
	case <-ctx.Done():
		return wokeStop, nil
	case <-d.c.lost:
		return wokeLost, nil
	case <-notifyC:
		return wokeNotify, nil
	case <-expressC:
		return wokeExpress, nil
	case <-d.s.subsChanged:
		return wokeSubs, nil
	case tok := <-d.subs.result:
		return wokeSubResult, tok
	}
}

// waitBusy is the wait of a drain with messages in flight or a timer
// armed.
//
//go:noinline
func (d *drainer) waitBusy(ctx context.Context, doneC, notifyC, expressC <-chan struct{}, stallC <-chan time.Time) (wakeup, mqtt.Token) {
	select {
	case <-ctx.Done():
		return wokeStop, nil
	case <-d.c.lost:
		return wokeLost, nil
	case <-doneC:
		return wokeToken, nil
	case <-notifyC:
		return wokeNotify, nil
	case <-expressC:
		return wokeExpress, nil
	case <-d.rateTimer.c():
		return wokeRate, nil
	case <-d.readTimer.c():
		return wokeRead, nil
	case <-stallC:
		return wokeStall, nil
	case <-d.s.subsChanged:
		return wokeSubs, nil
	case tok := <-d.subs.result:
		return wokeSubResult, tok
	}
}

// armStall returns the stall timer's channel while messages are in flight
// (nil otherwise). The timer is armed afresh for the whole timeout at
// every progress, so the timer itself measures the time without a PUBACK:
// comparing clock readings would take a clock step for a stall.
func (d *drainer) armStall() <-chan time.Time {
	if len(d.inflight) == 0 {
		if d.stallTimer.armed {
			d.stallTimer.disarm()
		}
		return nil
	}
	if !d.stallTimer.armed || !d.lastAck.Equal(d.stallRef) {
		d.stallRef = d.lastAck
		d.stallTimer.arm(d.clk, d.stall)
	}
	return d.stallTimer.c()
}

// stalled handles the stall timer firing: with no progress since it was
// armed, the connection is stalled.
func (d *drainer) stalled() error {
	d.stallTimer.armed = false
	if len(d.inflight) > 0 && d.lastAck.Equal(d.stallRef) {
		return fmt.Errorf("%d messages in flight since %s: %w", len(d.inflight), d.lastAck.Format(time.RFC3339Nano), errStalled)
	}
	return nil
}

// quiesce gives in-flight messages up to Quiesce to be acknowledged before
// a deliberate shutdown, so fewer are sent twice after a restart.
func (d *drainer) quiesce() {
	if len(d.inflight) == 0 {
		return
	}
	t := time.NewTimer(d.s.m.cfg.Quiesce)
	defer t.Stop()
	for len(d.inflight) > 0 {
		f := d.inflight[0]
		for !f.finished() {
			select {
			case <-f.wait():
			case <-t.C:
				return
			case <-d.c.lost:
				return
			}
		}
		if f.tok.Error() != nil {
			return
		}
		d.inflight[0] = nil
		d.inflight = d.inflight[1:]
		d.settled(f, d.clk.Now())
	}
}

// reserve takes the rate tokens for m and returns how long to wait before
// publishing it.
func (s *session) reserve(now time.Time, m spool.Message) time.Duration {
	d := s.sl.rate.reserve(now, 1)
	d = max(d, s.m.gwRate.reserve(now, 1))
	return max(d, s.m.gwBytes.reserve(now, float64(len(m.Payload))))
}

// rejects returns why the cloud would never accept m, or "".
func (s *session) rejects(m spool.Message) string { return rejects(s.dev, s.lim, m) }

// rejects returns why dev's cloud would never accept m, or "".
func rejects(dev Device, lim DialectLimits, m spool.Message) string {
	switch {
	case len(m.Payload) > lim.MaxPayload:
		return fmt.Sprintf("payload of %d bytes exceeds the %s limit of %d bytes", len(m.Payload), dev.Dialect, lim.MaxPayload)
	case !utf8.ValidString(m.Topic):
		return "topic is not valid UTF-8"
	case !secrets.TopicAllowed(dev.ID.ProductKey, dev.ID.DeviceName, m.Topic, false):
		return fmt.Sprintf("topic %q is not a valid topic of this device", m.Topic)
	}
	return ""
}

// deadLetter moves m, which the cloud would never accept, out of the
// queue. If the queue fails, m stays queued and is tried again on the next
// connection.
func (s *session) deadLetter(m spool.Message, reason string) {
	s.log.Warn("message dead-lettered", "seq", m.Seq, "topic", m.Topic, "bytes", len(m.Payload), "reason", reason)
	if err := s.m.cfg.Queue.DeadLetter(s.dev.ID, m.Seq, reason); err != nil {
		s.log.Error("dead-letter a message", "seq", m.Seq, "topic", m.Topic, "err", err)
	}
	s.updateStatus(func(st *SessionStatus) { st.DeadLettered++ })
}

// published records that a message was handed to paho; resent says it
// had been handed to paho on an earlier connection.
func (s *session) published(resent bool, inflight int) {
	s.updateStatus(func(st *SessionStatus) {
		st.InFlight = inflight
		if resent {
			st.Resent++
		}
	})
}

// delivered acknowledges seq to the queue after its token succeeded.
func (s *session) delivered(c *conn, seq uint64, inflight int, now time.Time) {
	c.acked.Store(true)
	if err := s.m.cfg.Queue.Ack(s.dev.ID, seq); err != nil {
		// The message stays queued and is sent again after the next
		// reconnect: a duplicate, never a loss.
		s.log.Error("acknowledge delivered message", "seq", seq, "err", err)
	}
	s.updateStatus(func(st *SessionStatus) {
		st.Sent++
		st.InFlight = inflight
		st.LastPuback = now
	})
}

// subSync mirrors the device's subscriptions on one connection, one
// SUBSCRIBE or UNSUBSCRIBE at a time. Like Publish, paho's Subscribe can
// block for WriteTimeout, so each operation runs on its own goroutine and
// delivers its completed token on result.
type subSync struct {
	applied map[string]byte // what the cloud has (or refused) on this connection; nil while empty
	busy    bool            // an operation is in progress
	result  chan mqtt.Token // capacity 1; made by the first operation (nil blocks: no result to wait for)
	sub     map[string]byte
	unsub   []string
}

// newSubSync returns an empty subSync: most devices mirror no subscription,
// and an idle connection then holds neither map nor channel for it.
func newSubSync() *subSync { return &subSync{} }

// syncSubs starts the next operation that brings the cloud's subscriptions
// to the device's, if any is needed and none is in progress.
func (s *session) syncSubs(c *conn, ss *subSync) {
	if ss.busy {
		return
	}
	want := s.sl.subsSnapshot()
	var unsub []string
	for f := range ss.applied {
		if _, ok := want[f]; !ok {
			unsub = append(unsub, f)
		}
	}
	sub := make(map[string]byte)
	if len(unsub) == 0 {
		for f, q := range want {
			if aq, ok := ss.applied[f]; !ok || aq != q {
				sub[f] = q
			}
		}
		if len(sub) == 0 {
			return
		}
	}
	ss.busy, ss.sub, ss.unsub = true, sub, unsub
	if ss.result == nil {
		ss.result = make(chan mqtt.Token, 1)
	}
	client, result := c.client, ss.result
	go func() {
		var tok mqtt.Token
		if len(unsub) > 0 {
			tok = client.Unsubscribe(unsub...)
		} else {
			tok = client.SubscribeMultiple(sub, s.onMessage)
		}
		<-tok.Done() // paho completes every token on SUBACK/UNSUBACK or disconnect
		result <- tok
	}()
}

// finishSubs records the result of the finished operation. An error means
// the connection failed; a filter the cloud refuses is logged and not
// retried on this connection.
func (s *session) finishSubs(ss *subSync, tok mqtt.Token) error {
	ss.busy = false
	if err := tok.Error(); err != nil {
		return fmt.Errorf("mirror subscriptions: %w", err)
	}
	for _, f := range ss.unsub {
		delete(ss.applied, f)
	}
	var result map[string]byte
	if st, ok := tok.(*mqtt.SubscribeToken); ok {
		result = st.Result()
	}
	if ss.applied == nil && len(ss.sub) > 0 {
		ss.applied = make(map[string]byte, len(ss.sub))
	}
	for f, q := range ss.sub {
		if rc, ok := result[f]; ok && rc == 0x80 {
			s.log.Warn("cloud refused a subscription", "filter", f)
		} else {
			s.log.Debug("subscribed", "filter", f, "qos", q)
		}
		ss.applied[f] = q
	}
	ss.sub, ss.unsub = nil, nil
	return nil
}

// initialSubscribe restores the device's subscriptions on a new connection
// before anything is published, so replies to what it sends are delivered.
func (s *session) initialSubscribe(ctx context.Context, c *conn, ss *subSync) error {
	s.syncSubs(c, ss)
	if !ss.busy {
		return nil
	}
	t := time.NewTimer(s.m.cfg.ConnectTimeout)
	defer t.Stop()
	for ss.busy {
		select {
		case tok := <-ss.result:
			if err := s.finishSubs(ss, tok); err != nil {
				return err
			}
			s.syncSubs(c, ss)
		case <-c.lost:
			return c.lostErr
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			return fmt.Errorf("mirror subscriptions: no SUBACK within %v", s.m.cfg.ConnectTimeout)
		}
	}
	return nil
}

// lazyTimer is a Clock timer created on first use and re-armed after.
type lazyTimer struct {
	t     Timer
	armed bool
}

func (l *lazyTimer) arm(clk Clock, d time.Duration) {
	d = max(d, 0)
	if l.t == nil {
		l.t = clk.NewTimer(d)
	} else {
		l.t.Reset(d)
	}
	l.armed = true
}

// c returns the timer's channel while armed, else nil (blocks forever).
func (l *lazyTimer) c() <-chan time.Time {
	if l.t == nil || !l.armed {
		return nil
	}
	return l.t.C()
}

func (l *lazyTimer) disarm() {
	if l.t != nil {
		l.t.Stop()
	}
	l.armed = false
}

func (l *lazyTimer) stop() {
	if l.t != nil {
		l.t.Stop()
	}
}
