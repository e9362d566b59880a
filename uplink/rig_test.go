package uplink

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink/spool"
)

const testPK = "a1TestPK"

func testDevice(i int) Device {
	return Device{
		ID:      secrets.DeviceID{ProductKey: testPK, DeviceName: fmt.Sprintf("dev%04d", i)},
		Dialect: secrets.Aliyun,
		Secret:  secrets.NewSecret(fmt.Sprintf("secret-%04d-XyZ", i)),
	}
}

func userTopic(id secrets.DeviceID) string {
	return "/" + id.ProductKey + "/" + id.DeviceName + "/user/data"
}

type downMsg struct {
	id      secrets.DeviceID
	topic   string
	payload string
	qos     byte
}

type deadMsg struct {
	id     secrets.DeviceID
	m      spool.Message
	reason string
}

// rig is a manager wired to an in-memory queue with recorded callbacks
// and instrumented paho clients and sockets.
type rig struct {
	t  testing.TB
	m  *Manager
	q  *memQueue
	fc *fakeClock // nil with the real clock

	mu        sync.Mutex
	down      []downMsg
	states    map[secrets.DeviceID][]State
	open      map[secrets.DeviceID]int // sockets open per identity
	dials     map[secrets.DeviceID]int
	overlaps  atomic.Int64 // a dial while another socket of the identity was open
	clients   atomic.Int64 // paho clients created
	writes    atomic.Int64 // write(2) calls on the cloud sockets
	downDelay chan struct{}
}

type rigOption func(*ManagerConfig)

func withFakeClock(fc *fakeClock) rigOption {
	return func(c *ManagerConfig) { c.Clock = fc }
}

func newRig(t testing.TB, url string, opts ...rigOption) *rig {
	t.Helper()
	r := &rig{
		t: t, q: newMemQueue(),
		states: make(map[secrets.DeviceID][]State),
		open:   make(map[secrets.DeviceID]int),
		dials:  make(map[secrets.DeviceID]int),
	}
	cfg := ManagerConfig{
		Endpoint:    Endpoint{URL: url},
		Queue:       r.q,
		Logger:      testLogger(t),
		Random:      func() float64 { return 0.5 },
		ConnectRate: Rate{PerSecond: -1},
		Limits: map[secrets.Dialect]DialectLimits{
			secrets.Aliyun: {KeepAlive: 60 * time.Second, MaxPayload: 256 << 10,
				Backoff: Backoff{Initial: 5 * time.Millisecond, Max: 50 * time.Millisecond}},
		},
		Quiesce: 50 * time.Millisecond,
		Downlink: func(id secrets.DeviceID, topic string, payload []byte, qos byte) {
			r.mu.Lock()
			r.down = append(r.down, downMsg{id, topic, string(payload), qos})
			r.mu.Unlock()
		},
		OnState: func(st SessionStatus) {
			r.mu.Lock()
			r.states[st.Device] = append(r.states[st.Device], st.State)
			r.mu.Unlock()
		},
	}
	for _, o := range opts {
		o(&cfg)
	}
	if fc, ok := cfg.Clock.(*fakeClock); ok {
		r.fc = fc
	}
	m, err := NewManager(cfg)
	if err != nil {
		t.Fatal(err)
	}
	m.newClient = func(o *mqtt.ClientOptions) mqtt.Client {
		r.clients.Add(1)
		return mqtt.NewClient(o)
	}
	m.connHook = func(id secrets.DeviceID, c net.Conn) net.Conn {
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.open[id] > 0 {
			r.overlaps.Add(1)
			t.Errorf("device %s dialled while another socket of it was open", id)
		}
		r.open[id]++
		r.dials[id]++
		return &countedConn{Conn: c, writes: &r.writes, close: func() {
			r.mu.Lock()
			r.open[id]--
			r.mu.Unlock()
		}}
	}
	r.m = m
	return r
}

// countedConn counts its writes and reports its first Close.
type countedConn struct {
	net.Conn
	once   sync.Once
	close  func()
	writes *atomic.Int64
}

func (c *countedConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.close)
	return err
}

func (r *rig) add(devs ...Device) {
	r.t.Helper()
	for _, d := range devs {
		if err := r.m.Add(d); err != nil {
			r.t.Fatal(err)
		}
	}
}

func (r *rig) waitStatus(id secrets.DeviceID, what string, cond func(SessionStatus) bool) SessionStatus {
	r.t.Helper()
	var st SessionStatus
	testutil.Eventually(r.t, 15*time.Second, func() bool {
		var ok bool
		st, ok = r.m.Status(id)
		return ok && cond(st)
	}, "%s: %s", id, what)
	return st
}

func (r *rig) downlinks() []downMsg {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]downMsg(nil), r.down...)
}

func (r *rig) deadLetters() []deadMsg { return r.q.deadLetters() }

func (r *rig) openSockets(id secrets.DeviceID) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.open[id]
}

// scriptedCloud answers each CONNECT with the return code its script
// gives (or closes the connection for -1) and records the CONNECTs.
type scriptedCloud struct {
	l      net.Listener
	answer func(n int) int
	mu     sync.Mutex
	seen   []*packets.ConnectPacket
	wg     sync.WaitGroup
}

func startScripted(t testing.TB, answer func(n int) int) *scriptedCloud {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &scriptedCloud{l: l, answer: answer}
	var conns sync.Map
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns.Store(c, true)
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				p, err := packets.ReadPacket(c)
				if err != nil {
					return
				}
				cp, ok := p.(*packets.ConnectPacket)
				if !ok {
					return
				}
				s.mu.Lock()
				n := len(s.seen)
				s.seen = append(s.seen, cp)
				s.mu.Unlock()
				rc := s.answer(n)
				if rc < 0 {
					return
				}
				ack := packets.NewControlPacket(packets.Connack).(*packets.ConnackPacket)
				ack.ReturnCode = byte(rc)
				_ = ack.Write(c)
				if rc == 0 {
					_, _ = packets.ReadPacket(c) // hold the session until the client leaves
				}
			}()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		conns.Range(func(k, _ any) bool { k.(net.Conn).Close(); return true })
		s.wg.Wait()
	})
	return s
}

func (s *scriptedCloud) url() string { return "tcp://" + s.l.Addr().String() }

func (s *scriptedCloud) connects() []*packets.ConnectPacket {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*packets.ConnectPacket(nil), s.seen...)
}
