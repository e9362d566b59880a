package uplink

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/edgegw/edgegw/secrets"
)

// slot is everything the manager keeps for one identity. Its sessions are
// strictly sequential: a new one starts only after the previous one's
// goroutine has returned (and with it its paho client and socket).
type slot struct {
	id secrets.DeviceID

	mu         sync.Mutex // serialises Add, Update, Remove and Subscribe for this identity
	dead       bool       // removed: whoever locks it must look the identity up again
	registered bool
	dev        Device
	ep         *endpoint
	lim        DialectLimits
	sess       *session

	// State that outlives one session; only the running session uses it.
	attempts     attemptLog
	rate         *bucket
	maxPublished uint64       // highest Seq ever handed to paho: a lower one is a resend
	ex           *expressLane // time-critical messages waiting to be sent (express.go)

	subsMu sync.Mutex
	subs   map[string]byte // the device's local subscriptions, mirrored to the cloud

	// extra is dev.Extra for the running session's attempts: UpdateExtra
	// can change it without a restart. Its own lock, since the session
	// must never take mu (Update holds mu while it waits for the session).
	extraMu sync.Mutex
	extra   []secrets.Param

	statMu sync.Mutex
	st     SessionStatus
}

// session is one run of a device's connection loop.
type session struct {
	m           *Manager
	sl          *slot
	dev         Device
	ep          *endpoint
	lim         DialectLimits
	log         deviceLog
	ctx         context.Context
	cancel      context.CancelFunc
	done        chan struct{}
	subsChanged chan struct{} // capacity 1
	act         *actWatch     // followed by Manager.Activate
	notify      <-chan struct{}
	failures    int // consecutive failed attempts or short-lived connections
	attempt     uint64
}

func newSession(m *Manager, sl *slot, parent context.Context) *session {
	ctx, cancel := context.WithCancel(parent)
	return &session{
		m: m, sl: sl, dev: sl.dev, ep: sl.ep, lim: sl.lim,
		log:         deviceLog{l: m.log, id: sl.id},
		ctx:         ctx,
		cancel:      cancel,
		done:        make(chan struct{}),
		subsChanged: make(chan struct{}, 1),
		act:         newActWatchFor(sl.dev),
		notify:      m.cfg.Queue.Notify(sl.id),
	}
}

// stop cancels the session and waits until its paho client is closed.
func (s *session) stop() {
	s.cancel()
	<-s.done
}

// secureMode is the CONNECT's securemode: on Alibaba it states the
// transport (2 encrypted, 3 plain); on EnOS 2 means "signed with the
// deviceSecret" on every transport (3 would mean the productSecret).
func (s *session) secureMode() int {
	if s.dev.Dialect == secrets.Aliyun && !s.ep.encrypted() {
		return 3
	}
	return 2
}

// run is the session's connection loop. It spends most of its life
// blocked in the drain of a connection that has nothing to do, and the
// frames on its stack then decide the stack it keeps: a goroutine's stack
// grows during a connect (signing, logging) and the collector halves it
// again only while the goroutine uses less than a quarter of it. So the
// functions on the idle path — run, useConn, serve, drain, wait — keep
// small frames, and the work around a connection lives in functions that
// are not inlined into them (connectAfter, ended, up): an idle session then
// uses about 1 KiB and its stack returns to 4 KiB
// (TestIdleSessionStack).
func (s *session) run() {
	defer s.finish()
	var delay time.Duration
	for {
		c, next, ok := s.connectAfter(delay)
		switch {
		case !ok:
			return
		case c == nil:
			delay = next
			continue
		}
		if delay, ok = s.useConn(c); !ok {
			return
		}
	}
}

// finish ends the session's goroutine.
func (s *session) finish() {
	s.setState(StateStopped, nil, time.Time{})
	close(s.done)
}

