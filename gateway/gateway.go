package gateway

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgegw/edgegw/gateway/config"
	"github.com/edgegw/edgegw/internal/buildinfo"
	"github.com/edgegw/edgegw/internal/loglimit"
	"github.com/edgegw/edgegw/internal/logsafe"
	"github.com/edgegw/edgegw/localbroker"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink"
	"github.com/edgegw/edgegw/uplink/spool"
)

// Queue is what the gateway needs of the store-and-forward buffer: the
// uplink's Queue plus housekeeping and visibility. spool.Spool (durable) and
// spool.Mem implement it.
type Queue interface {
	uplink.Queue
	// AppendAsync is Append reporting through done, which the spool calls
	// on its writer goroutine after the commit (spool.Spool.AppendAsync):
	// the sink's normal lane.
	AppendAsync(ctx context.Context, device secrets.DeviceID, m spool.Message, done func(seq uint64, err error))
	Purge(device secrets.DeviceID) (int, error)
	Remove(device secrets.DeviceID) error
	Stats(device secrets.DeviceID) spool.DeviceStats
	Totals() spool.Totals
	Close() error
}

// Options are the parts of a gateway that do not come from the config file.
type Options struct {
	// Logger receives every log line (default: discard).
	Logger *slog.Logger
	// Inherited are socket-activated listeners by name (systemd).
	Inherited map[string][]net.Listener
	// Clock drives the cloud sessions (default: the system clock).
	Clock uplink.Clock
	// Version is the edgegw version gateway.status and edgegw_build_info
	// report (default: the main module's version from the build info, else
	// "devel").
	Version string
	// Level, when set, is the level of Logger's handler: Reload sets it
	// from log_level (without it, log_level needs a restart).
	Level *slog.LevelVar
	// CertCheckInterval is how often the TLS certificate, key and CA files
	// of the listeners and of the cloud are checked for a change (mtime
	// and size) and reloaded (default 5 s).
	CertCheckInterval time.Duration
	// Commit is the source revision edgegw_build_info reports (default:
	// vcs.revision from the build info, else "unknown").
	Commit string
	// BeforeSpoolCommit, if set, is called before each commit of the
	// durable spool, which waits for it (spool.Options.BeforeCommit): a
	// seam for tests that hold a commit back. Leave it nil.
	BeforeSpoolCommit func()
	// SettleMinBurst and SettleQuiet say when a burst of connections is
	// over and the memory it left is returned to the OS: after at least
	// SettleMinBurst local and cloud connections (default 32), SettleQuiet
	// with at most one new connection a second (default 5 s). See
	// memory.go.
	SettleMinBurst int
	SettleQuiet    time.Duration
}

// Gateway is one edgegw instance: registry, local broker, spool and cloud
// sessions, wired together. Create it with New and run it with Run.
type Gateway struct {
	cfg     *config.Config
	log     *slog.Logger
	opts    Options
	version string
	commit  string
	budget  stopBudget // shutdown.timeout split among the stop steps
	started time.Time

	ran atomic.Bool              // Run was called
	obs atomic.Pointer[observer] // set while Run runs (see startObserver)

	ready  chan struct{}
	mu     sync.Mutex
	reg    *secrets.Registry
	queue  Queue
	broker *localbroker.Broker
	mgr    *uplink.Manager
	subs   *subscriptions
	down   downlinkDrops
	// adminLogins counts failed [[broker.admin]] logins (metrics).
	adminLogins adminLoginStats

	// What Reload and the certificate watcher change (reload.go).
	reloadMu    sync.Mutex
	live        *config.Config // the configuration of the live keys in force
	admins      *adminLogins   // nil before Run
	adminStamps []fileStamp    // of the admins' password files
	brokerCerts certFiles
	cloudCerts  certFiles
	cloudEP     uplink.Endpoint // the cloud endpoint as last built
	// registryLost counts the registry records a salvage at start could
	// not recover (metrics).
	registryLost atomic.Uint64

	// Memory returned after bursts of connections (memory.go).
	settles    atomic.Int64
	lastSettle atomic.Int64 // unix nanoseconds
}

