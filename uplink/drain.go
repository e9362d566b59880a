package uplink

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
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

// publisher calls paho's Publish for one connection, in order, on its own
// goroutine: paho's Publish hands the packet over an unbuffered channel
// and can block for WriteTimeout (during a slow write, or for good when the
// connection drops in between), and the drain loop must stay responsive.
// After the first Publish that fails at once nothing more is published on
// the connection, so nothing can overtake a message that was never sent.
type publisher struct {
	c    *conn
	reqs chan *flight
	stop atomic.Bool
}

func startPublisher(c *conn, window int) *publisher {
	p := &publisher{c: c, reqs: make(chan *flight, window)}
	go p.run()
	return p
}

func (p *publisher) run() {
	failed := false
	for f := range p.reqs {
		if failed || p.stop.Load() || p.c.isLost() || !p.c.client.IsConnectionOpen() {
			f.tok = doneToken{errNotPublished}
		} else {
			f.tok = p.c.client.Publish(f.topic, f.qos, false, f.payload)
			select {
			case <-f.tok.Done():
				failed = f.tok.Error() != nil
			default:
			}
		}
		f.payload = nil
		close(f.ready)
	}
}

// close stops the publisher; a Publish in progress ends within WriteTimeout.
func (p *publisher) close() {
	p.stop.Store(true)
	close(p.reqs)
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
	var (
		q      = s.m.cfg.Queue
		id     = s.dev.ID
		clk    = s.m.clk
		window = s.m.cfg.Window
		stall  = s.m.cfg.StallTimeout

		ls       = s.newLanes()
		inflight = make([]*flight, 0, window) // oldest first
		pinned   *lane                        // the lane whose head holds rate tokens
		readErr  bool                         // the last Read failed; retry on readTimer
		readyAt  time.Time                    // when pinned's head may be published
		rateWait time.Duration                // the wait reserved for it
		stallRef time.Time                    // lastAck when the stall timer was armed
		lastAck  time.Time                    // last progress: a PUBACK, or the window opening

		rateTimer, stallTimer, readTimer lazyTimer
	)
	pub := startPublisher(c, window)
	defer pub.close()
	defer rateTimer.stop()
	defer stallTimer.stop()
	defer readTimer.stop()

	for {
		// 1. Settle finished tokens, oldest first.
		for len(inflight) > 0 {
			f := inflight[0]
			if !f.finished() {
				break
			}
			if err := f.tok.Error(); err != nil {
				return fmt.Errorf("publish seq %d: %w", f.seq, err)
			}
			inflight[0] = nil
			inflight = inflight[1:]
			lastAck = clk.Now()
			s.delivered(c, f.seq, len(inflight), lastAck)
		}

		// 2. Fill the window as far as the queue and the rates allow.
		for len(inflight) < window && !c.isLost() {
			l := pinned
			if l == nil {
				if readErr {
					break
				}
				var err error
				if l, err = ls.next(q, id, window-len(inflight)); err != nil {
					s.log.Error("read queue", "err", err)
					readErr = true
					readTimer.arm(clk, readRetry)
					break
				}
				if l == nil {
					break
				}
			}
			m := l.buf[0]
			if reason := s.rejects(m); reason != "" {
				l.take()
				s.deadLetter(m, reason)
				continue
			}
			now := clk.Now()
			if pinned == nil {
				rateWait = s.reserve(now, m)
				readyAt, pinned = now.Add(rateWait), l
			}
			if readyAt.Sub(now) > rateWait {
				// The clock stepped back: never wait longer than reserved.
				readyAt = now.Add(rateWait)
			}
			if now.Before(readyAt) {
				rateTimer.arm(clk, readyAt.Sub(now))
				break
			}
			pinned = nil
			resent := ls.resent(l, m.Seq, &s.sl.maxPublished)
			l.take()
			f := &flight{seq: m.Seq, topic: m.Topic, qos: min(m.QoS, 1), payload: m.Payload, ready: make(chan struct{})}
			pub.reqs <- f // never blocks: at most window flights exist
			if len(inflight) == 0 {
				lastAck = now
			}
			inflight = append(inflight, f)
			s.published(resent, len(inflight))
		}

		// 3. Wait for something to do.
		var doneC, notifyC <-chan struct{}
		var stallC <-chan time.Time
		if len(inflight) > 0 {
			doneC = inflight[0].wait()
			// Armed afresh for the whole timeout at every progress, so the
			// timer itself measures the time without a PUBACK: comparing
			// clock readings would take a clock step for a stall.
			if !stallTimer.armed || !lastAck.Equal(stallRef) {
				stallRef = lastAck
				stallTimer.arm(clk, stall)
			}
			stallC = stallTimer.c()
		} else if stallTimer.armed {
			stallTimer.disarm()
		}
		if ls.fresh.exhausted {
			// Also while the backlog lane still has messages: a fresh
			// message must be seen at once, not after the backlog.
			notifyC = s.notify
		}
		select {
		case <-ctx.Done():
			s.settle(c, inflight)
			return ctx.Err()
		case <-c.lost:
			return c.lostErr
		case <-doneC:
		case <-notifyC:
			ls.fresh.exhausted = false
		case <-rateTimer.c():
			rateTimer.armed = false
		case <-readTimer.c():
			readTimer.armed, readErr, ls.fresh.exhausted = false, false, false
		case <-stallC:
			stallTimer.armed = false
			if len(inflight) > 0 && lastAck.Equal(stallRef) {
				return fmt.Errorf("%d messages in flight since %s: %w", len(inflight), lastAck.Format(time.RFC3339Nano), errStalled)
			}
		case <-s.subsChanged:
			s.syncSubs(c, subs)
		case tok := <-subs.result:
			if err := s.finishSubs(subs, tok); err != nil {
				return err
			}
			s.syncSubs(c, subs)
		}
	}
}

// settle gives in-flight messages up to Quiesce to be acknowledged before
// a deliberate shutdown, so fewer are sent twice after a restart.
func (s *session) settle(c *conn, inflight []*flight) {
	if len(inflight) == 0 {
		return
	}
	t := time.NewTimer(s.m.cfg.Quiesce)
	defer t.Stop()
	for i, f := range inflight {
		for !f.finished() {
			select {
			case <-f.wait():
			case <-t.C:
				return
			case <-c.lost:
				return
			}
		}
		if f.tok.Error() != nil {
			return
		}
		s.delivered(c, f.seq, len(inflight)-i-1, s.m.clk.Now())
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
func (s *session) rejects(m spool.Message) string {
	switch {
	case len(m.Payload) > s.lim.MaxPayload:
		return fmt.Sprintf("payload of %d bytes exceeds the %s limit of %d bytes", len(m.Payload), s.dev.Dialect, s.lim.MaxPayload)
	case !utf8.ValidString(m.Topic):
		return "topic is not valid UTF-8"
	case !secrets.TopicAllowed(s.dev.ID.ProductKey, s.dev.ID.DeviceName, m.Topic, false):
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
	applied map[string]byte // what the cloud has (or refused) on this connection
	busy    bool            // an operation is in progress
	result  chan mqtt.Token // capacity 1; nil channel semantics are not used
	sub     map[string]byte
	unsub   []string
}

func newSubSync() *subSync {
	return &subSync{applied: make(map[string]byte), result: make(chan mqtt.Token, 1)}
}

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
