package uplink

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/edgegw/edgegw/secrets"
)

// Device is one registered device as its cloud session needs it.
type Device struct {
	ID      secrets.DeviceID // productKey and deviceName (EnOS: deviceKey)
	Dialect secrets.Dialect
	// Secret is the deviceSecret the session signs its logins with.
	Secret secrets.Secret
	// ClientID is the bare clientId (before '|'); empty means the
	// deviceName, as the EnOS Node SDK does and Alibaba accepts.
	ClientID string
	// SignMethod defaults to secrets.DefaultSignMethod(Dialect).
	SignMethod secrets.SignMethod
	// ClientCert, when set, is presented in the TLS handshake (EnOS
	// two-way TLS on 18883). It requires a tls or wss endpoint.
	ClientCert *tls.Certificate
	// Extra are extension parameters appended to the clientId's |…| block
	// after edgegw's own securemode, signmethod and timestamp, on every
	// attempt: on Alibaba the _ss, ext, _v, lan and gw the device's
	// firmware presented (secrets.FilterConnectParams), so the cloud treats
	// the session as that firmware (docs/protocol.md §2.2, §7.9). They are
	// not signed. Manager.UpdateExtra changes them.
	Extra []secrets.Param
	// ProductSecret, for a device without Secret, is used to obtain the
	// deviceSecret first: EnOS dynamic activation (securemode=3) or Alibaba
	// MQTT dynamic registration (authType=register, TLS only). See
	// ActivationStore.
	ProductSecret secrets.Secret
	// Activation stores what the activation obtains; required when Secret
	// is empty.
	Activation ActivationStore
}

func (d Device) clientID() string {
	if d.ClientID != "" {
		return d.ClientID
	}
	return d.ID.DeviceName
}

// validate checks the device's fields by signing once: it catches a bad
// clientId, sign method or dialect at Add time instead of at every attempt.
func (d Device) validate() error {
	if d.ID.ProductKey == "" || d.ID.DeviceName == "" {
		return errors.New("productKey and deviceName are required")
	}
	if strings.Contains(d.ID.ProductKey, "/") || strings.Contains(d.ID.DeviceName, "/") {
		return errors.New("productKey and deviceName must not contain '/'")
	}
	if d.Dialect != secrets.Aliyun && d.Dialect != secrets.EnOS {
		return fmt.Errorf("unknown dialect %q", d.Dialect)
	}
	signWith := d.Secret
	if signWith.IsZero() {
		if d.ProductSecret.IsZero() {
			return errors.New("the device secret is empty, and there is no productSecret to obtain one with")
		}
		if d.Activation == nil {
			return errors.New("a device without secret needs an activation store")
		}
		signWith = d.ProductSecret
	}
	_, err := secrets.Sign(secrets.SignParams{
		Dialect: d.Dialect, ProductKey: d.ID.ProductKey, DeviceName: d.ID.DeviceName,
		ClientID: d.clientID(), Timestamp: "0", SignMethod: d.SignMethod, Extra: d.Extra,
	}, signWith)
	return err
}

// KeepAliveRange returns the keepalive interval the cloud of dialect d
// accepts: Alibaba 30–1200 s (a CONNECT outside is refused), EnOS 60–300 s.
func KeepAliveRange(d secrets.Dialect) (lo, hi time.Duration) {
	if d == secrets.EnOS {
		return 60 * time.Second, 300 * time.Second
	}
	return 30 * time.Second, 1200 * time.Second
}

// ValidateKeepAlive reports whether keepalive ka is accepted by dialect d's
// cloud, with an error naming the allowed range.
func ValidateKeepAlive(d secrets.Dialect, ka time.Duration) error {
	lo, hi := KeepAliveRange(d)
	if ka%time.Second != 0 {
		return fmt.Errorf("keepalive %v for %s: must be whole seconds", ka, d)
	}
	if ka < lo || ka > hi {
		return fmt.Errorf("keepalive %v for %s: the cloud accepts %v to %v", ka, d, lo, hi)
	}
	return nil
}

// DialectLimits are the per-device rules of one cloud that a session follows.
type DialectLimits struct {
	// KeepAlive is the MQTT keepalive; it must be within KeepAliveRange.
	KeepAlive time.Duration
	// MaxPayload is the largest payload the cloud accepts; a larger message
	// is dead-lettered, not published.
	MaxPayload int
	// MessageRate paces each device's publishes (the cloud drops what
	// exceeds its per-device rate). PerSecond 0 means unlimited.
	MessageRate Rate
	// Backoff governs reconnection after failures and dropped connections.
	Backoff Backoff
	// ConnectWindow caps each device's connection attempts.
	ConnectWindow ConnectWindow
}

