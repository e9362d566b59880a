package localbroker

import (
	"bytes"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/edgegw/edgegw/internal/logsafe"
)

// A device's QoS 1 publish is acknowledged only once the sink has made it
// durable, and the sink reports that later, from another goroutine (the
// spool's writer, after the group commit). Waiting for it on the device's
// read goroutine, as mochi's OnPublish contract would have it, lets a
// device have one publish in each commit however many it has in flight.
// So OnPublish hands the message to the sink, records the PUBACK it owes
// in the connection's ackQueue and returns the packet as QoS 0, ignored
// and not retained, with no error (takenOver in hook.go), which makes
// mochi neither acknowledge nor route the message and leaves its inflight
// store and receive quota untouched; the ackQueue writes the PUBACKs
// itself as the sink completes them.
//
// Rules the queue keeps:
//   - PUBACKs go out strictly in the order the PUBLISHes were received
//     (MQTT-4.6.0-2): a publish that completed early waits for the ones
//     before it.
//   - A PUBACK is never written on the goroutine that completes the
//     publish: a device that stops reading would stall every device's
//     commits. The connection's own writer goroutine, started when acks
//     become ready and none runs (and ending when none are left, so an
//     idle device costs no goroutine), writes every ready ack with one
//     write, under the client's lock so that the bytes never interleave
//     with mochi's writes, bounded by Config.WriteTimeout.
//   - A publish the sink refused without a reason code (any refusal of a
//     3.1.1 client) gets no PUBACK: when it reaches the head of the queue,
//     the acks before it are written and the connection is dropped
//     (dropAfterWithheld), so that the device resends after reconnecting;
//     nothing queued behind it is acknowledged.
//   - At most Config.MaxInflight publishes (QoS 0 ones included) wait for
//     the sink or for their PUBACK; beyond that OnPublish blocks the
//     device's read loop (TCP back-pressure) until one finishes, the queue
//     closes or the broker stops: a hostile device cannot make the broker
//     hold an unbounded backlog for it.
//   - When the connection ends, the queue closes: what completes later is
//     dropped. The messages are in the spool already; the device resends
//     what it did not see acknowledged (a duplicate, never a loss).

// errAckQueued is what OnPublish returns on the rare paths where the ack
// queue answers a publish without the sink (a refused topic) or nobody
// will (the connection or the broker is closing): packets.ErrRejectPacket,
// boxed once (boxing the Code on every return allocates). Accepted
// publishes use takenOver instead.
var errAckQueued error = packets.ErrRejectPacket

// ackState is what a queued publish is waiting for.
type ackState uint8

const (
	ackPending  ackState = iota // the sink has not answered
	ackReady                    // acknowledge with code
	ackWithheld                 // no PUBACK: drop the connection
)

// ackSlot is a QoS 1 publish owed a PUBACK.
type ackSlot struct {
	id    uint16
	v5    bool
	state ackState
	code  byte // MQTT 5 reason code of a ready ack (0: success)
}

// ackQueue is a connection's publishes waiting for the sink, and the
// PUBACKs it owes, in the order the publishes were received. The zero
// value is ready for use.
type ackQueue struct {
	mu    sync.Mutex
	slots []ackSlot // QoS 1 publishes not yet acknowledged, in receipt order
	first uint64    // ticket of slots[0]; tickets number the slots
	// held counts the publishes entered and not yet finished: a QoS 0 one
	// until the sink answers, a QoS 1 one until its PUBACK is written (or
	// the queue closes).
	held    int
	writing bool          // a writer goroutine runs
	closed  bool          // the connection is ending: nothing more is entered or written
	waiting bool          // the read goroutine waits in enter
	wake    chan struct{} // signals the waiting read goroutine (made when first needed)
	buf     []byte        // the running writer's encoding buffer
	timer   *time.Timer   // bounds the running writer's write; writers only
}

