package cloudsim

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/edgegw/edgegw/secrets"
)

// Transport kinds, as accepted by Addr and recorded in Record.Transport.
const (
	TCP = "tcp" // MQTT over plain TCP
	TLS = "tls" // MQTT over TLS
	WS  = "ws"  // MQTT over WebSocket
	WSS = "wss" // MQTT over WebSocket over TLS
)

// DefaultAliyunDeviceRate is Alibaba's documented upstream limit per
// device, in messages per second (docs/protocol.md §8).
const DefaultAliyunDeviceRate = 30

// RateUnlimited, as Config.DeviceRate, turns the per-device rate limit off.
const RateUnlimited = -1

// Keepalive ranges the clouds accept, in seconds (docs/protocol.md §5.1).
const (
	AliyunKeepaliveMin = 30
	AliyunKeepaliveMax = 1200
	EnOSKeepaliveMin   = 60
	EnOSKeepaliveMax   = 300
)

// Defaults for the optional Config fields.
const (
	DefaultConnectTimeout = 10 * time.Second
	DefaultRegisterLinger = 200 * time.Millisecond
	DefaultMaxRecords     = 100_000
)

// Errors returned by the Sim's API.
var (
	ErrUnknownDevice = errors.New("unknown device")
	ErrDeviceOffline = errors.New("device is not connected")
	ErrNotSubscribed = errors.New("device has not subscribed to the topic")
	ErrNoExtRRPC     = errors.New("session has no ext bit 0 in its clientId (RRPC on custom topics)")
	ErrRRPCTimeout   = errors.New("no RRPC reply in time")
	ErrClosed        = errors.New("simulator is closed")
	ErrNotStarted    = errors.New("simulator is not started")
)

// Config configures a Sim. Dialect and at least one listen address are
// required; everything else has a default.
type Config struct {
	// Dialect is the cloud to simulate: secrets.Aliyun or secrets.EnOS.
	Dialect secrets.Dialect

	// Listen addresses, e.g. "127.0.0.1:0"; an empty one disables that
	// transport. TLSListen and WSSListen need TLSConfig.
	Listen    string // MQTT over TCP
	TLSListen string // MQTT over TLS
	WSListen  string // MQTT over WebSocket (any path)
	WSSListen string // MQTT over WebSocket over TLS (any path)
	// TLSConfig holds the server certificate. For mutual TLS set
	// ClientAuth and ClientCAs (LoadTLSConfig does).
	TLSConfig *tls.Config

	// Devices and Products registered at start (more with AddDevice and
	// AddProduct).
	Devices  []Device
	Products []Product

	// ObserverUser and ObserverPassword, when set, define the observer
	// account: it may subscribe to any filter and publish to any topic, and
	// is not a device (its traffic is not recorded). The user name must not
	// contain '&', so it can never be taken for a device's "dn&pk".
	ObserverUser     string
	ObserverPassword secrets.Secret

	// DeviceRate is the per-device upstream limit in messages per second:
	// 0 means the dialect's default (Alibaba 30, EnOS unlimited: EnOS
	// documents no message count), RateUnlimited (or any negative value)
	// turns it off. The bucket holds one second's worth of messages.
	DeviceRate float64

	// AnyDialectTopics lets devices use the topic forms of either cloud.
	// By default, as on the real clouds, a device may use only the forms
	// its own cloud gives (secrets.TopicForm rows for Dialect: an EnOS
	// device has only /sys/{pk}/{dk}/… and /ext/session/{pk}/{dk}/…).
	AnyDialectTopics bool

	// MaxSkew, when positive, refuses signed timestamps further than this
	// from Now. The clouds do not check freshness (the official SDKs sign
	// a constant 2050 timestamp), so the default is 0.
	MaxSkew time.Duration

	// ConnectTimeout bounds the time from TCP accept to a complete
	// CONNECT (TLS and WebSocket handshakes included).
	ConnectTimeout time.Duration
	// RegisterLinger is how long an Alibaba dynamic-registration connection
	// stays open after the deviceSecret was published to it.
	RegisterLinger time.Duration
	// MaxRecords bounds the recorder; when it is reached the oldest half
	// is discarded (Stats.RecordsDiscarded counts them).
	MaxRecords int

	// Now is the clock for record timestamps, rate buckets and timestamp
	// skew checks; default time.Now.
	Now func() time.Time
	// Logger receives the simulator's and mochi's logs; default: discard.
	Logger *slog.Logger
}

