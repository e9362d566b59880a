package localbroker_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/internal/testutil/rawmqtt"
	"github.com/edgegw/edgegw/localbroker"
)

// asyncSink answers later, from another goroutine, as the spool does after
// its group commit. Publishes wait until the test answers them, or, with
// auto, are answered in arrival order by one goroutine (the spool's
// single writer).
type asyncSink struct {
	mu      sync.Mutex
	pending []*asyncPub // received, not yet answered
	all     []*asyncPub
	maxHeld int // most publishes waiting for an answer at once
	fail    func(m localbroker.Message) error
	auto    chan *asyncPub // non-nil: answered by the auto goroutine
}

type asyncPub struct {
	m    localbroker.Message
	done func(error)
}

func newAsyncSink() *asyncSink { return &asyncSink{} }

func (s *asyncSink) Publish(_ context.Context, m localbroker.Message, done func(error)) {
	p := &asyncPub{m: m, done: done}
	s.mu.Lock()
	s.all = append(s.all, p)
	auto := s.auto
	if auto == nil {
		s.pending = append(s.pending, p)
		s.maxHeld = max(s.maxHeld, len(s.pending))
	}
	s.mu.Unlock()
	if auto != nil {
		auto <- p
	}
}

// answerInOrder makes one goroutine answer every publish in arrival order
// until the test ends.
func (s *asyncSink) answerInOrder(t *testing.T) {
	ch := make(chan *asyncPub, 10000)
	s.mu.Lock()
	s.auto = ch
	s.mu.Unlock()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case p := <-ch:
				p.done(s.outcome(p.m))
			case <-stop:
				return
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
}

func (s *asyncSink) outcome(m localbroker.Message) error {
	s.mu.Lock()
	fail := s.fail
	s.mu.Unlock()
	if fail != nil {
		return fail(m)
	}
	return nil
}

// held returns the number of publishes waiting for an answer.
func (s *asyncSink) held() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.pending)
}

func (s *asyncSink) received() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.all)
}

// answer answers the waiting publish whose payload is payload.
func (s *asyncSink) answer(t *testing.T, payload string, err error) {
	t.Helper()
	s.mu.Lock()
	var p *asyncPub
	for i, q := range s.pending {
		if string(q.m.Payload) == payload {
			p = q
			s.pending = append(s.pending[:i], s.pending[i+1:]...)
			break
		}
	}
	s.mu.Unlock()
	if p == nil {
		t.Fatalf("no publish %q waits for an answer", payload)
	}
	p.done(err)
}

// answerAll answers every waiting publish with nil.
func (s *asyncSink) answerAll() {
	s.mu.Lock()
	ps := s.pending
	s.pending = nil
	s.mu.Unlock()
	for _, p := range ps {
		p.done(nil)
	}
}

// waitHeld waits until n publishes wait for an answer.
func (s *asyncSink) waitHeld(t *testing.T, n int) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, func() bool { return s.held() == n }, "%d publishes at the sink", n)
}

func startAsync(t *testing.T, mod func(*localbroker.Config)) (*harness, *asyncSink) {
	t.Helper()
	sink := newAsyncSink()
	h := startBroker(t, func(c *localbroker.Config) {
		c.Sink = sink
		if mod != nil {
			mod(c)
		}
	})
	return h, sink
}

func publish1(id uint16, topic, payload string) packets.Packet {
	return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: id, TopicName: topic, Payload: []byte(payload)}
}

func pingreq() packets.Packet {
	return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}}
}

// readPubacks reads n packets and returns the PUBACK ids among them, in
// order, and whether a PINGRESP was among them.
func (c *rawClient) readPubacks(n int) (ids []uint16, pingresp bool) {
	c.t.Helper()
	for range n {
		switch pk := c.read(); pk.FixedHeader.Type {
		case packets.Puback:
			ids = append(ids, pk.PacketID)
		case packets.Pingresp:
			pingresp = true
		default:
			c.t.Fatalf("unexpected packet type %d", pk.FixedHeader.Type)
		}
	}
	return ids, pingresp
}