// enter admits a publish, waiting while max are held, and for a QoS 1 one
// returns the ticket of its slot. It returns false when the queue closed
// or stop was closed (the broker is shutting down) first. Read goroutine
// only.
func (q *ackQueue) enter(max int, stop <-chan struct{}, qos1 bool, id uint16, v5 bool) (ticket uint64, ok bool) {
	q.mu.Lock()
	for q.held >= max && !q.closed {
		if q.wake == nil {
			q.wake = make(chan struct{}, 1)
		}
		q.waiting = true
		q.mu.Unlock()
		select {
		case <-q.wake:
		case <-stop:
			q.mu.Lock()
			q.waiting = false
			q.mu.Unlock()
			return 0, false
		}
		q.mu.Lock()
		q.waiting = false
	}
	defer q.mu.Unlock()
	if q.closed {
		return 0, false
	}
	q.held++
	if qos1 {
		ticket = q.first + uint64(len(q.slots))
		q.slots = append(q.slots, ackSlot{id: id, v5: v5})
	}
	return ticket, true
}

// release ends n held publishes and wakes the read goroutine if it waits
// for room.
func (q *ackQueue) release(n int) {
	q.mu.Lock()
	q.held -= n
	q.signalLocked()
	q.mu.Unlock()
}

func (q *ackQueue) signalLocked() {
	if q.waiting {
		select {
		case q.wake <- struct{}{}:
		default:
		}
	}
}

// finish records the sink's answer for the slot of ticket and reports
// whether the caller must start the connection's writer: the slot is at
// the head and no writer runs. It never blocks on the network.
func (q *ackQueue) finish(ticket uint64, state ackState, code byte) (start bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed || ticket < q.first || ticket-q.first >= uint64(len(q.slots)) {
		return false
	}
	s := &q.slots[ticket-q.first]
	s.state, s.code = state, code
	if ticket != q.first || q.writing {
		return false
	}
	q.writing = true
	return true
}

// take removes the ready acks at the head of the queue and returns them
// encoded (with mods, the client's limits on MQTT 5 properties), with
// their number. withheld reports that a withheld publish
// follows them: the queue is then closed. ok is false, and the writer
// must end, when there is nothing to write. Writer goroutine only.
func (q *ackQueue) take(mods packets.Mods) (buf []byte, n int, withheld, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		q.writing, q.buf = false, nil
		return nil, 0, false, false
	}
	buf = q.buf[:0]
	for n < len(q.slots) {
		s := &q.slots[n]
		if s.state == ackPending {
			break
		}
		if s.state == ackWithheld {
			withheld = true
			break
		}
		buf = appendPuback(buf, s, mods)
		n++
	}
	if n == 0 && !withheld {
		q.writing = false
		return nil, 0, false, false
	}
	q.buf = buf
	q.slots = q.slots[:copy(q.slots, q.slots[n:])]
	q.first += uint64(n)
	if withheld {
		q.closeLocked()
	}
	return buf, n, withheld, true
}

// close ends the queue: nothing more is entered, what completes later is
// dropped, a waiting read goroutine returns.
func (q *ackQueue) close() {
	q.mu.Lock()
	q.closeLocked()
	q.mu.Unlock()
}

func (q *ackQueue) closeLocked() {
	q.closed = true
	q.first += uint64(len(q.slots))
	q.slots = nil
	if !q.writing {
		q.buf = nil
	}
	q.signalLocked()
}

// appendPuback appends the wire form of a slot's PUBACK. A success is the
// four bytes MQTT 3.1.1 and MQTT 5 share (a 5.0 PUBACK may omit the
// reason code 0 and the properties); a failure is encoded by mochi, with
// the reason string its own PUBACKs carry where the client allows it.
func appendPuback(buf []byte, s *ackSlot, mods packets.Mods) []byte {
	if s.code == 0 || !s.v5 {
		return append(buf, packets.Puback<<4, 2, byte(s.id>>8), byte(s.id))
	}
	return appendPubackCode(buf, s, mods)
}

// appendPubackCode encodes an MQTT 5 PUBACK with a reason code. It is its
// own function, kept out of line, because its packets.Packet (over a
// kilobyte) would otherwise be in appendPuback's frame: the short-lived
// ack writer goroutine then had to grow its stack for every success too
// (newstack/copystack were 5 % of edgegw's CPU at a fixed 5,000 msg/s).
//
//go:noinline
func appendPubackCode(buf []byte, s *ackSlot, mods packets.Mods) []byte {
	code, ok := pubackCodes[s.code]
	if !ok {
		code = packets.ErrUnspecifiedError
	}
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Puback},
		PacketID:        s.id,
		ReasonCode:      code.Code,
		ProtocolVersion: 5,
		Properties:      packets.Properties{ReasonString: code.Reason},
		Mods:            mods,
	}
	var b bytes.Buffer
	_ = pk.PubackEncode(&b) // cannot fail
	return append(buf, b.Bytes()...)
}

