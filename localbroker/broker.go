package localbroker

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"os"
	"reflect"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/edgegw/edgegw/secrets"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/mochi-mqtt/server/v2/system"
)

// Defaults for zero Config fields.
const (
	DefaultUnixSocketMode  os.FileMode = 0o660
	DefaultMaxPacketSize   uint32      = 256 << 10
	DefaultMaxClients      int64       = 20000
	DefaultWritesPending               = 128
	DefaultMaxInflight     uint16      = 128
	DefaultSessionExpiry               = time.Hour
	DefaultConnectTimeout              = 15 * time.Second
	DefaultWriteTimeout                = 10 * time.Second
	DefaultShutdownTimeout             = 10 * time.Second
)

// Config configures a Broker. Zero fields take the defaults above.
type Config struct {
	// Listeners are URLs: "tcp://127.0.0.1:1883", "tls://:8883",
	// "ws://:8080" (every path) or "ws://:8080/mqtt" (that path only),
	// "wss://:8443", "unix:///run/edgegw/admin.sock". Port 0 picks a free
	// port (see Broker.Addrs). Each URL is also the listener's ID.
	Listeners []string
	// TLS is the server configuration for tls:// and wss:// listeners and
	// the inherited "mqtts" and "wss" ones; required when there are any. Set
	// ClientAuth (VerifyClientCertIfGiven or RequireAndVerifyClientCert;
	// modes that do not verify are refused) and ClientCAs to authenticate by
	// client certificate: the verified chain reaches the Authenticator in
	// ConnectRequest.PeerCertificates.
	TLS *tls.Config
	// Inherited are socket-activated listeners by name (systemd's
	// FileDescriptorName=, see the Inherited constants). A name with at least
	// one listener replaces every listener of its transport in Listeners:
	// with "mqtt" present, no tcp:// URL is bound; "mqtts" likewise replaces
	// tls://, "ws" ws://, "wss" wss://, "unix" unix://. Listeners of other
	// transports are still bound. "mqtts" and "wss" are wrapped with TLS here;
	// "unix" keeps the mode systemd gave it. Unknown names are an error. The
	// broker closes inherited listeners when it stops.
	Inherited map[string][]net.Listener
	// UnixSocketMode is the mode of unix sockets the broker creates
	// (default 0660).
	UnixSocketMode os.FileMode

	MaxPacketSize uint32 // largest packet accepted, checked before allocation (default 256 KiB)
	MaxClients    int64  // connections beyond this are refused with CONNACK 3 (default 20000)
	// WritesPending bounds each client's queue of outbound packets; beyond
	// it messages are dropped and counted (default 128). Only mochi's
	// fan-out uses the queue — admin replies, wills; Deliver, PUBACKs and
	// resent downlinks write directly — and it costs 8 bytes a slot per
	// connection whether used or not.
	WritesPending int
	// MaxInflight bounds, per client, the unacknowledged outbound QoS 1
	// messages and the inbound publishes waiting for the sink or for their
	// PUBACK: beyond it the broker stops reading the client until one
	// completes (default 128).
	MaxInflight uint16
	// SessionExpiry caps how long a persistent session (3.1.1 clean=false,
	// or an MQTT 5 session expiry) outlives its connection (default 1h).
	// Until then it holds its subscriptions and queued downlinks in memory.
	SessionExpiry time.Duration
	// MaxSubscriptions bounds the subscriptions of one device, summed over
	// all its sessions (offline persistent ones included); filters beyond
	// it are refused in the SUBACK (default DefaultMaxSubscriptions).
	MaxSubscriptions int
	// ConnectTimeout bounds the TLS handshake, the WebSocket upgrade and the
	// CONNECT packet of a new connection (default 15s).
	ConnectTimeout time.Duration
	// WriteTimeout bounds a write towards one client made outside its own
	// goroutine (Deliver, DisconnectDevice, shutdown); a client that does not
	// take the data in time is disconnected (default 10s).
	WriteTimeout time.Duration
	// ShutdownTimeout bounds Run's shutdown (default 10s).
	ShutdownTimeout time.Duration

	Logger *slog.Logger // default slog.Default()

	Auth     Authenticator // required
	Sink     Sink          // required
	Observer Observer      // optional
	Admin    AdminHandler  // optional; without it admin requests are acknowledged and dropped
}