// DeviceRef names a device.
type DeviceRef struct {
	ProductKey string
	DeviceName string // EnOS: deviceKey
}

// String returns "productKey/deviceName".
func (r DeviceRef) String() string { return r.ProductKey + "/" + r.DeviceName }

// ID returns the device's identity as edgegw's one identity type.
func (r DeviceRef) ID() secrets.DeviceID { return secrets.DeviceID(r) }

// DeviceStatus describes a registered device without its secret.
type DeviceStatus struct {
	ProductKey string `json:"productKey"`
	DeviceName string `json:"deviceName"`
	HasSecret  bool   `json:"hasSecret"`
	Activated  bool   `json:"activated"`
	Connected  bool   `json:"connected"`
	Issued     int    `json:"issued"` // secrets issued by activation/registration
}

type device struct {
	secret    secrets.Secret
	activated bool
	issued    []secrets.Secret
	bucket    *bucket
	assetID   string
}

// Sim is a running cloud simulator. Its methods are safe for concurrent
// use.
type Sim struct {
	cfg     Config
	dialect secrets.Dialect
	topics  secrets.Dialect // the catalogue's cloud for topic checks; "" = either
	now     func() time.Time
	log     *slog.Logger
	srv     *mqtt.Server
	rate    float64 // effective per-device rate; 0 = off

	lifeMu  sync.Mutex // serializes Start, Down, Up and Close
	started bool
	lns     []*listener

	mu        sync.Mutex
	down      bool // listeners closed (Down, or not yet started)
	closed    bool
	devices   map[DeviceRef]*device
	products  map[string]secrets.Secret
	active    map[DeviceRef]*session // the current session of each connected device
	conns     map[*conn]struct{}
	records   []Record
	stalled   []Record
	seq       uint64
	stats     Stats
	changed   chan struct{} // closed and replaced on every change
	refuse    byte
	stall     bool
	delay     time.Duration
	regSeq    uint64
	messageID uint64
	pending   map[string]*pendingRRPC // RRPC calls waiting, by reply topic

	connWG    sync.WaitGroup // serveConn goroutines
	acceptWG  sync.WaitGroup // accept loops and WebSocket servers
	done      chan struct{}  // closed by Close
	closeOnce sync.Once
	closeErr  error
}