// published is the sink's answer to one publish of c: it counts it and
// tells the queue. It runs on whatever goroutine the sink completes on,
// so it must not block.
func (h *hook) published(c *conn, ticket uint64, qos byte, v5 bool, topic string, err error) {
	b := h.b
	qos1 := qos > 0
	if err == nil {
		b.stats.messagesIn.Add(1)
	} else {
		b.stats.sinkErrors.Add(1)
		b.logLimited("sink", slog.LevelWarn, "publish not acknowledged: sink refused it",
			"device", c.id.String(), "client", logsafe.Clip(c.clientID), "topic", logsafe.Clip(topic), "qos", qos, "error", err)
	}
	if !qos1 {
		c.acks.release(1) // a refused QoS 0 publish is simply dropped
		return
	}
	state, code := ackReady, byte(0)
	if err != nil {
		if rej := (*RejectError)(nil); v5 && errors.As(err, &rej) {
			code = ReasonUnspecifiedError
			if _, ok := pubackCodes[rej.Code]; ok {
				code = rej.Code
			}
		} else {
			// A withheld PUBACK is resent only after a reconnect (MQTT
			// 3.1.1 clients, and MQTT 5 clients, never resend on a live
			// connection): without the disconnect the device would wait
			// for it forever, answering pings, its window stuck.
			state = ackWithheld
		}
	}
	h.ackDone(c, ticket, state, code)
}

// ackDone records a slot's outcome and starts the connection's writer if
// it is needed.
func (h *hook) ackDone(c *conn, ticket uint64, state ackState, code byte) {
	if c.acks.finish(ticket, state, code) {
		h.b.ackWriters.Add(1)
		go h.writeAcks(c)
	}
}

// writeAcks is a connection's writer: it writes the ready acks at the head
// of its queue, one write for all of them, until none are left.
func (h *hook) writeAcks(c *conn) {
	b := h.b
	defer b.ackWriters.Add(-1)
	props := &c.cl.Properties.Props // set at CONNECT, read-only since
	mods := packets.Mods{
		MaxSize:             props.MaximumPacketSize,
		DisallowProblemInfo: props.RequestProblemInfoFlag && props.RequestProblemInfo == 0,
	}
	for {
		buf, n, withheld, ok := c.acks.take(mods)
		if !ok {
			return
		}
		if n > 0 {
			if err := b.writeRaw(c, buf, n); err != nil {
				c.acks.close()
				c.cl.Stop(err)
				return
			}
			c.acks.release(n)
		}
		if withheld {
			h.dropAfterWithheld(c.cl, c)
			return
		}
	}
}

// writeRaw writes n encoded packets to c's client in one write, under the
// client's lock as mochi's own writes are, so that they never interleave
// with a packet mochi writes. A client that does not take the bytes within
// Config.WriteTimeout is stopped (which also ends the write). mochi's byte
// and packet counters are kept. Writer goroutine only: the timer is the
// connection's, reused.
func (b *Broker) writeRaw(c *conn, buf []byte, n int) error {
	cl := c.cl
	if cl.Closed() || cl.Net.Conn == nil {
		return mqtt.ErrConnectionClosed
	}
	if t := c.acks.timer; t == nil {
		c.acks.timer = time.AfterFunc(b.cfg.WriteTimeout, func() {
			b.logLimited("write-timeout", slog.LevelWarn, "client did not take its acknowledgements in time; disconnecting",
				"client", logsafe.Clip(cl.ID), "remote", cl.Net.Remote, "timeout", b.cfg.WriteTimeout)
			cl.Stop(errWriteTimeout)
		})
	} else {
		t.Reset(b.cfg.WriteTimeout)
	}
	cl.Lock()
	w, err := cl.Net.Conn.Write(buf)
	cl.Unlock()
	c.acks.timer.Stop()
	if info := b.info.Load(); info != nil {
		atomic.AddInt64(&info.BytesSent, int64(w))
		if err == nil {
			atomic.AddInt64(&info.PacketsSent, int64(n))
		}
	}
	return err
}

// waitAckWritersEnded waits until no ack writer runs, or deadline. Writers
// end soon once their connections are closed.
func (b *Broker) waitAckWritersEnded(deadline time.Time) {
	for b.ackWriters.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
}
