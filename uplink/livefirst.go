package uplink

import (
	"slices"

	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink/spool"
)

// Live data first (ManagerConfig.LiveFirst)
//
// A device's message is fresh when it was appended after the device's
// current cloud connection came up; everything queued at that moment is
// the backlog. Precisely: when the drain on a connection starts (right
// after the CONNACK and the SUBACK that restores the device's
// subscriptions) it takes the queue's watermark w (LiveQueue.Watermark);
// the backlog lane holds the messages with Seq <= w, the fresh lane those
// with Seq > w. The boundary is fixed for the life of the connection.
//
// Why this definition and not "younger than N seconds": it needs no clock
// (an edge gateway without a battery-backed clock may step its wall clock
// by years when NTP comes up, and a monotonic age is lost across restarts),
// it needs no tuning, and it is what an operator means by "the backlog": what
// piled up while the cloud was unreachable. Because the boundary is a Seq
// and each lane is drained from its lowest Seq up, each lane keeps its
// original order; acknowledgement is per message (delete only on the
// cloud's PUBACK of that message) and the next connection starts again
// from the oldest unacknowledged message of each lane, so nothing is lost.
//
// Across connections: a message that was fresh on a connection that failed
// before it was acknowledged is queued when the next connection comes up,
// so it is part of that connection's backlog (it is no longer fresh). The
// order guarantee therefore holds per lane as the lanes are drawn at each
// connection: over the life of the device, the messages first delivered
// from backlog lanes arrive in Seq order, and so do those first delivered
// from fresh lanes.
//
// Starvation guard: priority is strict while the fresh lane keeps up with
// the rates, which is the normal case (a device's live traffic is below
// the cloud's per-device rate, so the backlog drains in the spare
// capacity). A device whose live traffic alone fills its rate would
// otherwise never drain its backlog; so when both lanes have a message
// waiting, at least one message in backlogShare is taken from the backlog.
//
// Rate tokens are reserved for the lane head chosen when the window has
// room, so at most one backlog message (the one already waiting for its
// rate slot) goes out ahead of a fresh message that arrives meanwhile.

// backlogShare: with LiveFirst and both lanes waiting, at least one
// message in backlogShare comes from the backlog.
const backlogShare = 8

// lane is one ordered stream of a device's queue: the whole queue without
// LiveFirst; with it, the backlog (Seq <= limit) or the fresh messages
// (Seq above the watermark).
type lane struct {
	buf       []spool.Message // read, not yet taken
	cursor    uint64          // Seq of the last message taken, or the lane's floor
	bounded   bool            // only Seqs up to limit belong to the lane
	limit     uint64
	exhausted bool // the last Read found no more (for a bounded lane: for good)
}

// fill reads up to n messages into the lane when its buffer is empty.
func (l *lane) fill(q Queue, id secrets.DeviceID, n int) error {
	if len(l.buf) > 0 || l.exhausted {
		return nil
	}
	msgs, err := q.Read(id, l.cursor, n)
	if err != nil {
		return err
	}
	l.exhausted = len(msgs) < n
	if l.bounded {
		// No message with a Seq <= limit is appended any more (the
		// Watermark contract), so past the limit the lane is done.
		if i := slices.IndexFunc(msgs, func(m spool.Message) bool { return m.Seq > l.limit }); i >= 0 {
			clear(msgs[i:])
			msgs, l.exhausted = msgs[:i], true
		}
	}
	l.buf = msgs
	return nil
}

// take removes the head of the buffer and advances the cursor past it.
func (l *lane) take() spool.Message {
	m := l.buf[0]
	l.buf[0] = spool.Message{}
	l.buf = l.buf[1:]
	l.cursor = m.Seq
	return m
}

// idle reports that the lane has nothing left to take for now.
func (l *lane) idle() bool { return len(l.buf) == 0 && l.exhausted }

// lanes are the read side of one connection's drain.
type lanes struct {
	fresh     lane // the whole queue without LiveFirst
	backlog   lane // LiveFirst: the messages queued when the connection came up
	liveFirst bool
	freshRun  int // fresh messages taken in a row while the backlog had one waiting
}

// newLanes sets up the lanes for a new connection, taking the queue's
// watermark with LiveFirst. If the watermark cannot be read the
// connection drains the queue as one lane (in order, only not live-first).
func (s *session) newLanes() *lanes {
	ls := &lanes{}
	if !s.m.cfg.LiveFirst {
		return ls
	}
	lq, ok := s.m.cfg.Queue.(LiveQueue)
	if !ok { // withDefaults refuses this; kept for safety
		return ls
	}
	w, err := lq.Watermark(s.dev.ID)
	if err != nil {
		s.log.Error("read the queue's watermark; draining this connection without live-first", "err", err)
		return ls
	}
	return liveFirstLanes(w)
}

// liveFirstLanes returns the lanes of a connection that came up when the
// queue's watermark was w.
func liveFirstLanes(w uint64) *lanes {
	return &lanes{
		liveFirst: true,
		fresh:     lane{cursor: w},
		backlog:   lane{bounded: true, limit: w, exhausted: w == 0},
	}
}

// next returns the lane whose head is to be published next, reading up to
// n messages into a lane whose buffer is empty, or nil when no lane has a
// message now.
func (ls *lanes) next(q Queue, id secrets.DeviceID, n int) (*lane, error) {
	if err := ls.fresh.fill(q, id, n); err != nil {
		return nil, err
	}
	if !ls.liveFirst {
		if len(ls.fresh.buf) == 0 {
			return nil, nil
		}
		return &ls.fresh, nil
	}
	if err := ls.backlog.fill(q, id, n); err != nil {
		return nil, err
	}
	fresh, backlog := len(ls.fresh.buf) > 0, len(ls.backlog.buf) > 0
	switch {
	case fresh && !backlog:
		return &ls.fresh, nil
	case fresh && ls.freshRun < backlogShare-1:
		ls.freshRun++
		return &ls.fresh, nil
	case backlog:
		ls.freshRun = 0
		return &ls.backlog, nil
	}
	return nil, nil
}

// resent reports whether seq, about to be taken from l and published, was
// handed to paho on an earlier connection, and maintains *maxPub (the
// slot's maxPublished): every message still queued with a Seq up to *maxPub
// has been handed to paho at least once. A message that is queued again
// was not acknowledged, so it is a resend exactly when it is at or below
// that prefix.
//
// A lane is taken in Seq order, so the backlog lane (or the single lane)
// extends the prefix as it goes. Fresh messages are newer than anything
// published before the connection, so they are never resends; they extend
// the prefix only once the backlog lane is done (until then the backlog
// below them is not all published). The price: a fresh message that was in
// flight when a connection failed while its backlog was still draining is
// not counted when it is sent again (at most Window per failed connection).
func (ls *lanes) resent(l *lane, seq uint64, maxPub *uint64) bool {
	if ls.liveFirst && l == &ls.fresh {
		if !ls.backlog.idle() {
			return false
		}
		// Everything up to the watermark was taken on this connection,
		// and the fresh lane up to its cursor.
		*maxPub = max(*maxPub, l.cursor)
	}
	resent := seq <= *maxPub
	*maxPub = max(*maxPub, seq)
	return resent
}