// A device with several QoS 1 publishes in flight has them all at the sink
// at once (the read loop does not wait for the sink), gets no PUBACK
// before the sink's answer, and gets its PUBACKs in the order it
// published, even when the sink answers the later ones first.
func TestPubacksInReceiptOrder(t *testing.T) {
	h, sink := startAsync(t, nil)
	c, _ := dialRaw(t, strings.TrimPrefix(h.url(t, "tcp"), "tcp://"), "a", dnA, passA, true)
	const n = 8
	for i := range n {
		c.send(publish1(uint16(i+1), topicA("order"), string(rune('a'+i))))
	}
	c.send(pingreq())
	// The read loop got past all eight while none is durable: the first
	// packet back is the PINGRESP, not a PUBACK.
	if pk := c.read(); pk.FixedHeader.Type != packets.Pingresp {
		t.Fatalf("got packet type %d before the sink answered, want the PINGRESP", pk.FixedHeader.Type)
	}
	sink.waitHeld(t, n)

	// The later ones first: nothing may be acknowledged while the first
	// waits (a PUBACK written at once would precede this PINGRESP).
	for i := n - 1; i >= 1; i-- {
		sink.answer(t, string(rune('a'+i)), nil)
	}
	c.send(pingreq())
	if pk := c.read(); pk.FixedHeader.Type != packets.Pingresp {
		t.Fatalf("got packet type %d (id %d) while the first publish waits for the sink", pk.FixedHeader.Type, pk.PacketID)
	}
	sink.answer(t, "a", nil)
	ids, _ := c.readPubacks(n)
	for i, id := range ids {
		if id != uint16(i+1) {
			t.Fatalf("PUBACK ids %v, want 1..%d in order", ids, n)
		}
	}
	if st := h.b.Stats(); st.MessagesIn != n {
		t.Errorf("MessagesIn = %d, want %d", st.MessagesIn, n)
	}
}

// A device publishing faster than the sink answers has at most
// MaxInflight publishes waiting; beyond that the broker stops reading it
// until one is acknowledged.
func TestPublishBackPressure(t *testing.T) {
	const bound, n = 4, 12
	h, sink := startAsync(t, func(c *localbroker.Config) { c.MaxInflight = bound })
	c, _ := dialRaw(t, strings.TrimPrefix(h.url(t, "tcp"), "tcp://"), "a", dnA, passA, true)
	for i := range n {
		c.send(publish1(uint16(i+1), topicA("bp"), string(rune('a'+i))))
	}
	c.send(pingreq())
	sink.waitHeld(t, bound)
	for i := range n {
		sink.answer(t, string(rune('a'+i)), nil)
		if left := n - i - 1; left > 0 {
			sink.waitHeld(t, min(bound, left))
		}
	}
	ids, pong := c.readPubacks(n + 1)
	if !pong || len(ids) != n {
		t.Fatalf("PUBACKs %v, PINGRESP %v", ids, pong)
	}
	for i, id := range ids {
		if id != uint16(i+1) {
			t.Fatalf("PUBACK ids %v, want 1..%d in order", ids, n)
		}
	}
	sink.mu.Lock()
	most := sink.maxHeld
	sink.mu.Unlock()
	if most > bound {
		t.Errorf("%d publishes waited for the sink at once, bound %d", most, bound)
	}
}

// MQTT 5: a publish the sink rejects with a reason code gets its PUBACK
// with that code in its turn, between the successes around it; the
// connection stays.
func TestPubackReasonCodeInOrder(t *testing.T) {
	h, sink := startAsync(t, nil)
	c := dialRaw5(t, strings.TrimPrefix(h.url(t, "tcp"), "tcp://"), "v5", dnA, passA)
	for i, p := range []string{"first", "full", "third"} {
		pk := publish1(uint16(i+1), topicA("v5"), p)
		pk.ProtocolVersion = 5
		c.send(pk)
	}
	sink.waitHeld(t, 3)
	sink.answer(t, "third", nil)
	sink.answer(t, "full", localbroker.Reject(localbroker.ReasonQuotaExceeded, errors.New("spool full")))
	sink.answer(t, "first", nil)
	want := []struct {
		id   uint16
		code byte
	}{{1, 0}, {2, localbroker.ReasonQuotaExceeded}, {3, 0}}
	for _, w := range want {
		pk := c.read5()
		if pk.FixedHeader.Type != packets.Puback || pk.PacketID != w.id || pk.ReasonCode != w.code {
			t.Fatalf("got type %d id %d code 0x%02x, want PUBACK %d code 0x%02x", pk.FixedHeader.Type, pk.PacketID, pk.ReasonCode, w.id, w.code)
		}
	}
	pk := publish1(4, topicA("v5"), "after")
	pk.ProtocolVersion = 5
	c.send(pk)
	sink.waitHeld(t, 1)
	sink.answer(t, "after", nil)
	if pk := c.read5(); pk.FixedHeader.Type != packets.Puback || pk.PacketID != 4 {
		t.Fatalf("after the rejection: type %d id %d, want PUBACK 4", pk.FixedHeader.Type, pk.PacketID)
	}
	if st := h.b.Stats(); st.SinkErrors != 1 || st.MessagesIn != 3 || st.WithheldDisconnects != 0 {
		t.Errorf("stats %+v", st)
	}
}