// New checks cfg and builds a Sim. Call Start (or Run) to listen.
func New(cfg Config) (*Sim, error) {
	if err := secrets.ValidateDialect(cfg.Dialect); err != nil {
		return nil, fmt.Errorf("new cloud simulator: %w", err)
	}
	if cfg.Listen == "" && cfg.TLSListen == "" && cfg.WSListen == "" && cfg.WSSListen == "" {
		return nil, errors.New("new cloud simulator: no listen address")
	}
	if (cfg.TLSListen != "" || cfg.WSSListen != "") && cfg.TLSConfig == nil {
		return nil, errors.New("new cloud simulator: TLS or WSS listener without a TLS configuration")
	}
	if cfg.TLSConfig != nil && len(cfg.TLSConfig.Certificates) == 0 && cfg.TLSConfig.GetCertificate == nil && cfg.TLSConfig.GetConfigForClient == nil {
		return nil, errors.New("new cloud simulator: TLS configuration has no server certificate")
	}
	if (cfg.ObserverUser == "") != cfg.ObserverPassword.IsZero() {
		return nil, errors.New("new cloud simulator: observer needs both a user name and a password")
	}
	if strings.Contains(cfg.ObserverUser, "&") {
		return nil, fmt.Errorf("new cloud simulator: observer user name %q contains '&' (reserved for device user names)", cfg.ObserverUser)
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = DefaultConnectTimeout
	}
	if cfg.RegisterLinger <= 0 {
		cfg.RegisterLinger = DefaultRegisterLinger
	}
	if cfg.MaxRecords <= 0 {
		cfg.MaxRecords = DefaultMaxRecords
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Sim{
		cfg:      cfg,
		dialect:  cfg.Dialect,
		now:      cfg.Now,
		log:      cfg.Logger,
		down:     true,
		devices:  make(map[DeviceRef]*device),
		products: make(map[string]secrets.Secret),
		active:   make(map[DeviceRef]*session),
		pending:  make(map[string]*pendingRRPC),
		conns:    make(map[*conn]struct{}),
		changed:  make(chan struct{}),
		done:     make(chan struct{}),
	}
	s.stats.ConnectsRefused = make(map[byte]int64)
	if !cfg.AnyDialectTopics {
		s.topics = cfg.Dialect
	}
	switch {
	case cfg.DeviceRate > 0:
		s.rate = cfg.DeviceRate
	case cfg.DeviceRate == 0 && cfg.Dialect == secrets.Aliyun:
		s.rate = DefaultAliyunDeviceRate
	}
	for _, p := range cfg.Products {
		if err := s.AddProduct(p.ProductKey, p.Secret); err != nil {
			return nil, fmt.Errorf("new cloud simulator: %w", err)
		}
	}
	for _, d := range cfg.Devices {
		if err := s.AddDevice(d.ProductKey, d.DeviceName, d.Secret); err != nil {
			return nil, fmt.Errorf("new cloud simulator: %w", err)
		}
	}

	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumClientWritesPending = 256
	caps.MaximumInflight = 1024
	caps.MaximumSessionExpiryInterval = 86400
	// Alibaba: 256 KB (unconfirmed, docs/protocol.md §8), EnOS: 512 KB.
	caps.MaximumPacketSize = 256 << 10
	if cfg.Dialect == secrets.EnOS {
		caps.MaximumPacketSize = 512 << 10
	}
	// MaximumQos and RetainAvailable stay at mochi's defaults on purpose:
	// lowering them makes mochi refuse wills itself with v5-only CONNACK
	// codes (0x9A, 0x9B) that a 3.1.1 client would receive raw. The hook
	// enforces QoS ≤ 1 and drops the retain flag instead.
	s.srv = mqtt.New(&mqtt.Options{
		Capabilities:           caps,
		InlineClient:           true,
		Logger:                 cfg.Logger.With("component", "mochi"),
		SysTopicResendInterval: 60,
	})
	if err := s.srv.AddHook(&hook{s: s}, nil); err != nil {
		return nil, fmt.Errorf("new cloud simulator: add hook: %w", err)
	}
	return s, nil
}

// Dialect returns the simulated cloud's dialect.
func (s *Sim) Dialect() secrets.Dialect { return s.dialect }

// Start binds the configured listeners and begins serving; it returns once
// they are bound. ctx bounds only the binding. Stop the Sim with Close.
func (s *Sim) Start(ctx context.Context) error {
	s.lifeMu.Lock()
	defer s.lifeMu.Unlock()
	if s.isClosed() {
		return fmt.Errorf("start cloud simulator: %w", ErrClosed)
	}
	if s.started {
		return errors.New("start cloud simulator: already started")
	}
	if err := s.srv.Serve(); err != nil {
		return fmt.Errorf("start cloud simulator: %w", err)
	}
	s.started = true
	specs := []struct{ kind, addr string }{
		{TCP, s.cfg.Listen}, {TLS, s.cfg.TLSListen}, {WS, s.cfg.WSListen}, {WSS, s.cfg.WSSListen},
	}
	for _, sp := range specs {
		if sp.addr == "" {
			continue
		}
		s.lns = append(s.lns, &listener{kind: sp.kind, addr: sp.addr})
	}
	if err := s.bindAll(ctx); err != nil {
		return fmt.Errorf("start cloud simulator: %w", err)
	}
	s.log.Info("cloud simulator started", "dialect", s.dialect, "listeners", s.addrList())
	return nil
}

// Run starts the Sim and serves until ctx is done, then closes it.
// Cancellation is not an error.
func (s *Sim) Run(ctx context.Context) error {
	if err := s.Start(ctx); err != nil {
		return err
	}
	<-ctx.Done()
	return s.Close()
}

// Close closes every listener and connection and stops the broker. It is
// idempotent.
func (s *Sim) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.notifyLocked()
		s.mu.Unlock()
		close(s.done)
		s.lifeMu.Lock()
		defer s.lifeMu.Unlock()
		s.goDown()
		if err := s.srv.Close(); err != nil {
			s.closeErr = fmt.Errorf("close cloud simulator: %w", err)
		}
		s.log.Info("cloud simulator closed")
	})
	return s.closeErr
}

