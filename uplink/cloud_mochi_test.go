package uplink

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/edgegw/edgegw/secrets"
)

// observerUser is the username of test observers; the hook lets it in
// without a signature.
const observerUser = "observer"

// observerPassword is the observers' password; only cloudsim checks it.
const observerPassword = "x"

// connectRecord is one CONNECT the test cloud saw.
type connectRecord struct {
	ClientID, Username string
	Password           secrets.Secret
	Presented          *secrets.Presented
	Accepted           bool
}

// cloudHook makes mochi a strict stand-in cloud: it verifies signed
// credentials with package secrets and has knobs to refuse, drop, kick and
// stall.
type cloudHook struct {
	mochi.HookBase
	dialect secrets.Dialect

	mu       sync.Mutex
	devices  map[secrets.DeviceID]secrets.Secret
	connects []connectRecord
	refuse   int  // refuse the next N logins (CONNACK 4)
	drop     int  // close the next N connections before CONNACK
	swallow  bool // drop device publishes without PUBACK
	// kick, when it returns true for a device publish, closes that
	// client's connection before the PUBACK.
	kick       func(id secrets.DeviceID, seq uint64) bool
	received   map[secrets.DeviceID][]uint64
	topics     map[secrets.DeviceID][]string // topic of each received publish, as received
	order      []secrets.DeviceID            // publishers of all device publishes, in arrival order
	pending    map[string]map[uint16]uint64  // mochi client id → packet id → seq
	pubacked   map[secrets.DeviceID]map[uint64]bool
	subscribed map[secrets.DeviceID][]string
}

func (h *cloudHook) ID() string { return "edgegw-test-cloud" }

func (h *cloudHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mochi.OnConnect, mochi.OnConnectAuthenticate, mochi.OnACLCheck,
		mochi.OnPublish, mochi.OnPacketSent, mochi.OnSubscribed}, []byte{b})
}

func (h *cloudHook) OnConnect(cl *mochi.Client, pk packets.Packet) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.drop > 0 && string(pk.Connect.Username) != observerUser {
		h.drop--
		return errors.New("connection dropped by the test cloud")
	}
	return nil
}

func (h *cloudHook) OnConnectAuthenticate(cl *mochi.Client, pk packets.Packet) bool {
	user := string(pk.Connect.Username)
	if user == observerUser {
		return true
	}
	rec := connectRecord{ClientID: pk.Connect.ClientIdentifier, Username: user, Password: secrets.NewSecret(string(pk.Connect.Password))}
	h.mu.Lock()
	defer h.mu.Unlock()
	p, err := secrets.ParseConnect(h.dialect, rec.ClientID, rec.Username, rec.Password)
	if err == nil {
		rec.Presented = p
		secret, known := h.devices[secrets.DeviceID{ProductKey: p.ProductKey, DeviceName: p.DeviceName}]
		rec.Accepted = known && p.Verify(secret, secrets.VerifyOptions{}) == nil && h.refuse == 0
	}
	if h.refuse > 0 {
		h.refuse--
	}
	h.connects = append(h.connects, rec)
	return rec.Accepted
}

func (h *cloudHook) OnACLCheck(*mochi.Client, string, bool) bool { return true }

func deviceOf(cl *mochi.Client) (secrets.DeviceID, bool) {
	dn, pk, ok := strings.Cut(string(cl.Properties.Username), "&")
	return secrets.DeviceID{ProductKey: pk, DeviceName: dn}, ok
}

func (h *cloudHook) OnPublish(cl *mochi.Client, pk packets.Packet) (packets.Packet, error) {
	id, ok := deviceOf(cl)
	if !ok {
		return pk, nil // the observer
	}
	seq, _ := strconv.ParseUint(string(pk.Payload), 10, 64)
	h.mu.Lock()
	defer h.mu.Unlock()
	h.received[id] = append(h.received[id], seq)
	h.topics[id] = append(h.topics[id], pk.TopicName)
	h.order = append(h.order, id)
	if h.swallow {
		return pk, packets.ErrRejectPacket
	}
	if h.kick != nil && h.kick(id, seq) {
		cl.Stop(errors.New("kicked by the test cloud"))
		return pk, packets.ErrRejectPacket
	}
	if pk.FixedHeader.Qos > 0 {
		if h.pending[cl.ID] == nil {
			h.pending[cl.ID] = make(map[uint16]uint64)
		}
		h.pending[cl.ID][pk.PacketID] = seq
	}
	return pk, nil
}