// versionString is the version of this build when Options has none.
func versionString() string { return buildinfo.Get(buildinfo.Stamp{}).Version }

// New checks cfg and prepares a gateway; it opens nothing yet.
func New(cfg *config.Config, opts Options) (*Gateway, error) {
	if cfg == nil {
		return nil, errors.New("gateway: no configuration")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	g := &Gateway{
		cfg:     cfg,
		log:     opts.Logger,
		opts:    opts,
		version: cmp.Or(opts.Version, versionString()),
		commit:  cmp.Or(opts.Commit, buildinfo.Get(buildinfo.Stamp{}).Commit),
		budget:  newStopBudget(cfg.Shutdown.Timeout.Std()),
		ready:   make(chan struct{}),
		live:    cfg,

		brokerCerts: certFiles{name: "broker", keys: certPaths{cert: "tls_cert", key: "tls_key", ca: "client_ca"}},
		cloudCerts:  certFiles{name: "cloud", keys: certPaths{cert: "client_cert", key: "client_key", ca: "ca_file"}},
	}
	g.down.log = loglimit.New(time.Minute, 1)
	if opts.Clock != nil {
		g.down.log.Now = opts.Clock.Now
	}
	return g, nil
}

// Ready is closed once the registry is open, the spool is open and every
// local listener is bound: the gateway serves devices from then on, whether
// or not the cloud answers.
func (g *Gateway) Ready() <-chan struct{} { return g.ready }

// Addrs returns the local broker's bound addresses by listener ID (after
// Ready).
func (g *Gateway) Addrs() map[string]net.Addr {
	g.mu.Lock()
	b := g.broker
	g.mu.Unlock()
	if b == nil {
		return nil
	}
	return b.Addrs()
}

// Registry returns the open registry (after Ready), for tools running in
// the same process.
func (g *Gateway) Registry() *secrets.Registry {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.reg
}

// Run opens the state, starts the local broker and the cloud sessions and
// blocks until ctx ends. Each part, once started, registers a named stop
// step; at the end the steps run last-in-first-out — local broker first (no
// new publishes, in-flight commits finish), then the cloud sessions, the
// metrics server, the spool and the registry — each within its share of
// the shutdown budget (see stopBudget). Undelivered messages stay in the
// spool. Run may be called once; a second call returns ErrAlreadyRun.
func (g *Gateway) Run(ctx context.Context) (err error) {
	if !g.ran.CompareAndSwap(false, true) {
		return ErrAlreadyRun
	}
	g.started = time.Now()
	stops := &stopSteps{log: g.log}
	defer func() {
		err = errors.Join(err, stops.run())
		g.obs.Store(nil) // also when the metrics step was left behind
	}()

	if err := os.MkdirAll(g.cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("create state directory: %w", err)
	}
	key, _, err := secrets.LoadOrCreateKey(g.cfg.EffectiveKeyFile(), g.log)
	if err != nil {
		return err
	}
	reg, err := g.openRegistry(key)
	clear(key)
	if err != nil {
		return err
	}
	stops.add("registry", g.budget.registry, reg.Close)

	q, err := g.openQueue()
	if err != nil {
		return err
	}
	stops.add("spool", g.budget.spool, q.Close)

	mgr, err := g.newManager(q)
	if err != nil {
		return err
	}
	g.subs = newSubscriptions(mgr, g.cfg.Broker.MaxSubscriptions, g.log)
	broker, err := g.newBroker(reg, q, mgr)
	if err != nil {
		return err
	}
	g.mu.Lock()
	g.reg, g.queue, g.mgr, g.broker = reg, q, mgr, broker
	g.mu.Unlock()

	n, err := g.loadDevices()
	if err != nil {
		return err
	}

	// Liveness, and the metrics and health server: it reads the parts
	// above, so it stops before they are closed.
	stopObserver, err := g.startObserver(ctx)
	if err != nil {
		return err
	}
	stops.add("metrics", g.budget.metrics, stopObserver)

	// The cloud sessions outlive ctx: they stop (and flush) only after the
	// local broker has stopped feeding them.
	up := startRunner(context.WithoutCancel(ctx), mgr.Run)
	stops.add("uplink", g.budget.uplink, up.stop)
	local := startRunner(ctx, broker.Run)
	stops.add("broker", g.budget.broker, local.stop)

	select {
	case <-broker.Ready():
		g.log.Info("edgegw ready", "devices", n, "listeners", addrList(broker.Addrs()),
			"cloud", g.cfg.Cloud.EffectiveEndpoint(), "durable", g.cfg.Spool.Durable)
		// Not a stop step: it holds nothing, and ends first (deferred
		// after the steps' run, so it runs before them).
		watch := startRunner(ctx, g.watchCerts)
		defer func() { _ = watch.stop() }()
		settle := startRunner(ctx, g.settleMemory)
		defer func() { _ = settle.stop() }()
		close(g.ready)
	case <-local.done:
		return fmt.Errorf("local broker: %w", local.result())
	}

	select {
	case <-ctx.Done():
		g.log.Info("edgegw stopping", "budget", g.budget.total)
		return nil // the stop steps report what did not stop cleanly
	case <-local.done:
		if ctx.Err() != nil {
			return nil // stopping anyway: the broker's stop step reports
		}
		// A listener that can no longer accept ends the broker.
		if err := local.result(); err != nil {
			return fmt.Errorf("local broker: %w", err)
		}
		return nil
	case <-up.done:
		// The manager only ends early on a fatal error: stop the rest too.
		return fmt.Errorf("uplink manager: %w", up.result())
	}
}

func addrList(m map[string]net.Addr) string {
	var s []string
	for id, a := range m {
		if a != nil && !strings.HasPrefix(id, "unix") {
			s = append(s, a.String())
		} else {
			s = append(s, id)
		}
	}
	return strings.Join(s, " ")
}

// openRegistry opens the device registry. A damaged one must not keep the
// plant's devices offline: it is moved aside (kept for inspection), the
// records that still decrypt with the key are recovered into a new file,
// and the lost ones are counted (SalvageRegistry logs the counts and the
// path; registry_records_lost reports them). A wrong key or a file that is
// not a registry is still refused, untouched.
func (g *Gateway) openRegistry(key []byte) (*secrets.Registry, error) {
	path := g.cfg.RegistryPath()
	opts := &secrets.RegistryOptions{Logger: g.log.With("part", "registry")}
	reg, err := secrets.OpenRegistry(path, key, opts)
	if !errors.Is(err, secrets.ErrCorrupt) {
		return reg, err
	}
	g.log.Error("registry file is corrupt; salvaging it", "err", err)
	rep, serr := secrets.SalvageRegistry(path, key, opts, time.Now())
	if serr != nil {
		return nil, errors.Join(err, serr)
	}
	g.registryLost.Store(uint64(rep.Unreadable))
	return secrets.OpenRegistry(path, key, opts)
}

func (g *Gateway) openQueue() (Queue, error) {
	overflow, err := spool.ParseOverflow(g.cfg.Spool.Overflow)
	if err != nil {
		return nil, err
	}
	opts := spool.Options{
		CloseTimeout: g.budget.spool,
		Budget:       int64(g.cfg.Spool.Budget),
		DeviceBudget: int64(g.cfg.Spool.DeviceBudget),
		Overflow:     overflow,
		TTL:          g.cfg.Spool.TTL.Std(),
		Logger:       g.log.With("part", "spool"),
		BeforeCommit: g.opts.BeforeSpoolCommit,
	}
	if !g.cfg.Spool.Durable {
		return spool.NewMem(opts)
	}
	path := g.cfg.EffectiveSpoolPath()
	s, err := spool.Open(path, opts)
	if errors.Is(err, spool.ErrCorrupt) {
		// A damaged spool must not keep the plant's devices offline: move
		// the file aside (kept for inspection), recover what can be read
		// of it into a new one, count the rest as dropped (corrupt); Salvage
		// logs the counts and the path.
		g.log.Error("spool file is corrupt; salvaging it", "err", err)
		rep, serr := spool.Salvage(path, opts, time.Now())
		if rep.MovedTo == "" {
			return nil, errors.Join(err, serr)
		}
		return spool.Open(path, opts)
	}
	return s, err
}

func (g *Gateway) newManager(q Queue) (*uplink.Manager, error) {
	c := &g.cfg.Cloud
	if err := g.cloudCerts.load(cloudCertPaths(c)); err != nil {
		return nil, err
	}
	g.cloudEP = g.cloudEndpoint(c)
	ep := g.cloudEP
	limits := map[secrets.Dialect]uplink.DialectLimits{}
	for _, d := range []secrets.Dialect{secrets.Aliyun, secrets.EnOS} {
		l := uplink.DefaultLimits(d)
		if d == c.Dialect {
			l.KeepAlive = c.Keepalive.Std()
			l.MaxPayload = int(c.EffectiveMaxPayload())
			if r := c.EffectiveDeviceRate(); r > 0 {
				l.MessageRate = uplink.Rate{PerSecond: r, Burst: 1}
			} else {
				l.MessageRate = uplink.Rate{}
			}
			if c.BackoffMin > 0 {
				l.Backoff.Initial = c.BackoffMin.Std()
			}
			if c.BackoffMax > 0 {
				l.Backoff.Max = c.BackoffMax.Std()
			}
		}
		limits[d] = l
	}
	mc := uplink.ManagerConfig{
		Endpoint:     ep,
		Queue:        q,
		Logger:       g.log.With("part", "uplink"),
		Clock:        g.opts.Clock,
		Limits:       limits,
		ConnectRate:  uplink.Rate{PerSecond: c.ConnectRate, Burst: c.ConnectBurst},
		Window:       c.Inflight,
		GatewayRate:  uplink.Rate{PerSecond: c.GatewayRate, Burst: max(1, int(c.GatewayRate))},
		StallTimeout: c.AckTimeout.Std(),
		LiveFirst:    g.cfg.Spool.LiveFirst,
		TimeCritical: uplink.TimeCritical{NTP: c.NTPTTL.Std(), RRPC: c.RRPCTTL.Std(), Reply: c.ReplyTTL.Std()},
		StopTimeout:  g.budget.uplink,
		Downlink:     g.downlink,
	}
	if c.GatewayRate == 0 {
		mc.GatewayRate = uplink.Rate{}
	}
	if c.GatewayBandwidth > 0 {
		mc.GatewayByteRate = uplink.Rate{PerSecond: float64(c.GatewayBandwidth), Burst: int(c.GatewayBandwidth)}
	}
	if c.AuthRetry > 0 {
		mc.AuthRetry = uplink.RetryWindow{Min: c.AuthRetry.Std() / 2, Max: c.AuthRetry.Std() * 3 / 2}
	}
	return uplink.NewManager(mc)
}

func (g *Gateway) newBroker(reg *secrets.Registry, q Queue, mgr *uplink.Manager) (*localbroker.Broker, error) {
	b := &g.cfg.Broker
	auth := &authenticator{reg: reg, modes: map[string]bool{}, log: g.log, act: mgr, sessions: mgr}
	for _, m := range b.Auth {
		auth.modes[m] = true
	}
	// Always made, so that a reload can add the first admin user.
	users, err := loadAdminUsers(b.Admin, 0)
	if err != nil {
		return nil, err
	}
	now := time.Now
	if g.opts.Clock != nil {
		now = g.opts.Clock.Now
	}
	auth.admins = newAdminLogins(users, now, &g.adminLogins, g.log)
	g.admins, g.adminStamps = auth.admins, passwordStamps(b.Admin)
	tlsCfg, err := g.brokerTLS()
	if err != nil {
		return nil, err
	}
	return localbroker.New(localbroker.Config{
		Listeners:        b.Listeners,
		TLS:              tlsCfg,
		Inherited:        g.opts.Inherited,
		UnixSocketMode:   os.FileMode(b.UnixSocketMode),
		MaxPacketSize:    uint32(b.MaxPacketSize),
		MaxClients:       int64(b.MaxClients),
		WritesPending:    b.WritesPending,
		SessionExpiry:    time.Duration(b.SessionExpiry),
		MaxSubscriptions: b.MaxSubscriptions,
		Logger:           g.log.With("part", "broker"),
		ShutdownTimeout:  g.budget.broker,
		Auth:             auth,
		Sink:             &sink{q: q, mgr: mgr, qos0: g.cfg.Spool.QoS0, log: g.log},
		Observer:         g.subs,
		Admin:            newAdmin(g),
	})
}

// brokerTLS loads the listeners' certificate and client CAs and returns
// the configuration the tls:// and wss:// listeners use: every handshake
// takes the material current at that moment (listenerTLS), so a renewal
// reaches new connections while established ones continue.
func (g *Gateway) brokerTLS() (*tls.Config, error) {
	b := &g.cfg.Broker
	if b.TLSCert == "" {
		return nil, nil
	}
	if err := g.brokerCerts.load(brokerCertPaths(b)); err != nil {
		return nil, err
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, GetConfigForClient: g.listenerTLS}, nil
}

func (g *Gateway) listenerTLS(*tls.ClientHelloInfo) (*tls.Config, error) {
	m := g.brokerCerts.current()
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{*m.cert}}
	if m.pool != nil {
		cfg.ClientCAs = m.pool
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
	}
	return cfg, nil
}