func (s *Sim) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// Addr returns the bound host:port of a transport (TCP, TLS, WS or WSS),
// or "" when that transport is not configured or the Sim not started. The
// address stays the same across Down and Up.
func (s *Sim) Addr(kind string) string {
	s.lifeMu.Lock()
	defer s.lifeMu.Unlock()
	for _, l := range s.lns {
		if l.kind == kind {
			return l.addr
		}
	}
	return ""
}

func (s *Sim) addrList() string {
	parts := make([]string, 0, len(s.lns))
	for _, l := range s.lns {
		parts = append(parts, l.kind+"="+l.addr)
	}
	return strings.Join(parts, " ")
}

// ---- device management ----

// AddDevice registers a device, or replaces the secret of a registered
// one. A zero secret means registered but not activated. A device given a
// secret counts as activated. The device's issued-secret history is kept.
func (s *Sim) AddDevice(productKey, deviceName string, secret secrets.Secret) error {
	if err := secrets.ValidateProductKey(s.dialect, productKey); err != nil {
		return fmt.Errorf("add device: %w", err)
	}
	if err := secrets.ValidateDeviceName(s.dialect, deviceName); err != nil {
		return fmt.Errorf("add device: %w", err)
	}
	if !secret.IsZero() {
		if err := checkSecretValue("deviceSecret", secret.Reveal()); err != nil {
			return fmt.Errorf("add device %s/%s: %w", productKey, deviceName, err)
		}
	}
	ref := DeviceRef{productKey, deviceName}
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.devices[ref]
	if d == nil {
		d = &device{assetID: randomHex(8)}
		s.devices[ref] = d
	}
	d.secret = secret
	d.activated = !secret.IsZero()
	d.bucket = nil
	s.notifyLocked()
	return nil
}

// AddProduct registers a product's productSecret (which enables dynamic
// activation / registration for its devices), or replaces it.
func (s *Sim) AddProduct(productKey string, secret secrets.Secret) error {
	if err := secrets.ValidateProductKey(s.dialect, productKey); err != nil {
		return fmt.Errorf("add product: %w", err)
	}
	if err := checkSecretValue("productSecret", secret.Reveal()); err != nil {
		return fmt.Errorf("add product %s: %w", productKey, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.products[productKey] = secret
	s.notifyLocked()
	return nil
}

// LoadDevices registers (or updates) every device of a device list in the
// consoles' batch-export form (see ParseDevicesCSV); name is used in error
// messages. Nothing is registered when the list has an error.
func (s *Sim) LoadDevices(r io.Reader, name string) (int, error) {
	devs, err := ParseDevicesCSV(r, name, s.dialect)
	if err != nil {
		return 0, fmt.Errorf("load devices: %w", err)
	}
	for _, d := range devs {
		if err := s.AddDevice(d.ProductKey, d.DeviceName, d.Secret); err != nil {
			return 0, fmt.Errorf("load devices: %w", err)
		}
	}
	return len(devs), nil
}

// LoadProducts registers (or updates) every product of a product list
// (see ParseProductsCSV). Nothing is registered when the list has an
// error.
func (s *Sim) LoadProducts(r io.Reader, name string) (int, error) {
	ps, err := ParseProductsCSV(r, name, s.dialect)
	if err != nil {
		return 0, fmt.Errorf("load products: %w", err)
	}
	for _, p := range ps {
		if err := s.AddProduct(p.ProductKey, p.Secret); err != nil {
			return 0, fmt.Errorf("load products: %w", err)
		}
	}
	return len(ps), nil
}

// RemoveDevice unregisters a device and closes its session, if any.
func (s *Sim) RemoveDevice(productKey, deviceName string) error {
	ref := DeviceRef{productKey, deviceName}
	s.mu.Lock()
	if _, ok := s.devices[ref]; !ok {
		s.mu.Unlock()
		return fmt.Errorf("remove device %s: %w", ref, ErrUnknownDevice)
	}
	delete(s.devices, ref)
	var kick []*conn
	for c := range s.conns {
		if sess := c.sess.Load(); sess != nil && sess.kind != kindObserver && sess.dev == ref {
			kick = append(kick, c)
		}
	}
	s.notifyLocked()
	s.mu.Unlock()
	for _, c := range kick {
		_ = c.Close()
	}
	return nil
}

// Issued returns the deviceSecrets the simulator issued to a device by
// EnOS dynamic activation or Alibaba dynamic registration, oldest first.
// The last one is the device's current secret.
func (s *Sim) Issued(productKey, deviceName string) []secrets.Secret {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.devices[DeviceRef{productKey, deviceName}]
	if d == nil {
		return nil
	}
	return append([]secrets.Secret(nil), d.issued...)
}

// Devices lists the registered devices, sorted, without secrets.
func (s *Sim) Devices() []DeviceStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]DeviceStatus, 0, len(s.devices))
	for ref, d := range s.devices {
		_, connected := s.active[ref]
		out = append(out, DeviceStatus{
			ProductKey: ref.ProductKey, DeviceName: ref.DeviceName,
			HasSecret: !d.secret.IsZero(), Activated: d.activated,
			Connected: connected, Issued: len(d.issued),
		})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].ProductKey != out[j].ProductKey {
			return out[i].ProductKey < out[j].ProductKey
		}
		return out[i].DeviceName < out[j].DeviceName
	})
	return out
}