// Stats are counters since New.
type Stats struct {
	ClientsConnected    int64  // connections past the CONNACK right now
	Sessions            int    // sessions known to the broker, including offline persistent ones
	Connects            uint64 // accepted connections
	ConnectsRefused     uint64 // refused CONNECTs (authentication, will topic, identifier, client limit)
	MessagesIn          uint64 // device publishes the sink accepted
	SinkErrors          uint64 // device publishes the sink refused
	WithheldDisconnects uint64 // devices disconnected so that they resend a publish left without PUBACK
	PublishesDenied     uint64 // publishes outside the namespace
	SubscriptionsDenied uint64 // subscription filters outside the namespace
	// SubscriptionsOverQuota counts filters refused because the device held
	// Config.MaxSubscriptions subscriptions.
	SubscriptionsOverQuota uint64
	Subscriptions          int64  // subscriptions in the broker's topic index, all sessions
	AdminRequests          uint64 // publishes to AdminRequestTopic by admins
	Delivered              uint64 // Deliver calls that reached or were queued for the device
	DeliverFailed          uint64 // Deliver calls that returned an error
	AcceptErrors           uint64 // temporary accept failures (e.g. out of file descriptors)
	MessagesDropped        int64  // outbound messages dropped because a client's queue was full
	InflightDropped        int64  // outbound QoS 1 messages dropped at a client's MaxInflight
	IDCollisions           uint64 // SUBSCRIBE/UNSUBSCRIBE ids equal to a downlink's in flight (answered normally)
}

type counters struct {
	connects, refused, messagesIn, sinkErrors, pubDenied, subDenied,
	adminRequests, delivered, deliverFailed, acceptErrors, withheldDrops, idCollisions, subOverQuota atomic.Uint64
}

// Broker is the local MQTT broker. Create it with New, start it with Run.
type Broker struct {
	cfg   Config
	log   *slog.Logger
	specs []listenerSpec
	limit *limiter
	// perDevice limits log lines about one device\'s misbehaviour to one
	// per device and minute (keys are "what:pk/dn").
	perDevice *limiter
	stats     counters

	started atomic.Bool
	ready   chan struct{}
	addrs   map[string]net.Addr // written before ready is closed
	failed  chan error          // fatal listener errors
	rs      atomic.Pointer[runState]
	info    atomic.Pointer[system.Info]

	// stopping is closed when shutdown begins: publishes waiting for room
	// in their connection's ack queue give up.
	stopping chan struct{}
	// ackWriters counts the running ack writer goroutines (acks.go).
	ackWriters atomic.Int64

	conns    sync.Map // *mqtt.Client → *conn
	netConns sync.Map // net.Conn → *conn, to clean up connections mochi dropped without OnDisconnect
	open     sync.Map // net.Conn → struct{}: every connection between accept and the end of its goroutine

	mu      sync.Mutex
	devices map[secrets.DeviceID]map[*conn]struct{}
	// bySession indexes sessions by mochi client ID (conn.session), which
	// includes the identity (sessionKey).
	bySession map[string]*conn
	// pending counts, per device, the subscriptions a SUBSCRIBE in
	// progress was admitted for (see OnSubscribe).
	pending map[secrets.DeviceID]int
}

// runState is what exists while Run serves.
type runState struct {
	srv       *mqtt.Server
	inline    *mqtt.Client // publishes admin replies
	listeners []*listener
}

