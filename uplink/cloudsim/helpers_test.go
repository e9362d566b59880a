package cloudsim_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink/cloudsim"
)

// Fixture identities. Alibaba device names need 4-32 characters.
const (
	aliPK      = "a1B2c3D4e5F"
	aliDN      = "pump0001"
	aliDN2     = "pump0002"
	aliNewDN   = "newdev01" // registered, no secret
	aliSecret  = "0123456789abcdef0123456789abcdef"
	aliSecret2 = "fedcba9876543210fedcba9876543210"
	aliPSecret = "productSecretAli0001"

	enosPK      = "enosPK01"
	enosDK      = "meter01"
	enosNewDK   = "meter02" // registered, no secret
	enosSecret  = "enosDeviceSecret0001"
	enosPSecret = "enosProductSecret0001"

	observerUser = "watcher"
	observerPass = "watch-pass"

	fixedTS = "2524608000000"
)

func aliyunDevices() []cloudsim.Device {
	return []cloudsim.Device{
		{ProductKey: aliPK, DeviceName: aliDN, Secret: secrets.NewSecret(aliSecret)},
		{ProductKey: aliPK, DeviceName: aliDN2, Secret: secrets.NewSecret(aliSecret2)},
		{ProductKey: aliPK, DeviceName: aliNewDN},
	}
}

func enosDevices() []cloudsim.Device {
	return []cloudsim.Device{
		{ProductKey: enosPK, DeviceName: enosDK, Secret: secrets.NewSecret(enosSecret)},
		{ProductKey: enosPK, DeviceName: enosNewDK},
	}
}

// fakeClock is an injectable clock that moves only when told to.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// startSim starts a simulator on loopback with every transport the config
// does not set explicitly (TLS ones only when the PKI is given) and closes
// it at the end of the test. Logs go to the returned buffer.
func startSim(t *testing.T, cfg cloudsim.Config) (*cloudsim.Sim, *testutil.SyncBuffer) {
	t.Helper()
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	if cfg.WSListen == "" {
		cfg.WSListen = "127.0.0.1:0"
	}
	var pki *testutil.PKI
	if cfg.TLSConfig == nil {
		pki = testutil.NewPKI(t)
		cfg.TLSConfig = pki.ServerTLS(tls.NoClientCert)
	}
	if cfg.TLSListen == "" {
		cfg.TLSListen = "127.0.0.1:0"
	}
	if cfg.WSSListen == "" {
		cfg.WSSListen = "127.0.0.1:0"
	}
	if cfg.ObserverUser == "" {
		cfg.ObserverUser, cfg.ObserverPassword = observerUser, secrets.NewSecret(observerPass)
	}
	logs := &testutil.SyncBuffer{}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	sim, err := cloudsim.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := sim.Start(t.Context()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := sim.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	if pki != nil {
		simPKIs.Store(sim, pki)
		t.Cleanup(func() { simPKIs.Delete(sim) })
	}
	return sim, logs
}

// simPKIs maps a simulator started by startSim to the PKI of its server
// certificate.
var simPKIs sync.Map

// pkiOf returns the PKI whose CA signed sim's server certificate.
func pkiOf(t testing.TB, sim *cloudsim.Sim) *testutil.PKI {
	t.Helper()
	p, ok := simPKIs.Load(sim)
	if !ok {
		t.Fatal("simulator has no test PKI (started with its own TLSConfig?)")
	}
	return p.(*testutil.PKI)
}

func aliyunSim(t *testing.T, mods ...func(*cloudsim.Config)) (*cloudsim.Sim, *testutil.SyncBuffer) {
	cfg := cloudsim.Config{
		Dialect:  secrets.Aliyun,
		Devices:  aliyunDevices(),
		Products: []cloudsim.Product{{ProductKey: aliPK, Secret: secrets.NewSecret(aliPSecret)}},
	}
	for _, m := range mods {
		m(&cfg)
	}
	return startSim(t, cfg)
}

func enosSim(t *testing.T, mods ...func(*cloudsim.Config)) (*cloudsim.Sim, *testutil.SyncBuffer) {
	cfg := cloudsim.Config{
		Dialect:  secrets.EnOS,
		Devices:  enosDevices(),
		Products: []cloudsim.Product{{ProductKey: enosPK, Secret: secrets.NewSecret(enosPSecret)}},
	}
	for _, m := range mods {
		m(&cfg)
	}
	return startSim(t, cfg)
}

// sign returns CONNECT credentials; mode 0 means 2 on encrypted
// transports for Alibaba and 2 for EnOS.
func sign(t testing.TB, d secrets.Dialect, pk, dn, secret string, mode int, method secrets.SignMethod) secrets.Credentials {
	t.Helper()
	if mode == 0 {
		mode = 2
	}
	cr, err := secrets.Sign(secrets.SignParams{
		Dialect: d, ProductKey: pk, DeviceName: dn, ClientID: pk + "." + dn,
		Timestamp: fixedTS, SignMethod: method, SecureMode: mode,
	}, secrets.NewSecret(secret))
	if err != nil {
		t.Fatalf("sign: %v", err)
	}
	return cr
}

func keepaliveFor(d secrets.Dialect) time.Duration {
	if d == secrets.EnOS {
		return 60 * time.Second
	}
	return 300 * time.Second
}

func urlFor(sim *cloudsim.Sim, kind string) string {
	scheme := map[string]string{cloudsim.TCP: "tcp", cloudsim.TLS: "ssl", cloudsim.WS: "ws", cloudsim.WSS: "wss"}[kind]
	u := scheme + "://" + sim.Addr(kind)
	if kind == cloudsim.WS || kind == cloudsim.WSS {
		u += "/mqtt"
	}
	return u
}

// client is a paho client with channels for what it receives.
type client struct {
	paho.Client
	msgs chan paho.Message
	lost chan error
}

type clientOpt func(*paho.ClientOptions)

func withTLS(c *tls.Config) clientOpt {
	return func(o *paho.ClientOptions) { o.SetTLSConfig(c) }
}

func withKeepAlive(d time.Duration) clientOpt {
	return func(o *paho.ClientOptions) { o.SetKeepAlive(d) }
}

// connect dials url with paho (MQTT 3.1.1, clean session, no automatic
// reconnect) and returns the client and the CONNACK return code. On
// success the client is disconnected at the end of the test.
func connect(t *testing.T, url, clientID, user, pass string, opts ...clientOpt) (*client, byte, error) {
	t.Helper()
	c := &client{msgs: make(chan paho.Message, 256), lost: make(chan error, 1)}
	o := paho.NewClientOptions().AddBroker(url).SetClientID(clientID).SetUsername(user).SetPassword(pass).
		SetProtocolVersion(4).SetCleanSession(true).SetAutoReconnect(false).SetConnectRetry(false).
		SetOrderMatters(false).SetKeepAlive(60 * time.Second).SetConnectTimeout(5 * time.Second).
		SetWriteTimeout(5 * time.Second).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { c.msgs <- m }).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			select {
			case c.lost <- err:
			default:
			}
		})
	for _, f := range opts {
		f(o)
	}
	c.Client = paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		c.Disconnect(0)
		t.Fatalf("connect to %s: no CONNACK within 10 s", url)
	}
	code := tok.(*paho.ConnectToken).ReturnCode()
	if err := tok.Error(); err != nil {
		return nil, code, err
	}
	t.Cleanup(func() { c.Disconnect(20) })
	return c, code, nil
}