// loadDevices starts a cloud session for every enabled device that has a
// deviceSecret or is awaiting activation (see uplinkDevice).
func (g *Gateway) loadDevices() (int, error) {
	devs, err := g.reg.Devices(secrets.DeviceFilter{})
	if err != nil {
		return 0, fmt.Errorf("list devices: %w", err)
	}
	n := 0
	for _, d := range devs {
		ud, ok, err := g.uplinkDevice(d)
		if err != nil {
			g.log.Error("device not started", "device", d.ID(), "err", err)
			continue
		}
		if !ok {
			continue
		}
		if err := g.mgr.Add(ud); err != nil {
			g.log.Error("device not started", "device", d.ID(), "err", err)
			continue
		}
		n++
	}
	return n, nil
}

// uplinkDevice turns a registry record into a session description; ok is
// false for devices that get no session: disabled ones, and ones without a
// deviceSecret that are not awaiting activation (activation-failed waits
// for an operator). A device awaiting activation gets a session that first
// obtains its deviceSecret with the productSecret (see registryActivation).
func (g *Gateway) uplinkDevice(d secrets.Device) (uplink.Device, bool, error) {
	if d.Disabled || (d.DeviceSecret.IsZero() && d.State != secrets.StateAwaitingActivation) {
		return uplink.Device{}, false, nil
	}
	p, err := g.reg.GetProduct(d.ProductKey)
	if err != nil {
		return uplink.Device{}, false, err
	}
	var productSecret secrets.Secret
	var activation uplink.ActivationStore
	if d.DeviceSecret.IsZero() {
		if p.ProductSecret.IsZero() {
			return uplink.Device{}, false, nil
		}
		productSecret, activation = p.ProductSecret, g.activationStore()
	}
	cid := d.ClientID
	if cid == "" {
		r := strings.NewReplacer("{productKey}", d.ProductKey, "{deviceName}", d.DeviceName)
		cid = r.Replace(g.cfg.Cloud.ClientID)
	}
	sm := secrets.SignMethod("")
	if p.Dialect == g.cfg.Cloud.Dialect {
		sm = g.cfg.Cloud.EffectiveSignMethod()
	}
	return uplink.Device{
		ID:            d.ID(),
		Dialect:       p.Dialect,
		Secret:        d.DeviceSecret,
		ClientID:      cid,
		SignMethod:    sm,
		Extra:         connectParams(d, p),
		ProductSecret: productSecret,
		Activation:    activation,
	}, true, nil
}