// connectAfter waits delay, the per-device connect window and the
// gateway's connect budget, then makes one attempt. It returns the
// connection, or nil and the wait before the next attempt; ok is false
// when the session is stopping.
//
//go:noinline
func (s *session) connectAfter(delay time.Duration) (c *conn, next time.Duration, ok bool) {
	ctx, clk := s.ctx, s.m.clk
	if sleep(ctx, clk, delay) != nil {
		return nil, 0, false
	}
	if w := s.sl.attempts.wait(s.lim.ConnectWindow, clk.Now()); w > 0 {
		s.setState(StateBackoff, nil, clk.Now().Add(w))
		s.log.Debug("waiting for the per-device connect window", "delay", w)
		if sleep(ctx, clk, w) != nil {
			return nil, 0, false
		}
	}
	s.setState(StateConnecting, nil, time.Time{})
	if s.m.connectBudget.wait(ctx, clk) != nil {
		return nil, 0, false
	}
	s.sl.attempts.record(s.lim.ConnectWindow, clk.Now())
	s.attempt++
	c, err := s.connect(ctx)
	if ctx.Err() != nil {
		if c != nil {
			s.closeConn(c)
		}
		return nil, 0, false
	}
	if err != nil {
		return nil, s.failed(err), true
	}
	return c, 0, true
}

// useConn serves c until it ends and returns the wait before the next
// attempt; ok is false when the session is stopping.
func (s *session) useConn(c *conn) (next time.Duration, ok bool) {
	return s.ended(c, s.serve(s.ctx, c))
}

// ended closes c, which ended with err, and returns the backoff.
//
//go:noinline
func (s *session) ended(c *conn, err error) (time.Duration, bool) {
	clk := s.m.clk
	good := c.acked.Load() || clk.Now().Sub(c.connectedAt) >= s.m.cfg.ResetAfter
	s.closeConn(c)
	if s.ctx.Err() != nil {
		return 0, false
	}
	if good {
		s.failures = 0
	} else {
		s.failures++
	}
	delay := s.lim.Backoff.Delay(s.failures, s.m.rnd())
	s.log.Warn("cloud connection ended", "attempt", s.attempt, "err", err, "retry_in", delay)
	s.setState(StateBackoff, err, clk.Now().Add(delay))
	return delay, true
}

// failed classifies a failed attempt, sets the state and returns the wait
// before the next one.
func (s *session) failed(err error) time.Duration {
	s.failures++
	now := s.m.clk.Now()
	var ce *ConnectError
	isCE := errors.As(err, &ce)
	switch {
	case isCE && ce.Refused():
		d := s.m.cfg.AuthRetry.Delay(s.m.rnd())
		s.log.Error("cloud refused the login; retrying slowly", "attempt", s.attempt, "rc", ce.Code, "err", err, "retry_in", d)
		s.setState(StateAuthFailed, err, now.Add(d))
		return d
	case isCE && ce.Unavailable():
		d := max(s.lim.Backoff.Delay(s.failures, s.m.rnd()), s.m.cfg.UnavailableRetry.Delay(s.m.rnd()))
		s.log.Warn("cloud answered server unavailable", "attempt", s.attempt, "rc", ce.Code, "retry_in", d)
		s.setState(StateBackoff, err, now.Add(d))
		return d
	default:
		d := s.lim.Backoff.Delay(s.failures, s.m.rnd())
		s.log.Warn("cloud connection attempt failed", "attempt", s.attempt, "err", err, "retry_in", d)
		s.setState(StateBackoff, err, now.Add(d))
		return d
	}
}

// conn is one connection attempt: a fresh paho client and the socket it
// dialled through us.
type conn struct {
	client      mqtt.Client
	connectedAt time.Time
	acked       atomic.Bool // a PUBACK arrived on this connection

	mu     sync.Mutex
	nc     net.Conn
	closed bool

	lostOnce sync.Once
	lost     chan struct{}
	lostErr  error
}

func (c *conn) setLost(err error) {
	c.lostOnce.Do(func() {
		if err == nil {
			err = errors.New("connection lost")
		}
		c.lostErr = fmt.Errorf("connection lost: %w", err)
		close(c.lost)
	})
}

func (c *conn) isLost() bool {
	select {
	case <-c.lost:
		return true
	default:
		return false
	}
}

