package uplink

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgegw/edgegw/secrets"
)

// Manager keeps one cloud session per registered device. Devices can be
// added, updated and removed at any time, before or while Run runs.
type Manager struct {
	cfg       ManagerConfig
	clk       Clock
	rnd       func() float64
	log       *slog.Logger
	defaultEP *endpoint
	endpoints map[secrets.Dialect]*endpoint

	connectBudget *connectLimiter // gateway-wide connection attempts
	gwRate        *bucket         // gateway-wide messages
	gwBytes       *bucket         // gateway-wide bytes
	ex            expressState    // time-critical messages (express.go)

	// Seams for tests in this package.
	newClient func(*mqtt.ClientOptions) mqtt.Client
	connHook  func(secrets.DeviceID, net.Conn) net.Conn

	mu     sync.Mutex
	slots  map[secrets.DeviceID]*slot
	phase  phase
	runCtx context.Context
	wg     sync.WaitGroup // running sessions and the express sweeper
	live   atomic.Int64   // running sessions, for the stop report

	connects atomic.Uint64 // cloud connections made (CONNACK accepted)
}

type phase int

const (
	phaseNew phase = iota
	phaseRunning
	phaseStopped
)

// NewManager validates cfg and returns a manager; sessions start with Run.
// It routes paho's package-global loggers to cfg.Logger (once per process,
// see RoutePahoLogs).
func NewManager(cfg ManagerConfig) (*Manager, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("configure uplink: %w", err)
	}
	m := &Manager{
		cfg:       cfg,
		clk:       cfg.Clock,
		rnd:       cfg.Random,
		log:       cfg.Logger,
		endpoints: make(map[secrets.Dialect]*endpoint),
		newClient: mqtt.NewClient,
		slots:     make(map[secrets.DeviceID]*slot),
		ex:        newExpressState(cfg.Clock),
	}
	if m.rnd == nil {
		m.rnd = rand.Float64
	}
	if cfg.Endpoint.URL != "" {
		if m.defaultEP, err = compileEndpoint(cfg.Endpoint); err != nil {
			return nil, fmt.Errorf("configure uplink: %w", err)
		}
	}
	for d, e := range cfg.Endpoints {
		if d != secrets.Aliyun && d != secrets.EnOS {
			return nil, fmt.Errorf("configure uplink: endpoint for unknown dialect %q", d)
		}
		if m.endpoints[d], err = compileEndpoint(e); err != nil {
			return nil, fmt.Errorf("configure uplink: %s %w", d, err)
		}
	}
	now := m.clk.Now()
	m.connectBudget = newConnectLimiter(cfg.ConnectRate, now)
	m.gwRate = newBucket(cfg.GatewayRate, now)
	m.gwBytes = newBucket(cfg.GatewayByteRate, now)
	RoutePahoLogs(cfg.Logger)
	return m, nil
}