// connectParams are the clientId extension parameters a device's cloud
// session carries after edgegw's own securemode, signmethod and timestamp:
// the ones the device presented at its last signed login, or, for a device
// not seen yet or one that logs in with a local password or certificate,
// its product's default (docs/protocol.md §2.2). EnOS sessions carry none.
func connectParams(d secrets.Device, p secrets.Product) []secrets.Param {
	if p.Dialect != secrets.Aliyun {
		return nil
	}
	if d.ConnectParams != nil {
		return d.ConnectParams
	}
	return p.DefaultConnectParams
}

// downlinkDropReasons are the reasons a downlink is not handed to its
// device: the values of edgegw_downlink_dropped_total's reason label, each
// with the broker's error and what it means for the operator.
var downlinkDropReasons = [...]struct {
	err   error
	label string
	why   string
}{
	{localbroker.ErrNotConnected, "not_connected", "the device is offline and has no persistent session (or the message is QoS 0, which is not queued)"},
	{localbroker.ErrNotSubscribed, "not_subscribed", "the device has not subscribed to the topic and does not use server-side subscription (Alibaba _ss=1 in its clientId; EnOS always)"},
	{localbroker.ErrInflightFull, "inflight_full", "the device already has the most unacknowledged messages the broker keeps for it"},
	{localbroker.ErrTopicNotAllowed, "topic_not_allowed", "the topic is not one the device may receive"},
	{localbroker.ErrNotRunning, "not_running", "the local broker is not running"},
	{nil, "write_failed", "the write to the device's connection failed"},
}