// closeNet closes the socket (and any socket a still running dial
// produces later). After it returns, nothing of this attempt talks to the
// cloud any more.
func (c *conn) closeNet() {
	c.mu.Lock()
	c.closed = true
	nc := c.nc
	c.mu.Unlock()
	if nc != nil {
		_ = nc.Close()
	}
}

// dialFor returns paho's custom open-connection function for attempt c.
func (s *session) dialFor(ctx context.Context, c *conn) mqtt.OpenConnectionFunc {
	tlsCfg := s.ep.tlsFor(s.dev.ClientCert)
	return func(uri *url.URL, _ mqtt.ClientOptions) (net.Conn, error) {
		nc, err := dial(ctx, uri, tlsCfg, s.m.cfg.ConnectTimeout)
		if err != nil {
			return nil, err
		}
		// paho writes the CONNECT as soon as this returns, in this goroutine.
		if err := s.m.connectBudget.admit(ctx, s.m.clk); err != nil {
			_ = nc.Close()
			return nil, err
		}
		if s.m.connHook != nil {
			nc = s.m.connHook(s.dev.ID, nc)
		}
		nc = newCoalescing(newReadBuffered(nc), s.m.cfg.WriteTimeout)
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.closed {
			_ = nc.Close()
			return nil, errors.New("connection attempt aborted")
		}
		c.nc = nc
		return nc, nil
	}
}

// connect makes one attempt with fresh credentials and a new paho client.
func (s *session) connect(ctx context.Context) (*conn, error) {
	now := s.m.clk.Now()
	creds, err := secrets.Sign(secrets.SignParams{
		Dialect:    s.dev.Dialect,
		ProductKey: s.dev.ID.ProductKey,
		DeviceName: s.dev.ID.DeviceName,
		ClientID:   s.dev.clientID(),
		Timestamp:  strconv.FormatInt(now.UnixMilli(), 10),
		SignMethod: s.dev.SignMethod,
		SecureMode: s.secureMode(),
		Extra:      s.sl.currentExtra(),
	}, s.dev.Secret)
	if err != nil {
		return nil, &ConnectError{Err: fmt.Errorf("sign credentials: %w", err)}
	}
	return s.dialCloud(ctx, creds, connectMode{what: "connecting", onMessage: s.onMessage})
}

// connectMode is what a normal connect and an activation connect do
// differently.
type connectMode struct {
	what      string              // the attempt's log message
	onMessage mqtt.MessageHandler // every message the cloud sends
	// ordered is paho's OrderMatters. Off for sessions: paho runs the
	// handler on its own goroutine per message (see
	// ManagerConfig.Downlink). On for activation: the handler then runs in
	// paho's router before a connection loss is reported, so a secret read
	// just before the cloud closes is not missed.
	ordered bool
}

// dialCloud makes one attempt with creds and a new paho client, and waits
// for the CONNACK.
func (s *session) dialCloud(ctx context.Context, creds secrets.Credentials, mode connectMode) (*conn, error) {
	u, err := s.ep.url(s.dev.ID.ProductKey)
	if err != nil {
		return nil, &ConnectError{Err: err}
	}
	s.updateStatus(func(st *SessionStatus) {
		st.Attempts++
		st.ClientID = creds.ClientID
	})
	c := &conn{lost: make(chan struct{})}
	c.client = s.m.newClient(s.clientOptions(ctx, c, u, creds, mode))

	s.log.Debug(mode.what, "attempt", s.attempt, "url", u.Redacted(), "client_id", creds.ClientID)
	if err := s.awaitConnack(ctx, c, s.m.cfg.ConnectTimeout); err != nil {
		return nil, err
	}
	return c, nil
}

// noStore is a paho store that keeps nothing (see clientOptions).
type noStore struct{}

func (noStore) Open()                             {}
func (noStore) Put(string, packets.ControlPacket) {}
func (noStore) Get(string) packets.ControlPacket  { return nil }
func (noStore) All() []string                     { return nil }
func (noStore) Del(string)                        {}
func (noStore) Close()                            {}
func (noStore) Reset()                            {}