// Run starts the sessions of all registered devices (and of devices added
// later) and blocks until ctx ends. Then it stops every session — in-flight
// messages get Quiesce to be acknowledged, each paho client sends DISCONNECT
// and its socket is closed — and returns nil, or an error when sessions did
// not stop within StopTimeout. Run may be called once.
func (m *Manager) Run(ctx context.Context) error {
	m.mu.Lock()
	if m.phase != phaseNew {
		m.mu.Unlock()
		return errors.New("run uplink manager: it already ran")
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	m.runCtx, m.phase = runCtx, phaseRunning
	m.wg.Go(func() { m.sweepExpress(runCtx) })
	slots := make([]*slot, 0, len(m.slots))
	for _, sl := range m.slots {
		slots = append(slots, sl)
	}
	m.mu.Unlock()

	for _, sl := range slots {
		sl.mu.Lock()
		if !sl.dead && sl.registered && sl.sess == nil {
			m.startLocked(sl)
		}
		sl.mu.Unlock()
	}
	m.log.Info("uplink manager running", "devices", len(slots))
	<-ctx.Done()

	m.mu.Lock()
	m.phase = phaseStopped
	m.mu.Unlock()
	cancel()
	done := make(chan struct{})
	go func() {
		m.wg.Wait()
		close(done)
	}()
	t := time.NewTimer(m.cfg.StopTimeout)
	defer t.Stop()
	select {
	case <-done:
		m.log.Info("uplink manager stopped")
		return nil
	case <-t.C:
		return fmt.Errorf("stop uplink manager: %d sessions still running after %v", m.live.Load(), m.cfg.StopTimeout)
	}
}

// Add registers a device and, while Run runs, starts its session.
func (m *Manager) Add(dev Device) error {
	ep, lim, err := m.resolve(dev)
	if err != nil {
		return fmt.Errorf("add device %s: %w", dev.ID, err)
	}
	sl, err := m.lockSlot(dev.ID, true)
	if err != nil {
		return fmt.Errorf("add device %s: %w", dev.ID, err)
	}
	defer sl.mu.Unlock()
	if sl.registered {
		return fmt.Errorf("add device %s: %w", dev.ID, ErrDeviceExists)
	}
	sl.registered = true
	sl.dev, sl.ep, sl.lim = dev, ep, lim
	sl.setExtra(dev.Extra)
	sl.rate = newBucket(lim.MessageRate, m.clk.Now())
	sl.subs = make(map[string]byte)
	sl.statMu.Lock()
	sl.st = SessionStatus{Device: dev.ID, Dialect: dev.Dialect, State: StateIdle}
	sl.statMu.Unlock()
	m.startLocked(sl)
	return nil
}

// Update replaces a device's configuration (a new secret, for instance):
// its session is stopped completely — paho client disconnected, socket
// closed — before a new one starts. Subscriptions and counters are kept.
func (m *Manager) Update(dev Device) error {
	ep, lim, err := m.resolve(dev)
	if err != nil {
		return fmt.Errorf("update device %s: %w", dev.ID, err)
	}
	sl, err := m.lockSlot(dev.ID, false)
	if err != nil {
		return fmt.Errorf("update device %s: %w", dev.ID, err)
	}
	defer sl.mu.Unlock()
	if !sl.registered {
		return fmt.Errorf("update device %s: %w", dev.ID, ErrUnknownDevice)
	}
	m.stopLocked(sl)
	if dev.Dialect != sl.dev.Dialect || lim.MessageRate != sl.lim.MessageRate {
		sl.rate = newBucket(lim.MessageRate, m.clk.Now())
	}
	sl.dev, sl.ep, sl.lim = dev, ep, lim
	sl.setExtra(dev.Extra)
	sl.statMu.Lock()
	sl.st.Dialect, sl.st.State, sl.st.NextAttempt = dev.Dialect, StateIdle, time.Time{}
	sl.statMu.Unlock()
	m.startLocked(sl)
	return nil
}

// ExtraUpdate says what UpdateExtra did.
type ExtraUpdate struct {
	Prev        []secrets.Param // the parameters the session carried before
	Changed     bool            // the new ones differ (nil and empty are alike)
	Reconnected bool            // the session was restarted to carry them at once
}

// UpdateExtra replaces the extension parameters a device's session carries
// in its clientId (Device.Extra). Every connection attempt from now on
// carries them. When they change what the cloud does for the session
// (secrets.ConnectParamsChangeSession: _ss, ext) the running session is
// restarted as with Update — the old connection is closed before the new
// one is made, never two sessions for the identity; a change of
// informational ones (_v, lan, gw) waits for the next reconnect, so it
// costs no reconnect and no resent messages. Unchanged parameters change
// nothing.
func (m *Manager) UpdateExtra(id secrets.DeviceID, extra []secrets.Param) (ExtraUpdate, error) {
	sl, err := m.lockSlot(id, false)
	if err != nil {
		return ExtraUpdate{}, fmt.Errorf("update extension parameters of device %s: %w", id, err)
	}
	defer sl.mu.Unlock()
	if !sl.registered {
		return ExtraUpdate{}, fmt.Errorf("update extension parameters of device %s: %w", id, ErrUnknownDevice)
	}
	res := ExtraUpdate{Prev: sl.dev.Extra}
	if slices.Equal(res.Prev, extra) {
		return res, nil
	}
	dev := sl.dev
	dev.Extra = slices.Clone(extra)
	if err := dev.validate(); err != nil {
		return res, fmt.Errorf("update extension parameters of device %s: %w", id, err)
	}
	res.Changed = true
	if !secrets.ConnectParamsChangeSession(res.Prev, extra) {
		sl.dev = dev
		sl.setExtra(dev.Extra)
		return res, nil
	}
	m.stopLocked(sl)
	sl.dev = dev
	sl.setExtra(dev.Extra)
	sl.statMu.Lock()
	sl.st.State, sl.st.NextAttempt = StateIdle, time.Time{}
	sl.statMu.Unlock()
	m.startLocked(sl)
	res.Reconnected = true
	return res, nil
}

// Remove stops a device's session (closing its paho client) and forgets
// the device and its subscriptions. Its queued messages stay in the queue.
func (m *Manager) Remove(id secrets.DeviceID) error {
	sl, err := m.lockSlot(id, false)
	if err != nil {
		return fmt.Errorf("remove device %s: %w", id, err)
	}
	defer sl.mu.Unlock()
	if !sl.registered {
		return fmt.Errorf("remove device %s: %w", id, ErrUnknownDevice)
	}
	m.stopLocked(sl)
	m.mu.Lock()
	sl.dead = true
	if m.slots[id] == sl {
		delete(m.slots, id)
	}
	m.mu.Unlock()
	return nil
}

// Subscribe mirrors a device's local subscriptions on its cloud session:
// filters maps topic filter to QoS (capped at 1, the clouds' maximum). The
// filters are remembered and restored on every reconnect. It returns once
// they are recorded; the SUBSCRIBE follows asynchronously.
func (m *Manager) Subscribe(id secrets.DeviceID, filters map[string]byte) error {
	for f := range filters {
		if err := checkFilter(id, f); err != nil {
			return fmt.Errorf("subscribe device %s: %w", id, err)
		}
	}
	return m.changeSubs(id, "subscribe", func(subs map[string]byte) {
		for f, q := range filters {
			subs[f] = min(q, 1)
		}
	})
}

// Unsubscribe removes filters from a device's mirrored subscriptions.
func (m *Manager) Unsubscribe(id secrets.DeviceID, filters ...string) error {
	return m.changeSubs(id, "unsubscribe", func(subs map[string]byte) {
		for _, f := range filters {
			delete(subs, f)
		}
	})
}

func (m *Manager) changeSubs(id secrets.DeviceID, verb string, change func(map[string]byte)) error {
	sl, err := m.lockSlot(id, false)
	if err != nil {
		return fmt.Errorf("%s device %s: %w", verb, id, err)
	}
	defer sl.mu.Unlock()
	if !sl.registered {
		return fmt.Errorf("%s device %s: %w", verb, id, ErrUnknownDevice)
	}
	sl.subsMu.Lock()
	change(sl.subs)
	sl.subsMu.Unlock()
	if s := sl.sess; s != nil {
		select {
		case s.subsChanged <- struct{}{}:
		default:
		}
	}
	return nil
}

func checkFilter(id secrets.DeviceID, f string) error {
	if !utf8.ValidString(f) || !secrets.TopicAllowed(id.ProductKey, id.DeviceName, f, true) {
		return fmt.Errorf("filter %q is not a valid filter of this device", f)
	}
	return nil
}

// Connects returns the number of cloud connections made so far (each
// accepted CONNACK), for callers that watch for bursts of them.
func (m *Manager) Connects() uint64 { return m.connects.Load() }

// Status returns the status of one device.
func (m *Manager) Status(id secrets.DeviceID) (SessionStatus, bool) {
	m.mu.Lock()
	sl := m.slots[id]
	m.mu.Unlock()
	if sl == nil {
		return SessionStatus{}, false
	}
	return sl.status()
}

// Statuses returns the status of every registered device, sorted by
// device.
func (m *Manager) Statuses() []SessionStatus {
	m.mu.Lock()
	slots := make([]*slot, 0, len(m.slots))
	for _, sl := range m.slots {
		slots = append(slots, sl)
	}
	m.mu.Unlock()
	out := make([]SessionStatus, 0, len(slots))
	for _, sl := range slots {
		if st, ok := sl.status(); ok {
			out = append(out, st)
		}
	}
	// Each device's name once, not once per comparison.
	keys := make([]string, len(out))
	for i := range out {
		keys[i] = out[i].Device.String()
	}
	sort.Sort(statusesByDevice{out, keys})
	return out
}

// statusesByDevice sorts statuses by their device names, keys.
type statusesByDevice struct {
	st   []SessionStatus
	keys []string
}

func (s statusesByDevice) Len() int           { return len(s.st) }
func (s statusesByDevice) Less(i, j int) bool { return s.keys[i] < s.keys[j] }
func (s statusesByDevice) Swap(i, j int) {
	s.st[i], s.st[j] = s.st[j], s.st[i]
	s.keys[i], s.keys[j] = s.keys[j], s.keys[i]
}

// Summary counts the sessions by state and sums the messages they sent:
// what Statuses tells in aggregate, without copying or sorting each
// device's status (the gateway's periodic status line asks for it).
func (m *Manager) Summary() (byState map[State]int, sent uint64) {
	m.mu.Lock()
	slots := make([]*slot, 0, len(m.slots))
	for _, sl := range m.slots {
		slots = append(slots, sl)
	}
	m.mu.Unlock()
	byState = map[State]int{}
	for _, sl := range slots {
		sl.statMu.Lock()
		if sl.st.Device == sl.id {
			byState[sl.st.State]++
			sent += sl.st.Sent
		}
		sl.statMu.Unlock()
	}
	return byState, sent
}

func (sl *slot) status() (SessionStatus, bool) {
	sl.statMu.Lock()
	st := sl.st
	sl.statMu.Unlock()
	if st.Device != sl.id { // not yet (or no longer) registered
		return SessionStatus{}, false
	}
	st.Subscriptions = sl.subCount()
	return st, true
}

// resolve finds a device's endpoint and limits and validates the device.
func (m *Manager) resolve(dev Device) (*endpoint, DialectLimits, error) {
	if err := dev.validate(); err != nil {
		return nil, DialectLimits{}, err
	}
	ep := m.endpoints[dev.Dialect]
	if ep == nil {
		ep = m.defaultEP
	}
	if ep == nil {
		return nil, DialectLimits{}, fmt.Errorf("no endpoint configured for dialect %s", dev.Dialect)
	}
	if err := ep.checkProductKey(dev.ID.ProductKey); err != nil {
		return nil, DialectLimits{}, err
	}
	if _, err := ep.url(dev.ID.ProductKey); err != nil {
		return nil, DialectLimits{}, err
	}
	if dev.ClientCert != nil && !ep.encrypted() {
		return nil, DialectLimits{}, fmt.Errorf("a client certificate needs a tls or wss endpoint, not %s", ep.scheme)
	}
	return ep, m.cfg.Limits[dev.Dialect], nil
}

// lockSlot returns the identity's slot, locked. create makes one when
// there is none.
func (m *Manager) lockSlot(id secrets.DeviceID, create bool) (*slot, error) {
	for {
		m.mu.Lock()
		if m.phase == phaseStopped {
			m.mu.Unlock()
			return nil, ErrStopped
		}
		sl := m.slots[id]
		if sl == nil {
			if !create {
				m.mu.Unlock()
				return nil, ErrUnknownDevice
			}
			sl = &slot{id: id, ex: newExpressLane()}
			m.slots[id] = sl
		}
		m.mu.Unlock()
		sl.mu.Lock()
		if !sl.dead {
			return sl, nil
		}
		sl.mu.Unlock()
	}
}

// startLocked starts the slot's session if the manager runs. The caller
// holds sl.mu and has stopped any previous session.
func (m *Manager) startLocked(sl *slot) {
	m.mu.Lock()
	if m.phase != phaseRunning {
		m.mu.Unlock()
		return
	}
	m.wg.Add(1)
	m.live.Add(1)
	s := newSession(m, sl, m.runCtx)
	m.mu.Unlock()
	sl.sess = s
	go func() {
		defer m.wg.Done()
		defer m.live.Add(-1)
		s.runWithActivation()
	}()
}

// stopLocked stops the slot's session and waits for it. The caller holds
// sl.mu.
func (m *Manager) stopLocked(sl *slot) {
	if sl.sess != nil {
		sl.sess.stop()
		sl.sess = nil
	}
}