// mustConnect connects with signed credentials and fails the test unless
// the CONNACK is 0.
func mustConnect(t *testing.T, url string, cr secrets.Credentials, opts ...clientOpt) *client {
	t.Helper()
	c, code, err := connect(t, url, cr.ClientID, cr.Username, cr.Password.Reveal(), opts...)
	if err != nil {
		t.Fatalf("connect %s as %s: return code %d: %v", url, cr.Username, code, err)
	}
	return c
}

func mustObserve(t *testing.T, sim *cloudsim.Sim, filter string) *client {
	t.Helper()
	c, code, err := connect(t, urlFor(sim, cloudsim.TCP), "observer-1", observerUser, observerPass, withKeepAlive(0))
	if err != nil {
		t.Fatalf("observer connect: code %d: %v", code, err)
	}
	mustSubscribe(t, c, filter, 1)
	return c
}

func mustSubscribe(t *testing.T, c *client, filter string, qos byte) byte {
	t.Helper()
	tok := c.Subscribe(filter, qos, nil)
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe %q: %v", filter, tok.Error())
	}
	return tok.(*paho.SubscribeToken).Result()[filter]
}

func mustPublish(t *testing.T, c *client, topic string, qos byte, payload string) {
	t.Helper()
	tok := c.Publish(topic, qos, false, payload)
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publish %q: %v", topic, tok.Error())
	}
}

// nextMsg waits for the client's next message.
func nextMsg(t *testing.T, c *client) paho.Message {
	t.Helper()
	select {
	case m := <-c.msgs:
		return m
	case <-time.After(5 * time.Second):
		t.Fatal("no message within 5 s")
		return nil
	}
}

// waitLost waits until the client's connection is lost.
func waitLost(t *testing.T, c *client) error {
	t.Helper()
	select {
	case err := <-c.lost:
		return err
	case <-time.After(5 * time.Second):
		t.Fatal("connection not lost within 5 s")
		return nil
	}
}

func waitCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func waitStats(t *testing.T, sim *cloudsim.Sim, what string, cond func(cloudsim.Stats) bool) {
	t.Helper()
	if err := sim.WaitStats(waitCtx(t), cond); err != nil {
		t.Fatalf("wait for %s: %v (stats %+v)", what, err, sim.Stats())
	}
}

func waitRecords(t *testing.T, sim *cloudsim.Sim, n int) []cloudsim.Record {
	t.Helper()
	if err := sim.WaitFor(waitCtx(t), func(r []cloudsim.Record) bool { return len(r) >= n }); err != nil {
		t.Fatalf("wait for %d records: %v (have %d)", n, err, len(sim.Messages()))
	}
	return sim.Messages()
}