// clientOptions returns paho's options for attempt c to u: MQTT 3.1.1, a
// clean session, and none of paho's own reconnects or retries (the session
// reconnects with fresh credentials and its own backoff, and mirrors the
// subscriptions itself). paho dials through dialFor, and a lost connection
// is reported on c.
func (s *session) clientOptions(ctx context.Context, c *conn, u *url.URL, creds secrets.Credentials, mode connectMode) *mqtt.ClientOptions {
	cfg := &s.m.cfg
	opts := mqtt.NewClientOptions()
	opts.AddBroker(u.String())
	opts.SetClientID(creds.ClientID)
	opts.SetUsername(creds.Username)
	opts.SetPassword(creds.Password.Reveal())
	opts.SetProtocolVersion(4)
	opts.SetCleanSession(true)
	opts.SetAutoReconnect(false)
	opts.SetConnectRetry(false)
	opts.SetResumeSubs(false)
	opts.SetOrderMatters(mode.ordered)
	opts.SetKeepAlive(s.lim.KeepAlive)
	opts.SetPingTimeout(20 * time.Second)
	opts.SetConnectTimeout(cfg.ConnectTimeout)
	opts.SetWriteTimeout(cfg.WriteTimeout)
	opts.SetCustomOpenConnectionFn(s.dialFor(ctx, c))
	// paho dials only through dialFor, so the dialer, HTTP headers and
	// WebSocket options it allocates for every client go unused — yet stay
	// with the client for its life. One idle dialer for all (paho wants
	// one), and none of the rest.
	opts.SetDialer(unusedDialer)
	opts.HTTPHeaders, opts.WebsocketOptions = nil, nil
	// paho keeps every publish in flight in its store, under a key it
	// formats, to resend after one of its own reconnects. There are none:
	// each attempt is a new client with a clean session, and what the
	// cloud did not acknowledge is sent again from the spool.
	opts.SetStore(noStore{})
	opts.SetConnectionLostHandler(func(_ mqtt.Client, err error) { c.setLost(err) })
	opts.SetDefaultPublishHandler(mode.onMessage)
	return opts
}

// unusedDialer stands in for paho's dialer, which dialFor replaces; paho
// only reads it.
var unusedDialer = &net.Dialer{Timeout: 30 * time.Second}

// awaitConnack sends c's CONNECT and waits for the CONNACK, the end of ctx
// or a backstop timer (paho bounds the attempt by connectTimeout itself). A
// refusal is a *ConnectError carrying the CONNACK code.
func (s *session) awaitConnack(ctx context.Context, c *conn, connectTimeout time.Duration) error {
	tok := c.client.Connect()
	t := time.NewTimer(connectTimeout + 5*time.Second)
	defer t.Stop()
	select {
	case <-tok.Done():
	case <-ctx.Done():
		s.abort(c, tok)
		return ctx.Err()
	case <-t.C:
		s.abort(c, tok)
		return &ConnectError{Err: fmt.Errorf("no CONNACK within %v", connectTimeout)}
	}
	if err := tok.Error(); err != nil {
		c.closeNet()
		var rc byte
		if ct, ok := tok.(*mqtt.ConnectToken); ok {
			rc = ct.ReturnCode()
		}
		if rc == packets.ErrNetworkError {
			rc = 0
		}
		return &ConnectError{Code: rc, Err: err}
	}
	c.connectedAt = s.m.clk.Now()
	return nil
}

// abort ends an attempt that is still in progress.
func (s *session) abort(c *conn, tok mqtt.Token) {
	c.closeNet()
	t := time.NewTimer(5 * time.Second)
	defer t.Stop()
	select {
	case <-tok.Done():
		if tok.Error() == nil {
			c.client.Disconnect(0)
		}
	case <-t.C:
		c.client.Disconnect(0)
	}
	c.closeNet()
}