// Connected reports whether the device has an established session.
func (s *Sim) Connected(productKey, deviceName string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.active[DeviceRef{productKey, deviceName}]
	return ok
}

// Subscriptions returns the filters the device's established session is
// subscribed to (its own SUBSCRIBEs and the server-side ones), sorted; nil
// when the device has no session.
func (s *Sim) Subscriptions(productKey, deviceName string) []string {
	s.mu.Lock()
	sess := s.active[DeviceRef{productKey, deviceName}]
	s.mu.Unlock()
	if sess == nil || sess.cl == nil {
		return nil
	}
	var out []string
	for f := range sess.cl.State.Subscriptions.GetAll() {
		out = append(out, f)
	}
	slices.Sort(out)
	return out
}

// SessionClientID returns the full MQTT clientId (with its |…| block) of
// the device's current session, as the device presented it; ok is false
// when the device is not connected.
func (s *Sim) SessionClientID(productKey, deviceName string) (clientID string, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sess := s.active[DeviceRef{ProductKey: productKey, DeviceName: deviceName}]
	if sess == nil {
		return "", false
	}
	return sess.clientID, true
}

// ---- downlink ----

// Publish sends a message to a device as the cloud does: on one of the
// device's own downlink topics on this cloud, at QoS 0 or 1, delivered
// only if the device is connected and receives the topic: by its own
// SUBSCRIBE, or server-side (every EnOS session gets its downstream
// command topics, an Alibaba session with _ss=1 in its clientId its system
// downlink topics). RRPC on custom topics reaches only a session with ext
// bit 0 (ErrNoExtRRPC). Observers subscribed to the topic see it too.
func (s *Sim) Publish(productKey, deviceName, topic string, payload []byte, qos byte) error {
	ref := DeviceRef{ProductKey: productKey, DeviceName: deviceName}
	if qos > 1 {
		return fmt.Errorf("publish to %s on %q: QoS %d not supported (0 or 1)", ref, topic, qos)
	}
	if strings.ContainsAny(topic, "+#") || !ref.ID().MayReceive(s.topics, topic) {
		return fmt.Errorf("publish to %s on %q: not one of the device's downlink topics on %s", ref, topic, s.dialect)
	}
	s.mu.Lock()
	sess := s.active[ref]
	s.mu.Unlock()
	if sess == nil {
		return fmt.Errorf("publish to %s on %q: %w", ref, topic, ErrDeviceOffline)
	}
	if !s.mayReceive(sess, topic) {
		return fmt.Errorf("publish to %s on %q: %w", ref, topic, ErrNoExtRRPC)
	}
	if !s.subscribed(sess.mochiID, topic) {
		return fmt.Errorf("publish to %s on %q: %w", ref, topic, ErrNotSubscribed)
	}
	if err := s.srv.Publish(topic, payload, false, qos); err != nil {
		return fmt.Errorf("publish to %s on %q: %w", ref, topic, err)
	}
	return nil
}