// A refused publish without a reason code (any refusal towards 3.1.1)
// gets no PUBACK: the acks before it are written, then the connection is
// dropped so that the device resends after reconnecting; nothing behind
// it is acknowledged.
func TestWithheldPubackDropsConnection(t *testing.T) {
	h, sink := startAsync(t, nil)
	c, _ := dialRaw(t, strings.TrimPrefix(h.url(t, "tcp"), "tcp://"), "a", dnA, passA, true)
	for i, p := range []string{"first", "bad", "third"} {
		c.send(publish1(uint16(i+1), topicA("w"), p))
	}
	sink.waitHeld(t, 3)
	sink.answer(t, "third", nil)
	sink.answer(t, "bad", localbroker.Reject(localbroker.ReasonQuotaExceeded, errors.New("spool full")))
	sink.answer(t, "first", nil)
	if pk := c.read(); pk.FixedHeader.Type != packets.Puback || pk.PacketID != 1 {
		t.Fatalf("got type %d id %d, want PUBACK 1", pk.FixedHeader.Type, pk.PacketID)
	}
	_ = c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if pk, err := rawmqtt.Read(c.r); err == nil {
		t.Fatalf("got packet type %d id %d after the withheld publish, want the connection closed", pk.FixedHeader.Type, pk.PacketID)
	} else if !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read after the withheld publish: %v, want the connection closed", err)
	}
	if st := h.b.Stats(); st.WithheldDisconnects != 1 || st.SinkErrors != 1 {
		t.Errorf("WithheldDisconnects = %d, SinkErrors = %d; want 1 and 1", st.WithheldDisconnects, st.SinkErrors)
	}
}

// numGoroutinesAtMost waits until at most n goroutines run.
func numGoroutinesAtMost(t *testing.T, n int, what string) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, func() bool { return runtime.NumGoroutine() <= n },
		"goroutines back to %d %s (now %d)", n, what, runtime.NumGoroutine())
}

// A connection that ends with publishes still waiting for the sink leaves
// nothing behind when the sink answers later: no writer goroutine, no
// PUBACK anywhere, the answers counted. A read loop held by back-pressure
// is released by a takeover, and by the broker's shutdown, without an
// answer from the sink.
func TestPendingAcksWhenConnectionEnds(t *testing.T) {
	h, sink := startAsync(t, func(c *localbroker.Config) { c.MaxInflight = 2 })
	addr := strings.TrimPrefix(h.url(t, "tcp"), "tcp://")
	base := runtime.NumGoroutine()

	// The device leaves with two publishes waiting.
	c, _ := dialRaw(t, addr, "a", dnA, passA, true)
	c.send(publish1(1, topicA("gone"), "1"))
	c.send(publish1(2, topicA("gone"), "2"))
	sink.waitHeld(t, 2)
	c.conn.Close()
	testutil.Eventually(t, 10*time.Second, func() bool { return h.b.Stats().ClientsConnected == 0 }, "the connection ended")
	sink.answerAll()
	numGoroutinesAtMost(t, base, "after the late answers")
	if st := h.b.Stats(); st.MessagesIn != 2 {
		t.Errorf("MessagesIn = %d, want 2", st.MessagesIn)
	}

	// Held by back-pressure (two waiting, a third read), then taken over:
	// the old read loop returns although the sink never answered.
	old, _ := dialRaw(t, addr, "same", dnA, passA, true)
	for i := range 3 {
		old.send(publish1(uint16(i+1), topicA("held"), "held"))
	}
	sink.waitHeld(t, 2)
	c2, _ := dialRaw(t, addr, "same", dnA, passA, true)
	testutil.Eventually(t, 10*time.Second, func() bool { return h.b.Stats().ClientsConnected == 1 }, "the old connection ended")
	c2.send(publish1(7, topicA("new"), "new"))
	sink.waitHeld(t, 3)
	sink.answer(t, "new", nil)
	if pk := c2.read(); pk.FixedHeader.Type != packets.Puback || pk.PacketID != 7 {
		t.Fatalf("new connection: type %d id %d, want PUBACK 7", pk.FixedHeader.Type, pk.PacketID)
	}
	sink.answerAll()
	if got := sink.received(); got != 5 {
		t.Errorf("the sink got %d publishes, want 5 (the held one never reached it)", got)
	}
	c2.conn.Close()
	testutil.Eventually(t, 10*time.Second, func() bool { return h.b.Stats().ClientsConnected == 0 }, "the connections ended")
	numGoroutinesAtMost(t, base, "after the takeover")

	// Held by back-pressure at shutdown, the sink never answering: the
	// broker still stops in time.
	held, _ := dialRaw(t, addr, "b", dnA, passA, true)
	for i := range 3 {
		held.send(publish1(uint16(i+1), topicA("shutdown"), "s"))
	}
	sink.waitHeld(t, 2)
	if err := h.stop(); err != nil {
		t.Fatalf("stop with a read loop held by back-pressure: %v", err)
	}
	sink.answerAll()
}