// DefaultLimits returns edgegw's defaults for dialect d (docs/protocol.md §8 and
// §5.4): Alibaba keepalive 300 s, payloads up to 256 KiB, 30 messages/s per
// device, backoff 1 s doubling to 2 min; EnOS keepalive 120 s, payloads up
// to 512 KiB, no message rate, backoff of at least 30 s after a failure
// (up to 5 min) and at most 3 connection attempts per 2 minutes (EnOS blocks
// a device for 5 minutes after 4).
func DefaultLimits(d secrets.Dialect) DialectLimits {
	if d == secrets.EnOS {
		return DialectLimits{
			KeepAlive:     120 * time.Second,
			MaxPayload:    512 << 10,
			Backoff:       Backoff{Initial: 10 * time.Second, Max: 5 * time.Minute, Floor: 30 * time.Second},
			ConnectWindow: ConnectWindow{Max: 3, Per: 2 * time.Minute},
		}
	}
	return DialectLimits{
		KeepAlive:   300 * time.Second,
		MaxPayload:  256 << 10,
		MessageRate: Rate{PerSecond: 30, Burst: 1},
		Backoff:     Backoff{Initial: time.Second, Max: 2 * time.Minute},
	}
}

func (l DialectLimits) validate(d secrets.Dialect) error {
	if err := ValidateKeepAlive(d, l.KeepAlive); err != nil {
		return err
	}
	if l.MaxPayload <= 0 {
		return fmt.Errorf("max payload %d: must be positive", l.MaxPayload)
	}
	if err := l.MessageRate.Validate(); err != nil {
		return fmt.Errorf("message %w", err)
	}
	if err := l.Backoff.Validate(); err != nil {
		return err
	}
	return l.ConnectWindow.Validate()
}

// Endpoint says where and how the sessions connect.
type Endpoint struct {
	// URL is the broker URL with the placeholder {productKey}, e.g.
	// tls://{productKey}.iot-as-mqtt.cn-shanghai.aliyuncs.com:8883 or
	// tls://mqtt-eu2.envisioniot.com:18883. Schemes: tcp (also mqtt),
	// tls (also ssl, mqtts, tcps), ws and wss. A missing port defaults to
	// 1883, 8883, 80 and 443 respectively. The Alibaba securemode is derived
	// from the scheme: 2 for tls and wss, 3 for tcp and ws; an EnOS login
	// with the deviceSecret is securemode 2 on every transport (EnOS
	// securemode 3 means the productSecret, docs/protocol.md §4).
	URL string
	// TLS is the base TLS configuration (optional). Server verification is
	// always on: when TLS.RootCAs is nil the system roots are used.
	TLS *tls.Config
	// ExtraRoots are added to the trust roots: the hook for the vendors'
	// roots (GlobalSign R1/R6, Aliyun IoT Root CA), which packaging ships.
	ExtraRoots []*x509.Certificate
	// CAFile and CAPEM add PEM-encoded CA certificates to the trust roots.
	CAFile string
	CAPEM  []byte
}

// ManagerConfig configures a Manager. Zero fields take the defaults named.
type ManagerConfig struct {
	// Endpoint is used for every dialect that has no entry in Endpoints.
	Endpoint  Endpoint
	Endpoints map[secrets.Dialect]Endpoint
	// Queue holds each device's messages (required).
	Queue Queue
	// Logger receives the sessions' logs (default: discard).
	Logger *slog.Logger
	// Clock drives signing timestamps, backoff, rate limits and stall
	// detection (default SystemClock).
	Clock Clock
	// Random returns uniform numbers in [0, 1) for jitter (default
	// math/rand/v2.Float64). It must be safe for concurrent use.
	Random func() float64
	// Limits replaces DefaultLimits for a dialect (use DefaultLimits as the
	// starting point; a value given here is used as is).
	Limits map[secrets.Dialect]DialectLimits

	// ConnectRate is the gateway-wide budget of connection attempts shared
	// by all sessions (default 50/s, burst 50). A negative PerSecond means
	// unlimited.
	ConnectRate Rate
	// ConnectTimeout bounds one attempt's dial, TLS handshake and CONNACK
	// (default 30 s).
	ConnectTimeout time.Duration
	// WriteTimeout bounds one packet write (default 30 s).
	WriteTimeout time.Duration
	// AuthRetry is the wait after a refused login (CONNACK 1, 2, 4 or 5):
	// the session shows auth-failed (default 5–15 min).
	AuthRetry RetryWindow
	// UnavailableRetry is the least wait after CONNACK 3, server
	// unavailable (default 1–5 min).
	UnavailableRetry RetryWindow
	// ResetAfter: a connection that stayed up this long resets the backoff
	// (default 1 min); so does the first PUBACK on it.
	ResetAfter time.Duration

	// Window is the number of messages a device may have in flight
	// (default 16).
	Window int
	// GatewayRate and GatewayByteRate are optional gateway-wide budgets of
	// messages/s and bytes/s shared by all devices (0 = unlimited).
	GatewayRate     Rate
	GatewayByteRate Rate
	// StallTimeout: a session with messages in flight that gets no PUBACK
	// for this long is torn down and reconnected (default 30 s). It must
	// exceed the time the slowest link needs to carry Window messages.
	StallTimeout time.Duration
	// LiveFirst sends each device's fresh messages ahead of its backlog,
	// each lane in its original order. Fresh means appended after the
	// device's current cloud connection came up (see livefirst.go); when
	// both lanes have messages waiting, at least one in 8 is taken from the
	// backlog, so a device whose live traffic fills its rate still drains
	// it. Queue must implement LiveQueue.
	LiveFirst bool
	// TimeCritical are the TTLs of time-critical messages (NTP requests,
	// RRPC responses, replies to cloud requests): they bypass the backlog
	// and are dropped, counted, once their TTL passed (see Expedite).
	TimeCritical TimeCritical
	// Quiesce bounds the wait for in-flight PUBACKs and for the DISCONNECT
	// when a session stops (default 250 ms).
	Quiesce time.Duration
	// StopTimeout bounds Run's shutdown after its context ends (default 10 s).
	StopTimeout time.Duration

	// Downlink receives every message the cloud sends to a device. It runs
	// on its own goroutine per message (paho's OrderMatters is off) and the
	// cloud's PUBACK follows its return, so it should hand off and return.
	Downlink func(id secrets.DeviceID, topic string, payload []byte, qos byte)
	// OnState is called on every state change of a session, on the
	// session's goroutine: it must not block.
	OnState func(SessionStatus)
}