// downlinkDrops counts dropped downlinks by reason (indexes of
// downlinkDropReasons) and limits their log lines per device.
type downlinkDrops struct {
	n   [len(downlinkDropReasons)]atomic.Int64
	log *loglimit.Limiter
}

func (d *downlinkDrops) total() int64 {
	var t int64
	for i := range d.n {
		t += d.n[i].Load()
	}
	return t
}

// downlink hands a cloud message to the device on the local broker, at the
// cloud's QoS (docs/architecture.md §4.1). What cannot be delivered or
// queued is dropped: counted by reason, and logged as a warning at most
// once per device and minute.
func (g *Gateway) downlink(id secrets.DeviceID, topic string, payload []byte, qos byte) {
	err := g.broker.Deliver(id, topic, payload, qos)
	if err == nil {
		return
	}
	i := len(downlinkDropReasons) - 1
	for j, r := range downlinkDropReasons {
		if r.err != nil && errors.Is(err, r.err) {
			i = j
			break
		}
	}
	g.down.n[i].Add(1)
	ok, suppressed := g.down.log.Allow(id.String())
	if !ok {
		return
	}
	r := downlinkDropReasons[i]
	args := []any{"device", id.String(), "topic", logsafe.Clip(topic), "qos", qos, "reason", r.label, "why", r.why}
	if r.err == nil {
		args = append(args, "err", err)
	}
	if suppressed > 0 {
		args = append(args, "suppressed", suppressed)
	}
	g.log.Warn("downlink dropped", args...)
}

// Snapshot is a point-in-time summary for status lines and the demo.
type Snapshot struct {
	Uptime         time.Duration
	LocalClients   int
	Sessions       map[uplink.State]int
	Sent           uint64
	Spool          spool.Totals
	DownlinkDrops  int64
	BrokerMessages uint64
}

// Snapshot returns the current summary (zero before Ready).
func (g *Gateway) Snapshot() Snapshot {
	g.mu.Lock()
	b, m, q := g.broker, g.mgr, g.queue
	g.mu.Unlock()
	s := Snapshot{Uptime: time.Since(g.started), Sessions: map[uplink.State]int{}, DownlinkDrops: g.down.total()}
	if b == nil {
		return s
	}
	bs := b.Stats()
	s.LocalClients = int(bs.ClientsConnected)
	s.BrokerMessages = bs.MessagesIn
	s.Sessions, s.Sent = m.Summary()
	s.Spool = q.Totals()
	return s
}