// closeConn ends a connection: DISCONNECT within Quiesce, then the socket
// is closed for certain, so the next attempt never overlaps this one.
func (s *session) closeConn(c *conn) {
	c.client.Disconnect(uint(s.m.cfg.Quiesce.Milliseconds()))
	c.closeNet()
	s.updateStatus(func(st *SessionStatus) { st.InFlight = 0 })
}

// serve runs a connected session until it fails or ctx ends.
func (s *session) serve(ctx context.Context, c *conn) error {
	s.up(c)
	subs := newSubSync()
	if err := s.initialSubscribe(ctx, c, subs); err != nil {
		return err
	}
	return s.drain(ctx, c, subs)
}

// up records that c is up.
//
//go:noinline
func (s *session) up(c *conn) {
	s.m.connects.Add(1)
	s.updateStatus(func(st *SessionStatus) {
		st.Connects++
		st.LastConnect = c.connectedAt
	})
	s.setState(StateConnected, nil, time.Time{})
	s.log.Info("cloud session up", "attempt", s.attempt)
}

func (s *session) onMessage(_ mqtt.Client, msg mqtt.Message) {
	if f := s.m.cfg.Downlink; f != nil {
		f(s.dev.ID, msg.Topic(), msg.Payload(), msg.Qos())
	}
}

// setState records a state change (err, when not nil, becomes LastError)
// and reports it to OnState.
func (s *session) setState(state State, err error, next time.Time) {
	var snap SessionStatus
	s.updateStatus(func(st *SessionStatus) {
		st.State = state
		if err != nil {
			st.LastError = err.Error()
		}
		st.NextAttempt = next
		if state == StateStopped {
			st.InFlight = 0
		}
		snap = *st
	})
	if f := s.m.cfg.OnState; f != nil {
		snap.Subscriptions = s.sl.subCount()
		f(snap)
	}
}

func (s *session) updateStatus(f func(*SessionStatus)) {
	s.sl.statMu.Lock()
	f(&s.sl.st)
	s.sl.statMu.Unlock()
}

// setExtra sets the extension parameters of the next attempts.
func (sl *slot) setExtra(extra []secrets.Param) {
	sl.extraMu.Lock()
	sl.extra = extra
	sl.extraMu.Unlock()
}

// currentExtra returns the extension parameters of the next attempt.
func (sl *slot) currentExtra() []secrets.Param {
	sl.extraMu.Lock()
	defer sl.extraMu.Unlock()
	return sl.extra
}

func (sl *slot) subCount() int {
	sl.subsMu.Lock()
	defer sl.subsMu.Unlock()
	return len(sl.subs)
}

func (sl *slot) subsSnapshot() map[string]byte {
	sl.subsMu.Lock()
	defer sl.subsMu.Unlock()
	m := make(map[string]byte, len(sl.subs))
	for f, q := range sl.subs {
		m[f] = q
	}
	return m
}

// deviceLog logs for one device's session: every line carries the device,
// as m.log.With("device", id) would. A logger from With keeps its own copy
// of the handler's state, a few hundred bytes per device held for good,
// for the handful of lines a session logs a day; this one adds the device
// to each line instead.
type deviceLog struct {
	l  *slog.Logger
	id secrets.DeviceID
}

func (d deviceLog) Debug(msg string, args ...any) { d.log(slog.LevelDebug, msg, args) }
func (d deviceLog) Info(msg string, args ...any)  { d.log(slog.LevelInfo, msg, args) }
func (d deviceLog) Warn(msg string, args ...any)  { d.log(slog.LevelWarn, msg, args) }
func (d deviceLog) Error(msg string, args ...any) { d.log(slog.LevelError, msg, args) }

func (d deviceLog) log(level slog.Level, msg string, args []any) {
	ctx := context.Background()
	h := d.l.Handler()
	if !h.Enabled(ctx, level) {
		return
	}
	var pcs [1]uintptr
	runtime.Callers(3, pcs[:]) // the caller of Debug, Info, …
	r := slog.NewRecord(time.Now(), level, msg, pcs[0])
	r.AddAttrs(slog.String("device", d.id.String()))
	r.Add(args...)
	_ = h.Handle(ctx, r)
}