func (h *cloudHook) OnPacketSent(cl *mochi.Client, pk packets.Packet, _ []byte) {
	if pk.FixedHeader.Type != packets.Puback {
		return
	}
	id, ok := deviceOf(cl)
	if !ok {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if seq, ok := h.pending[cl.ID][pk.PacketID]; ok {
		delete(h.pending[cl.ID], pk.PacketID)
		if h.pubacked[id] == nil {
			h.pubacked[id] = make(map[uint64]bool)
		}
		h.pubacked[id][seq] = true
	}
}

func (h *cloudHook) OnSubscribed(cl *mochi.Client, pk packets.Packet, _ []byte) {
	id, ok := deviceOf(cl)
	if !ok {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, f := range pk.Filters {
		h.subscribed[id] = append(h.subscribed[id], f.Filter)
	}
}

func (h *cloudHook) set(f func(h *cloudHook)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	f(h)
}

func (h *cloudHook) connectRecords() []connectRecord {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]connectRecord(nil), h.connects...)
}

func (h *cloudHook) receivedBy(id secrets.DeviceID) []uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]uint64(nil), h.received[id]...)
}

func (h *cloudHook) topicsBy(id secrets.DeviceID) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.topics[id]...)
}

func (h *cloudHook) arrivalOrder() []secrets.DeviceID {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]secrets.DeviceID(nil), h.order...)
}

func (h *cloudHook) wasPubacked(id secrets.DeviceID, seq uint64) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.pubacked[id][seq]
}

// mochiCloud is a mochi broker on 127.0.0.1:0 with the cloudHook.
type mochiCloud struct {
	srv  *mochi.Server
	hook *cloudHook
	url  string
}

type mochiOptions struct {
	tls *tls.Config // serve TLS
	ws  string      // serve WebSocket on this address instead of TCP
}

func startMochi(t testing.TB, dialect secrets.Dialect, opts ...mochiOptions) *mochiCloud {
	t.Helper()
	caps := mochi.NewDefaultServerCapabilities()
	caps.MaximumClientWritesPending = 128
	caps.MaximumPacketSize = 1 << 20
	srv := mochi.New(&mochi.Options{
		Capabilities: caps,
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	hook := &cloudHook{
		dialect:    dialect,
		devices:    make(map[secrets.DeviceID]secrets.Secret),
		received:   make(map[secrets.DeviceID][]uint64),
		topics:     make(map[secrets.DeviceID][]string),
		pending:    make(map[string]map[uint16]uint64),
		pubacked:   make(map[secrets.DeviceID]map[uint64]bool),
		subscribed: make(map[secrets.DeviceID][]string),
	}
	if err := srv.AddHook(hook, nil); err != nil {
		t.Fatal(err)
	}
	var o mochiOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	var url string
	if o.ws != "" {
		l := listeners.NewWebsocket(listeners.Config{ID: "ws", Address: o.ws, TLSConfig: o.tls})
		if err := srv.AddListener(l); err != nil {
			t.Fatal(err)
		}
		scheme := "ws"
		if o.tls != nil {
			scheme = "wss"
		}
		url = scheme + "://" + o.ws + "/mqtt"
	} else {
		l := listeners.NewTCP(listeners.Config{ID: "tcp", Address: "127.0.0.1:0", TLSConfig: o.tls})
		if err := srv.AddListener(l); err != nil {
			t.Fatal(err)
		}
		scheme := "tcp"
		if o.tls != nil {
			scheme = "tls"
		}
		url = scheme + "://" + l.Address()
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	return &mochiCloud{srv: srv, hook: hook, url: url}
}

func (c *mochiCloud) register(id secrets.DeviceID, secret secrets.Secret) {
	c.hook.set(func(h *cloudHook) { h.devices[id] = secret })
}

// clientCount returns the number of device connections mochi holds for id.
func (c *mochiCloud) clientCount(id secrets.DeviceID) int {
	n := 0
	for _, cl := range c.srv.Clients.GetAll() {
		if got, ok := deviceOf(cl); ok && got == id && !cl.Closed() {
			n++
		}
	}
	return n
}

// kickClient closes the connection of the client with MQTT client id cid.
func (c *mochiCloud) kickClient(t testing.TB, cid string) {
	t.Helper()
	cl, ok := c.srv.Clients.Get(cid)
	if !ok {
		t.Fatalf("kick: no client %q", cid)
	}
	cl.Stop(errors.New("kicked by the test"))
}