// conn is one authenticated session. It lives from the CONNECT until the
// session ends: at disconnect for a clean session, at expiry for a
// persistent one, at takeover for either.
type conn struct {
	cl        *mqtt.Client
	nc        net.Conn
	id        Identity
	clientID  string // as the client sent it (or as assigned to it)
	session   string // mochi's client ID: see sessionKey
	remote    string
	listener  string
	transport string
	lastPub   atomic.Pointer[string] // last topic the ACL allowed this client to publish to
	// disconnectSeen is set once mochi reported the disconnect.
	disconnectSeen atomic.Bool
	// ids serialises the broker's packet id allocation for downlinks with
	// the id stash of a SUBSCRIBE or UNSUBSCRIBE (idstash.go).
	ids idStash
	// quota is OnSubscribe's decision about the SUBSCRIBE being processed;
	// read goroutine only.
	quota *subQuota
	// acks holds the publishes waiting for the sink and the PUBACKs owed,
	// in receipt order (acks.go).
	acks ackQueue
	// Guarded by Broker.mu.
	established bool
	offline     bool
	removed     bool
	holdTimer   *time.Timer // closes a provisioning connection (Identity.Provision)
}

// rememberPub caches an allowed publish topic. It is a separate function so
// that the cached string escapes only on a cache miss.
func (c *conn) rememberPub(topic string) {
	t := topic
	c.lastPub.Store(&t)
}