// blockedIn reports whether a goroutine is blocked in a network write
// inside fn.
func blockedIn(fn string) bool {
	buf := make([]byte, 4<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "[IO wait") && strings.Contains(g, fn) {
			return true
		}
	}
	return false
}

// A device that never reads its socket cannot delay anyone else's PUBACK:
// its acknowledgements wait for it on its own connection, never on the
// goroutine that answers for every device (the spool's writer). Here its
// TCP window is full of downlink, so every write to it blocks.
func TestNonReadingDeviceDoesNotDelayOthers(t *testing.T) {
	h, sink := startAsync(t, func(c *localbroker.Config) { c.WriteTimeout = time.Minute })
	sink.answerInOrder(t)
	addr := strings.TrimPrefix(h.url(t, "tcp"), "tcp://")

	// The hostile device: a tiny receive buffer, never read after CONNACK.
	// "+ss" makes it server-subscribed, so it receives downlink unasked.
	d := net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 1024) })
	}}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	hostile := &rawClient{t: t, conn: conn, r: bufio.NewReader(conn)}
	hostile.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 4,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), ClientIdentifier: "hostile+ss", Clean: true, Keepalive: 0,
			UsernameFlag: true, Username: []byte(dnA), PasswordFlag: true, Password: []byte(passA)}})
	if ack := hostile.read(); ack.FixedHeader.Type != packets.Connack || ack.ReasonCode != 0 {
		t.Fatalf("CONNACK: type %d code %d", ack.FixedHeader.Type, ack.ReasonCode)
	}
	testutil.Eventually(t, 10*time.Second, func() bool { return h.b.Stats().ClientsConnected == 1 }, "the hostile device connected")

	// Fill its window until a downlink write blocks.
	filled := make(chan struct{})
	go func() {
		defer close(filled)
		big := make([]byte, 256<<10)
		for h.b.Deliver(idA.DeviceID, topicA("fill"), big, 0) == nil {
		}
	}()
	testutil.Eventually(t, 20*time.Second, func() bool { return blockedIn("localbroker.(*Broker).writeBounded") }, "a write to the hostile device blocked")

	// Its publishes reach the sink, whose one answering goroutine answers
	// them while no PUBACK can reach the device.
	for i := range 3 {
		hostile.send(publish1(uint16(i+1), topicA("hostile"), "h"))
	}
	testutil.Eventually(t, 10*time.Second, func() bool { return sink.received() == 3 }, "the hostile device's publishes at the sink")

	// A neighbour publishes and is acknowledged as usual.
	g := connect(t, h.url(t, "tcp"), "good", dnB, passB)
	for range 20 {
		wait(t, g.Publish(topicB("good"), 1, false, "g"), "the neighbour's publish")
	}
	if !blockedIn("localbroker.(*Broker).writeBounded") {
		t.Error("the hostile device's window emptied during the test; the neighbour's PUBACKs prove nothing")
	}
	if st := h.b.Stats(); st.MessagesIn != 23 || st.ClientsConnected != 2 {
		t.Errorf("MessagesIn = %d, ClientsConnected = %d; want 23 (the hostile device's 3 too) and 2", st.MessagesIn, st.ClientsConnected)
	}
	conn.Close()
	<-filled
}

// An accepted device publish never takes mochi's error path: there
// Hooks.OnPublish passes the whole packet to a Debug log call, which
// boxes it on the heap at any log level (about 1 KB of garbage for every
// message).
func TestAcceptedPublishNotRejectedToMochi(t *testing.T) {
	h := startBroker(t, nil)
	c := connect(t, h.url(t, "tcp"), "quiet", dnA, passA)
	for i := range 20 {
		wait(t, c.Publish(topicA("quiet"), 1, false, []byte{byte(i)}), "publish")
	}
	if got := strings.Count(h.logs.String(), "publish packet rejected"); got != 0 {
		t.Errorf("mochi logged %d publishes as rejected (each boxed its packet); want 0", got)
	}
}