// ---- raw MQTT ----

type rawConnect struct {
	protoName        string // "MQTT" or "MQIsdp"
	level            byte   // 4, 3 or 5
	clientID         string
	user, pass       *string
	keepalive        uint16
	willTopic        string // non-empty: set a will
	cleanSessionFlag bool
}

func ptr(s string) *string { return &s }

func mqttString(b *bytes.Buffer, s string) {
	b.WriteByte(byte(len(s) >> 8))
	b.WriteByte(byte(len(s)))
	b.WriteString(s)
}

func remainingLength(n int) []byte {
	var out []byte
	for {
		d := byte(n % 128)
		n /= 128
		if n > 0 {
			d |= 0x80
		}
		out = append(out, d)
		if n == 0 {
			return out
		}
	}
}

func (rc rawConnect) bytes() []byte {
	var vh bytes.Buffer
	mqttString(&vh, rc.protoName)
	vh.WriteByte(rc.level)
	var flags byte
	if rc.cleanSessionFlag {
		flags |= 0x02
	}
	if rc.willTopic != "" {
		flags |= 0x04
	}
	if rc.user != nil {
		flags |= 0x80
	}
	if rc.pass != nil {
		flags |= 0x40
	}
	vh.WriteByte(flags)
	vh.WriteByte(byte(rc.keepalive >> 8))
	vh.WriteByte(byte(rc.keepalive))
	if rc.level == 5 {
		vh.WriteByte(0) // no properties
	}
	mqttString(&vh, rc.clientID)
	if rc.willTopic != "" {
		if rc.level == 5 {
			vh.WriteByte(0)
		}
		mqttString(&vh, rc.willTopic)
		mqttString(&vh, "bye")
	}
	if rc.user != nil {
		mqttString(&vh, *rc.user)
	}
	if rc.pass != nil {
		mqttString(&vh, *rc.pass)
	}
	out := []byte{0x10}
	out = append(out, remainingLength(vh.Len())...)
	return append(out, vh.Bytes()...)
}

// rawDial connects over TCP (or TLS when cfg is given) and sends CONNECT.
func rawDial(t *testing.T, addr string, cfg *tls.Config, rc rawConnect) net.Conn {
	t.Helper()
	var nc net.Conn
	var err error
	d := &net.Dialer{Timeout: 5 * time.Second}
	if cfg != nil {
		nc, err = tls.DialWithDialer(d, "tcp", addr, cfg)
	} else {
		nc, err = d.Dial("tcp", addr)
	}
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { nc.Close() })
	_ = nc.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := nc.Write(rc.bytes()); err != nil {
		t.Fatalf("write CONNECT: %v", err)
	}
	return nc
}

// readConnack reads a CONNACK and returns its return (reason) code.
func readConnack(t *testing.T, nc net.Conn) byte {
	t.Helper()
	hdr := make([]byte, 2)
	if _, err := io.ReadFull(nc, hdr); err != nil {
		t.Fatalf("read CONNACK header: %v", err)
	}
	if hdr[0] != 0x20 {
		t.Fatalf("first packet type %#x, want CONNACK 0x20", hdr[0])
	}
	body := make([]byte, hdr[1])
	if _, err := io.ReadFull(nc, body); err != nil {
		t.Fatalf("read CONNACK body: %v", err)
	}
	if len(body) < 2 {
		t.Fatalf("CONNACK body %x too short", body)
	}
	return body[1]
}

// rawConnackCode sends a raw CONNECT and returns the CONNACK code; for a
// refusal it also checks that the server closes the connection.
func rawConnackCode(t *testing.T, addr string, cfg *tls.Config, rc rawConnect) byte {
	t.Helper()
	nc := rawDial(t, addr, cfg, rc)
	code := readConnack(t, nc)
	if code != 0 {
		if _, err := nc.Read(make([]byte, 1)); !isClosedErr(err) {
			t.Errorf("connection still open after refusal %d (read: %v)", code, err)
		}
	}
	return code
}

func isClosedErr(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || isConnReset(err)
}

func isConnReset(err error) bool {
	var ne *net.OpError
	return errors.As(err, &ne) && !ne.Timeout()
}

// rawPublish writes a PUBLISH (QoS 0 or 1, packet id 1).
func rawPublish(t *testing.T, nc net.Conn, topic string, qos byte, dup bool, payload string) {
	t.Helper()
	var vh bytes.Buffer
	mqttString(&vh, topic)
	if qos > 0 {
		vh.Write([]byte{0, 1})
	}
	vh.WriteString(payload)
	out := []byte{0x30 | qos<<1}
	if dup {
		out[0] |= 0x08
	}
	out = append(out, remainingLength(vh.Len())...)
	out = append(out, vh.Bytes()...)
	if _, err := nc.Write(out); err != nil {
		t.Fatalf("write PUBLISH: %v", err)
	}
}

func contextWithCancel(t *testing.T) (context.Context, context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	t.Cleanup(cancel)
	return ctx, cancel
}