const (
	defaultConnectRate    = 50
	defaultConnectTimeout = 30 * time.Second
	defaultWriteTimeout   = 30 * time.Second
	defaultResetAfter     = time.Minute
	defaultWindow         = 16
	defaultStallTimeout   = 30 * time.Second
	defaultQuiesce        = 250 * time.Millisecond
	defaultStopTimeout    = 10 * time.Second
)

// withDefaults fills zero fields and validates the result.
func (c ManagerConfig) withDefaults() (ManagerConfig, error) {
	if c.Queue == nil {
		return c, errors.New("a queue is required")
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Clock == nil {
		c.Clock = SystemClock{}
	}
	if c.ConnectRate.PerSecond == 0 {
		c.ConnectRate = Rate{PerSecond: defaultConnectRate, Burst: defaultConnectRate}
	}
	if c.ConnectRate.PerSecond < 0 {
		c.ConnectRate = Rate{}
	}
	if err := c.ConnectRate.Validate(); err != nil {
		return c, fmt.Errorf("connect %w", err)
	}
	setDur := func(p *time.Duration, def time.Duration, name string) error {
		if *p == 0 {
			*p = def
		}
		if *p < 0 {
			return fmt.Errorf("%s %v: must be positive", name, *p)
		}
		return nil
	}
	for _, f := range []struct {
		p    *time.Duration
		def  time.Duration
		name string
	}{
		{&c.ConnectTimeout, defaultConnectTimeout, "connect timeout"},
		{&c.WriteTimeout, defaultWriteTimeout, "write timeout"},
		{&c.ResetAfter, defaultResetAfter, "reset after"},
		{&c.StallTimeout, defaultStallTimeout, "stall timeout"},
		{&c.Quiesce, defaultQuiesce, "quiesce"},
		{&c.StopTimeout, defaultStopTimeout, "stop timeout"},
	} {
		if err := setDur(f.p, f.def, f.name); err != nil {
			return c, err
		}
	}
	var err error
	if c.TimeCritical, err = c.TimeCritical.withDefaults(); err != nil {
		return c, fmt.Errorf("time-critical %w", err)
	}
	if c.AuthRetry == (RetryWindow{}) {
		c.AuthRetry = RetryWindow{Min: 5 * time.Minute, Max: 15 * time.Minute}
	}
	if err := c.AuthRetry.Validate(); err != nil {
		return c, fmt.Errorf("auth retry: %w", err)
	}
	if c.UnavailableRetry == (RetryWindow{}) {
		c.UnavailableRetry = RetryWindow{Min: time.Minute, Max: 5 * time.Minute}
	}
	if err := c.UnavailableRetry.Validate(); err != nil {
		return c, fmt.Errorf("unavailable retry: %w", err)
	}
	if c.Window == 0 {
		c.Window = defaultWindow
	}
	if c.Window < 1 || c.Window > 65000 {
		return c, fmt.Errorf("window %d: want 1 to 65000", c.Window)
	}
	if _, ok := c.Queue.(LiveQueue); c.LiveFirst && !ok {
		return c, fmt.Errorf("live-first: the queue (%T) has no Watermark", c.Queue)
	}
	if err := c.GatewayRate.Validate(); err != nil {
		return c, fmt.Errorf("gateway %w", err)
	}
	if err := c.GatewayByteRate.Validate(); err != nil {
		return c, fmt.Errorf("gateway byte %w", err)
	}
	limits := make(map[secrets.Dialect]DialectLimits, 2)
	for _, d := range []secrets.Dialect{secrets.Aliyun, secrets.EnOS} {
		limits[d] = DefaultLimits(d)
	}
	for d, l := range c.Limits {
		if d != secrets.Aliyun && d != secrets.EnOS {
			return c, fmt.Errorf("limits for unknown dialect %q", d)
		}
		if err := l.validate(d); err != nil {
			return c, fmt.Errorf("limits for %s: %w", d, err)
		}
		limits[d] = l
	}
	c.Limits = limits
	return c, nil
}