// New validates cfg and returns a broker ready to Run.
func New(cfg Config) (*Broker, error) {
	if cfg.Auth == nil {
		return nil, errors.New("new broker: Config.Auth is required")
	}
	if cfg.Sink == nil {
		return nil, errors.New("new broker: Config.Sink is required")
	}
	if cfg.TLS != nil && (cfg.TLS.ClientAuth == tls.RequestClientCert || cfg.TLS.ClientAuth == tls.RequireAnyClientCert) {
		// The Authenticator would see certificates nobody verified.
		return nil, fmt.Errorf("new broker: Config.TLS.ClientAuth %v does not verify client certificates; "+
			"use VerifyClientCertIfGiven or RequireAndVerifyClientCert with ClientCAs", cfg.TLS.ClientAuth)
	}
	if cfg.UnixSocketMode == 0 {
		cfg.UnixSocketMode = DefaultUnixSocketMode
	}
	if cfg.UnixSocketMode&^os.ModePerm != 0 {
		return nil, fmt.Errorf("new broker: UnixSocketMode %v has bits other than permissions", cfg.UnixSocketMode)
	}
	if cfg.MaxPacketSize == 0 {
		cfg.MaxPacketSize = DefaultMaxPacketSize
	}
	if cfg.MaxPacketSize < 1024 {
		return nil, fmt.Errorf("new broker: MaxPacketSize %d is below 1024 bytes", cfg.MaxPacketSize)
	}
	if cfg.MaxClients == 0 {
		cfg.MaxClients = DefaultMaxClients
	}
	if cfg.WritesPending == 0 {
		cfg.WritesPending = DefaultWritesPending
	}
	if cfg.MaxClients < 0 || cfg.WritesPending < 0 || cfg.WritesPending > math.MaxInt32 {
		return nil, errors.New("new broker: MaxClients and WritesPending must be positive")
	}
	if cfg.MaxInflight == 0 {
		cfg.MaxInflight = DefaultMaxInflight
	}
	if cfg.MaxSubscriptions == 0 {
		cfg.MaxSubscriptions = DefaultMaxSubscriptions
	}
	if cfg.MaxSubscriptions < 0 {
		return nil, errors.New("new broker: MaxSubscriptions must be positive")
	}
	for _, d := range []struct {
		v   *time.Duration
		def time.Duration
	}{
		{&cfg.SessionExpiry, DefaultSessionExpiry},
		{&cfg.ConnectTimeout, DefaultConnectTimeout},
		{&cfg.WriteTimeout, DefaultWriteTimeout},
		{&cfg.ShutdownTimeout, DefaultShutdownTimeout},
	} {
		if *d.v < 0 {
			return nil, errors.New("new broker: durations must not be negative")
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	specs, err := listenerSpecs(&cfg)
	if err != nil {
		return nil, fmt.Errorf("new broker: %w", err)
	}
	return &Broker{
		cfg:       cfg,
		log:       cfg.Logger,
		specs:     specs,
		limit:     newLimiter(10*time.Second, 10),
		perDevice: newLimiter(time.Minute, 1),
		ready:     make(chan struct{}),
		stopping:  make(chan struct{}),
		failed:    make(chan error, len(specs)),
		devices:   map[secrets.DeviceID]map[*conn]struct{}{},
		bySession: map[string]*conn{},
		pending:   map[secrets.DeviceID]int{},
	}, nil
}

// mochi's housekeeping. Its event loop wakes every second to expire
// offline sessions, inflight messages and retained messages, and the first
// two copy the whole client map (Clients.GetAll) and walk every client's
// inflight store each time: at 9,000 devices about 2 MB of garbage and
// 1.5 % of a core a second on a broker with nothing to do, and the garbage
// keeps the heap a collection cycle's worth above what it holds. What those
// expiries serve is counted in minutes and hours here (session_expiry,
// mochi's message expiry of a day; retained messages are off), so edgegw
// runs them every housekeepingEvery: an offline session expires up to that
// much late. mochi has no option for these tickers, so slowHousekeeping
// reaches into its unexported loop by reflection; if an upgrade of mochi
// moves them, the broker logs it and keeps mochi's second
// (TestSlowHousekeeping fails). Delayed wills keep their 1 s ticker.

// housekeepingEvery is how often the broker expires offline sessions and
// inflight messages: a tenth of the session expiry, from 1 s to 30 s.
func housekeepingEvery(sessionExpiry time.Duration) time.Duration {
	return min(max(sessionExpiry/10, time.Second), 30*time.Second)
}

// slowHousekeeping resets mochi's expiry tickers to every.
func slowHousekeeping(srv *mqtt.Server, every time.Duration) error {
	lp := reflect.ValueOf(srv).Elem().FieldByName("loop")
	if !lp.IsValid() || lp.Kind() != reflect.Pointer || lp.IsNil() {
		return errors.New("mochi's Server has no event loop field")
	}
	l := lp.Elem()
	tickers := make([]*time.Ticker, 0, 3)
	for _, name := range []string{"clientExpiry", "inflightExpiry", "retainedExpiry"} {
		f := l.FieldByName(name)
		if !f.IsValid() || f.Type() != reflect.TypeFor[*time.Ticker]() {
			return fmt.Errorf("mochi's event loop has no ticker %s", name)
		}
		t := *(**time.Ticker)(unsafe.Pointer(f.UnsafeAddr()))
		if t == nil {
			return fmt.Errorf("mochi's ticker %s is not set", name)
		}
		tickers = append(tickers, t)
	}
	for _, t := range tickers {
		t.Reset(every)
	}
	return nil
}

// clientReadBuffer is the size of mochi's read buffer per connection
// (mochi's default is 2 KiB). Devices send small packets and few at a
// time; a larger packet is read through the buffer in pieces or, past its
// size, straight into the packet. It is held for the life of every
// connection, idle or not.
const clientReadBuffer = 1024

// capabilities derives mochi's capabilities from the configuration.
func (b *Broker) capabilities() *mqtt.Capabilities {
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = b.cfg.MaxPacketSize
	caps.MaximumClients = b.cfg.MaxClients
	caps.MaximumClientWritesPending = int32(b.cfg.WritesPending)
	caps.MaximumInflight = b.cfg.MaxInflight
	caps.MaximumSessionExpiryInterval = uint32(min(b.cfg.SessionExpiry/time.Second, math.MaxUint32))
	caps.MaximumQos = 1
	caps.RetainAvailable = 0
	caps.SharedSubAvailable = 0 // '$share/…' is outside every namespace anyway
	return caps
}

// Run binds every listener, serves until ctx is done, then shuts down
// within Config.ShutdownTimeout. It returns the first binding error (naming
// the listener) without serving, the error of a listener that stopped
// accepting, or a shutdown that did not finish in time; nil after a clean
// shutdown. Run may be called once.
func (b *Broker) Run(ctx context.Context) error {
	if !b.started.CompareAndSwap(false, true) {
		return ErrAlreadyStarted
	}
	var bound []*listener
	closeBound := func() {
		for _, l := range bound {
			l.stopAccepting()
		}
	}
	for _, spec := range b.specs {
		l, err := b.bind(spec)
		if err != nil {
			closeBound()
			for _, s := range b.specs[len(bound)+1:] { // inherited sockets not yet wrapped
				if s.inherited != nil {
					_ = s.inherited.Close()
				}
			}
			return err
		}
		bound = append(bound, l)
	}

	srv := mqtt.New(&mqtt.Options{
		Capabilities:            b.capabilities(),
		ClientNetReadBufferSize: clientReadBuffer,
		Logger:                  slog.New(&mochiHandler{inner: b.log.Handler(), limit: b.limit}),
		SysTopicResendInterval:  60, // $SYS is readable by nobody here; keep the ReadMemStats tick rare
	})
	rs := &runState{
		srv:       srv,
		inline:    srv.NewClient(nil, mqtt.LocalListener, "edgegw-admin-replies", true),
		listeners: bound,
	}
	sinkCtx, cancelSink := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelSink()
	h := &hook{b: b, srv: srv, sinkCtx: sinkCtx, transport: map[string]string{}}
	b.addrs = map[string]net.Addr{}
	for _, l := range bound {
		h.transport[l.id] = l.transport
		b.addrs[l.id] = l.addr
	}
	if err := srv.AddHook(h, nil); err != nil {
		closeBound()
		return fmt.Errorf("add broker hook: %w", err)
	}
	for _, l := range bound {
		if err := srv.AddListener(l); err != nil {
			closeBound()
			return fmt.Errorf("add listener %q: %w", l.id, err)
		}
	}
	if err := slowHousekeeping(srv, housekeepingEvery(b.cfg.SessionExpiry)); err != nil {
		b.log.Warn("mochi's housekeeping stays at once a second", "error", err)
	}
	b.info.Store(srv.Info)
	b.rs.Store(rs)
	if err := srv.Serve(); err != nil {
		b.rs.Store(nil)
		closeBound()
		_ = srv.Close()
		return fmt.Errorf("start broker: %w", err)
	}
	for _, l := range bound {
		b.log.Info("broker listening", "listener", l.id, "address", l.addr.String(), "transport", l.transport)
	}
	close(b.ready)

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-b.failed:
		b.log.Error("broker listener failed; shutting down", "error", runErr)
	}
	b.rs.Store(nil)
	return errors.Join(runErr, b.shutdown(rs, cancelSink))
}

// listenerFailed reports a listener that can no longer accept.
func (b *Broker) listenerFailed(id string, err error) {
	select {
	case b.failed <- fmt.Errorf("accept on listener %q: %w", id, err):
	default:
	}
}

// shutdown stops the broker within Config.ShutdownTimeout. mochi's Close
// writes a DISCONNECT to every client one after the other and then waits for
// all of them, which can hang (mochi-mqtt/server#488). So: stop accepting,
// disconnect clients in parallel with bounded writes, then Close with a
// bound; only when that runs late is the sink context cancelled, so that
// sinks finish the commits they have started when they can.
func (b *Broker) shutdown(rs *runState, cancelSink context.CancelFunc) error {
	start := time.Now()
	timeout := b.cfg.ShutdownTimeout
	for _, l := range rs.listeners {
		l.stopAccepting()
	}
	close(b.stopping) // a read loop waiting for room in its ack queue returns
	var live []*mqtt.Client
	for _, cl := range rs.srv.Clients.GetAll() {
		if !cl.Net.Inline && !cl.Closed() {
			live = append(live, cl)
		}
	}
	b.log.Info("broker shutting down", "clients", len(live))
	b.disconnectAll(rs.srv, live, start.Add(timeout/2))
	// Close what the client list did not show: connections still before
	// their CONNECT, or between authentication and mochi's Clients.Add.
	b.closeOpen()
	// Let every connection goroutine end before mochi's Close: Close
	// lists each listener's clients with Clients.GetByListener, which
	// takes the clients' read lock twice (it calls Len inside), so a
	// client ending meanwhile (Clients.Delete, waiting for the write
	// lock) deadlocks both, and Close never returns (seen in about one
	// gateway test run in two). With no connection left, nothing deletes.
	b.waitConnsEnded(start.Add(timeout / 2))
	// Ack writers end as soon as their connections are closed; one still
	// running at the deadline is abandoned (its write is bounded anyway).
	b.waitAckWritersEnded(start.Add(timeout / 2))

	closed := make(chan struct{})
	go func() {
		_ = rs.srv.Close()
		close(closed)
	}()
	select {
	case <-closed:
		return nil
	case <-time.After(time.Until(start.Add(timeout * 3 / 4))):
	}
	b.log.Warn("broker shutdown running late; cancelling in-flight sink calls", "connections", b.openCount())
	cancelSink()
	b.closeOpen()
	select {
	case <-closed:
		return nil
	case <-time.After(time.Until(start.Add(timeout))):
	}
	n := b.openCount()
	b.log.Error("broker shutdown: connection goroutines still running; their stacks follow", "count", n,
		"stacks", stuckConnStacks(8<<10))
	return fmt.Errorf("shut down broker: not finished after %s; %d connection goroutines are still running", timeout, n)
}

// stuckConnStacks returns the stacks of the goroutines still serving a
// connection (they run listener.handle), at most limit bytes: what a
// shutdown that ran out of time was waiting for.
func stuckConnStacks(limit int) string {
	var buf bytes.Buffer
	_ = pprof.Lookup("goroutine").WriteTo(&buf, 2)
	var out strings.Builder
	for _, g := range strings.Split(buf.String(), "\n\n") {
		if !strings.Contains(g, "localbroker.(*listener).handle") {
			continue
		}
		if out.Len()+len(g) > limit {
			out.WriteString("…")
			break
		}
		out.WriteString(g)
		out.WriteString("\n\n")
	}
	return out.String()
}

// waitConnsEnded waits until no connection goroutine runs, or deadline.
func (b *Broker) waitConnsEnded(deadline time.Time) {
	for b.openCount() > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
}

// closeOpen closes every connection whose goroutine has not ended.
func (b *Broker) closeOpen() {
	b.open.Range(func(k, _ any) bool {
		_ = k.(net.Conn).Close()
		return true
	})
}

func (b *Broker) openCount() int {
	n := 0
	b.open.Range(func(any, any) bool { n++; return true })
	return n
}

// disconnectAll disconnects clients in parallel. MQTT 5 clients get a
// DISCONNECT (server shutting down) written with a deadline; 3.1.1 has no
// server DISCONNECT, so their connections are just closed. Whatever is not
// done by deadline is closed without a goodbye.
func (b *Broker) disconnectAll(srv *mqtt.Server, clients []*mqtt.Client, deadline time.Time) {
	if len(clients) == 0 {
		return
	}
	work := make(chan *mqtt.Client)
	var wg sync.WaitGroup
	for range min(len(clients), 32) {
		wg.Go(func() {
			for cl := range work {
				b.disconnect(srv, cl, packets.ErrServerShuttingDown, min(time.Second, b.cfg.WriteTimeout))
			}
		})
	}
	done := make(chan struct{})
	go func() {
		defer close(work)
		for _, cl := range clients {
			select {
			case work <- cl:
			case <-done:
				return
			}
		}
	}()
	finished := make(chan struct{})
	go func() {
		wg.Wait()
		close(finished)
	}()
	select {
	case <-finished:
	case <-time.After(time.Until(deadline)):
		close(done)
		for _, cl := range clients {
			cl.Stop(packets.ErrServerShuttingDown)
		}
	}
}

// disconnect ends one client's connection: a DISCONNECT with code for MQTT 5
// (the write bounded by timeout), a plain close for 3.1.1.
func (b *Broker) disconnect(srv *mqtt.Server, cl *mqtt.Client, code packets.Code, timeout time.Duration) {
	if cl.Closed() {
		return
	}
	if c := b.connOf(cl); c != nil {
		c.acks.close() // its read loop may be waiting for room in the queue
	}
	if cl.Properties.ProtocolVersion < 5 {
		cl.Stop(code)
		return
	}
	t := time.AfterFunc(timeout, func() { cl.Stop(code) })
	_ = srv.DisconnectClient(cl, code)
	t.Stop()
}

// Ready is closed once every listener is bound and the broker serves.
func (b *Broker) Ready() <-chan struct{} { return b.ready }

// Addrs returns the bound address of every listener by listener ID (the
// configured URL, or "inherited:NAME/i"). It returns nil before Ready.
func (b *Broker) Addrs() map[string]net.Addr {
	select {
	case <-b.ready:
	default:
		return nil
	}
	out := make(map[string]net.Addr, len(b.addrs))
	for k, v := range b.addrs {
		out[k] = v
	}
	return out
}

// Stats returns the broker's counters.
func (b *Broker) Stats() Stats {
	s := Stats{
		Connects:               b.stats.connects.Load(),
		ConnectsRefused:        b.stats.refused.Load(),
		MessagesIn:             b.stats.messagesIn.Load(),
		SinkErrors:             b.stats.sinkErrors.Load(),
		WithheldDisconnects:    b.stats.withheldDrops.Load(),
		PublishesDenied:        b.stats.pubDenied.Load(),
		SubscriptionsDenied:    b.stats.subDenied.Load(),
		AdminRequests:          b.stats.adminRequests.Load(),
		Delivered:              b.stats.delivered.Load(),
		DeliverFailed:          b.stats.deliverFailed.Load(),
		AcceptErrors:           b.stats.acceptErrors.Load(),
		IDCollisions:           b.stats.idCollisions.Load(),
		SubscriptionsOverQuota: b.stats.subOverQuota.Load(),
	}
	if info := b.info.Load(); info != nil {
		s.ClientsConnected = atomic.LoadInt64(&info.ClientsConnected)
		s.MessagesDropped = atomic.LoadInt64(&info.MessagesDropped)
		s.InflightDropped = atomic.LoadInt64(&info.InflightDropped)
		s.Subscriptions = atomic.LoadInt64(&info.Subscriptions)
	}
	b.mu.Lock()
	s.Sessions = len(b.bySession)
	b.mu.Unlock()
	return s
}

// connOf returns the session of a mochi client, or nil.
func (b *Broker) connOf(cl *mqtt.Client) *conn {
	if v, ok := b.conns.Load(cl); ok {
		return v.(*conn)
	}
	return nil
}

// removeLocked forgets a session. b.mu must be held.
func (b *Broker) removeLocked(c *conn) {
	if c.removed {
		return
	}
	c.removed = true
	b.conns.CompareAndDelete(c.cl, c)
	b.unindexLocked(c)
}

// unindexLocked removes a session from the session and device indexes but
// keeps its identity for the ACL, for a connection that was taken over and
// is still closing. b.mu must be held.
func (b *Broker) unindexLocked(c *conn) {
	if b.bySession[c.session] == c {
		delete(b.bySession, c.session)
	}
	if !c.id.Admin {
		k := c.id.DeviceID
		if set := b.devices[k]; set != nil {
			delete(set, c)
			if len(set) == 0 {
				delete(b.devices, k)
			}
		}
	}
}

// connectionEnded runs after mochi is done with a connection.
func (b *Broker) connectionEnded(l *listener, nc net.Conn, err error) {
	if v, ok := b.netConns.LoadAndDelete(nc); ok {
		c := v.(*conn)
		if !c.disconnectSeen.Load() {
			// mochi gave up between CONNECT and the read loop (e.g. the
			// CONNACK could not be written) without calling OnDisconnect.
			b.mu.Lock()
			b.removeLocked(c)
			b.mu.Unlock()
		}
	}
	switch {
	case err == nil, errors.Is(err, errRefused):
	case errors.Is(err, packets.ErrServerBusy):
		b.stats.refused.Add(1)
		b.logLimited("refused-busy", slog.LevelWarn, "connection refused: client limit reached",
			"listener", l.id, "remote", remoteOf(nc), "max_clients", b.cfg.MaxClients)
	default:
		if tc, ok := nc.(*tls.Conn); ok && !tc.ConnectionState().HandshakeComplete {
			b.logLimited("tls-handshake", slog.LevelInfo, "TLS handshake failed",
				"listener", l.id, "remote", remoteOf(nc), "error", err)
			return
		}
		b.log.Debug("connection closed", "listener", l.id, "remote", remoteOf(nc), "error", err)
	}
}

func remoteOf(nc net.Conn) string {
	if a := nc.RemoteAddr(); a != nil {
		return a.String()
	}
	return ""
}