// subscribed reports whether mochi client id has a subscription matching
// topic.
func (s *Sim) subscribed(mochiID, topic string) bool {
	_, ok := s.srv.Topics.Subscribers(topic).Subscriptions[mochiID]
	return ok
}

// ---- fault knobs ----

// Refuse makes every device CONNECT fail with the given 3.1.1 CONNACK
// return code (1-5) until Accept. Observers can still connect.
func (s *Sim) Refuse(code byte) error {
	if code < 1 || code > 5 {
		return fmt.Errorf("refuse connects: return code %d is not a 3.1.1 refusal (1-5)", code)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refuse = code
	s.notifyLocked()
	return nil
}

// Accept undoes Refuse.
func (s *Sim) Accept() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refuse = 0
	s.notifyLocked()
}

// Drop closes every connection except established observers', now, and
// returns how many it closed. The listeners stay open.
func (s *Sim) Drop() int {
	s.mu.Lock()
	var victims []*conn
	for c := range s.conns {
		if sess := c.sess.Load(); sess != nil && sess.kind == kindObserver {
			continue
		}
		victims = append(victims, c)
	}
	s.mu.Unlock()
	for _, c := range victims {
		_ = c.Close()
	}
	s.log.Info("dropped connections (fault knob)", "count", len(victims))
	return len(victims)
}

// Stall, while on, accepts device publishes without ever acknowledging or
// delivering them: the connection stays up and PINGREQs are answered, but
// no PUBACK is sent. Such messages are counted in Stats.Stalled and kept
// in StalledMessages, not in Messages.
func (s *Sim) Stall(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stall = on
	s.notifyLocked()
}

// Delay holds every device publish for d before acknowledging it (0
// turns the delay off). Each connection is delayed independently.
func (s *Sim) Delay(d time.Duration) {
	if d < 0 {
		d = 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.delay = d
	s.notifyLocked()
}

// Down closes the listeners and every connection: new connections fail at
// the TCP level until Up.
func (s *Sim) Down() error {
	s.lifeMu.Lock()
	defer s.lifeMu.Unlock()
	if !s.started {
		return fmt.Errorf("take cloud simulator down: %w", ErrNotStarted)
	}
	if s.isClosed() {
		return fmt.Errorf("take cloud simulator down: %w", ErrClosed)
	}
	s.goDown()
	s.log.Info("cloud simulator down (fault knob)")
	return nil
}

// Up listens again, on the same addresses as before Down.
func (s *Sim) Up(ctx context.Context) error {
	s.lifeMu.Lock()
	defer s.lifeMu.Unlock()
	if !s.started {
		return fmt.Errorf("bring cloud simulator up: %w", ErrNotStarted)
	}
	if s.isClosed() {
		return fmt.Errorf("bring cloud simulator up: %w", ErrClosed)
	}
	s.mu.Lock()
	isDown := s.down
	s.mu.Unlock()
	if !isDown {
		return nil
	}
	if err := s.bindAll(ctx); err != nil {
		return fmt.Errorf("bring cloud simulator up: %w", err)
	}
	s.log.Info("cloud simulator up (fault knob)", "listeners", s.addrList())
	return nil
}

// Knobs is the state of the fault knobs.
type Knobs struct {
	Refuse  byte          `json:"refuse"` // 0 = accepting
	Stall   bool          `json:"stall"`
	Delay   time.Duration `json:"-"`
	DelayMS int64         `json:"delayMs"` // Delay in milliseconds, for JSON
	Down    bool          `json:"down"`
	Started bool          `json:"started"`
}

// Knobs returns the current fault knob settings.
func (s *Sim) Knobs() Knobs {
	s.lifeMu.Lock()
	started := s.started
	s.lifeMu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	return Knobs{Refuse: s.refuse, Stall: s.stall, Delay: s.delay, DelayMS: s.delay.Milliseconds(), Down: s.down, Started: started}
}

// notifyLocked wakes every WaitFor/WaitStats caller. s.mu must be held.
func (s *Sim) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// randomHex returns n random bytes, hex-encoded.
func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go ≥ 1.24)
	return hex.EncodeToString(b)
}

// newDeviceSecret returns a fresh 32-character deviceSecret, the shape
// both clouds use.
func newDeviceSecret() secrets.Secret { return secrets.NewSecret(randomHex(16)) }
