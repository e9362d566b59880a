package uplink

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/edgegw/edgegw/internal/logsafe"
	"github.com/edgegw/edgegw/secrets"
)

// States of a session whose device has no deviceSecret yet and obtains it
// with its product's productSecret first (dynamic activation).
const (
	// StateActivating: an activation attempt is in progress (or waiting for
	// the connect budget), or an issued deviceSecret is being stored.
	StateActivating State = "activating"
	// StateActivationFailed: the cloud refused the activation (CONNACK 1, 2,
	// 4 or 5: the device is already activated, the productSecret is wrong,
	// dynamic activation is not enabled), or the configuration cannot work
	// (Alibaba registration without TLS). It is not retried: the session
	// waits until the device is updated or removed. LastError says why.
	StateActivationFailed State = "activation-failed"
)

// Sources of activated deviceSecrets, as passed to
// ActivationStore.StoreDeviceSecret.
const (
	// SourceEnOSActivate: EnOS dynamic activation (securemode=3).
	SourceEnOSActivate = "enos-activate"
	// SourceAliyunRegister: Alibaba MQTT dynamic registration
	// (authType=register).
	SourceAliyunRegister = "aliyun-register"
)

// ActivationStore keeps the outcome of a device's dynamic activation
// durably. A session calls it from its own goroutine; the calls must not
// call back into the Manager for the same device (Update or Remove would
// wait for the calling session to end).
type ActivationStore interface {
	// DeviceSecret returns the deviceSecret stored for the device, or a
	// zero Secret when it has none. It is consulted before every activation
	// attempt, so a secret stored by an earlier session (or set by an
	// operator) is used instead of activating again.
	DeviceSecret(id secrets.DeviceID) (secrets.Secret, error)
	// StoreDeviceSecret stores a deviceSecret the cloud issued. It must
	// return only once the secret is durable (written and fsynced): the
	// cloud may never issue it again. The session answers the cloud,
	// disconnects and logs in with the secret only after it returned nil;
	// on an error it keeps the secret in memory and calls it again.
	StoreDeviceSecret(id secrets.DeviceID, secret secrets.Secret, source string) error
	// ActivationFailed records that the activation was refused and will not
	// be retried automatically. reason holds no secret.
	ActivationFailed(id secrets.DeviceID, reason string) error
}

// storeRetry paces the retries of a failing StoreDeviceSecret (a full or
// failing disk): independent of the cloud's connect limits, because no
// connection is made.
var storeRetry = Backoff{Initial: 50 * time.Millisecond, Max: 10 * time.Second}

// activationReplyWait bounds the wait for the PUBACK of the EnOS
// activation reply before the activation connection is closed.
const activationReplyWait = 5 * time.Second

// maxIssuedSecret is the longest deviceSecret accepted from the cloud (the
// registry's limit).
const maxIssuedSecret = 512

// runWithActivation is the session's goroutine: when the device has no
// deviceSecret it first obtains one with the productSecret, then it runs
// the normal connection loop with it. Activation and the normal session
// are strictly sequential, so the identity never has two connections.
func (s *session) runWithActivation() {
	if s.dev.Secret.IsZero() && !s.activate() {
		s.act.end(secrets.Secret{}, nil)
		s.setState(StateStopped, nil, time.Time{})
		close(s.done)
		return
	}
	s.act.end(s.dev.Secret, nil)
	s.run()
}

// Errors returned by Manager.Activate.
var (
	// ErrActivationRefused: the cloud refused the device's activation, or
	// it cannot work as configured; the session waits for an operator. The
	// error wrapping it says why (without secrets).
	ErrActivationRefused = errors.New("activation refused")
	// ErrNoSession: the device's session is not running (the manager has
	// not started, or the session is being replaced).
	ErrNoSession = errors.New("device has no running session")
)

// actWatch lets Manager.Activate follow a session's activation: it is
// signalled after every activation attempt and when the activation ends.
type actWatch struct {
	kick chan struct{} // capacity 1: a device is waiting (see sleepOrKick)

	mu      sync.Mutex
	changed chan struct{} // closed (and replaced) on every change
	secret  secrets.Secret
	refused error // the activation was refused: parked
	ended   bool  // activate returned
	lastErr error // the last attempt's failure
}

func newActWatch() *actWatch {
	return &actWatch{kick: make(chan struct{}, 1), changed: make(chan struct{})}
}

// newActWatchFor returns the watch of a session for dev: a device that has
// its deviceSecret (almost all of them) gets one that has already ended,
// with no channels of its own — nothing kicks or waits on it.
func newActWatchFor(dev Device) *actWatch {
	if dev.Secret.IsZero() {
		return newActWatch()
	}
	return &actWatch{changed: closedCh, secret: dev.Secret, ended: true}
}

func (w *actWatch) signal() {
	close(w.changed)
	w.changed = make(chan struct{})
}

// attemptFailed records a failed attempt.
func (w *actWatch) attemptFailed(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.lastErr = err
	w.signal()
}

// end records the outcome: a secret, a refusal, or neither (stopped).
func (w *actWatch) end(secret secrets.Secret, refused error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ended {
		return
	}
	w.secret, w.refused, w.ended = secret, refused, true
	w.signal()
}

// Activate is for a device that asks the gateway for its deviceSecret
// itself (its firmware activates with the productSecret): it returns the
// deviceSecret of a device whose session obtained it, and otherwise asks
// the session to make its next activation attempt now (not before the
// dialect's initial backoff has passed since the last attempt, nor against
// the per-device connect window or the gateway's connect budget) and waits
// for its outcome, at most until ctx ends. The secret it returns is
// already stored durably by the ActivationStore.
//
// Errors: ErrUnknownDevice, ErrNoSession, ErrActivationRefused (wrapped
// with the reason), the error of a failed attempt (the cloud is
// unreachable, say: try again later), or ctx's error.
func (m *Manager) Activate(ctx context.Context, id secrets.DeviceID) (secrets.Secret, error) {
	sl, err := m.lockSlot(id, false)
	if err != nil {
		return secrets.Secret{}, fmt.Errorf("activate device %s: %w", id, err)
	}
	s := sl.sess
	registered := sl.registered
	sl.mu.Unlock()
	switch {
	case !registered:
		return secrets.Secret{}, fmt.Errorf("activate device %s: %w", id, ErrUnknownDevice)
	case s == nil:
		return secrets.Secret{}, fmt.Errorf("activate device %s: %w", id, ErrNoSession)
	}
	w := s.act
	kicked, attempted := false, false
	for {
		w.mu.Lock()
		secret, refused, ended, lastErr, changed := w.secret, w.refused, w.ended, w.lastErr, w.changed
		w.mu.Unlock()
		switch {
		case !secret.IsZero():
			return secret, nil
		case refused != nil:
			return secrets.Secret{}, fmt.Errorf("activate device %s: %w: %w", id, ErrActivationRefused, refused)
		case ended:
			return secrets.Secret{}, fmt.Errorf("activate device %s: %w", id, ErrNoSession)
		case attempted && lastErr != nil:
			return secrets.Secret{}, fmt.Errorf("activate device %s: %w", id, lastErr)
		}
		if !kicked {
			kicked = true
			select {
			case w.kick <- struct{}{}:
			default:
			}
		}
		select {
		case <-changed:
			attempted = true
		case <-ctx.Done():
			return secrets.Secret{}, fmt.Errorf("activate device %s: %w", id, ctx.Err())
		}
	}
}

// sleepOrKick is the wait between activation attempts: d, cut short by a
// device waiting for its secret (Manager.Activate), though never to less
// than the dialect's initial backoff after the last attempt.
func (s *session) sleepOrKick(ctx context.Context, d time.Duration, last time.Time) error {
	clk := s.m.clk
	if d <= 0 {
		return ctx.Err()
	}
	t := clk.NewTimer(d)
	defer t.Stop()
	kick := s.act.kick
	for {
		select {
		case <-t.C():
			return nil
		case <-kick:
			kick = nil
			early := last.Add(s.lim.Backoff.Initial).Sub(clk.Now())
			s.log.Info("activation: the device is waiting for its deviceSecret; trying again now", "in", max(early, 0))
			if early <= 0 {
				return nil
			}
			t.Stop()
			t = clk.NewTimer(early)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// activate obtains the device's deviceSecret: from the store if one is
// there, otherwise from the cloud, stored durably before it is used. It
// reports true with s.dev.Secret set, or false when the session ended
// (stopped, or parked in StateActivationFailed until then).
func (s *session) activate() bool {
	ctx, clk := s.ctx, s.m.clk
	var delay time.Duration
	var last time.Time // the last attempt
	for {
		if s.sleepOrKick(ctx, delay, last) != nil {
			return false
		}
		stored, err := s.dev.Activation.DeviceSecret(s.dev.ID)
		if err != nil {
			s.failures++
			delay = s.lim.Backoff.Delay(s.failures, s.m.rnd())
			err = fmt.Errorf("look up stored device secret: %w", err)
			s.log.Error("activation: cannot read the device's stored secret", "err", err, "retry_in", delay)
			s.setState(StateBackoff, err, clk.Now().Add(delay))
			continue
		}
		if !stored.IsZero() {
			s.log.Info("device has a stored deviceSecret; not activating")
			s.dev.Secret = stored
			return true
		}
		if err := s.activationPossible(); err != nil {
			return s.activationRefused(err)
		}
		if w := s.sl.attempts.wait(s.lim.ConnectWindow, clk.Now()); w > 0 {
			s.setState(StateBackoff, nil, clk.Now().Add(w))
			if sleep(ctx, clk, w) != nil {
				return false
			}
		}
		s.setState(StateActivating, nil, time.Time{})
		if s.m.connectBudget.wait(ctx, clk) != nil {
			return false
		}
		s.sl.attempts.record(s.lim.ConnectWindow, clk.Now())
		s.attempt++
		select {
		case <-s.act.kick: // a device waiting now gets this attempt's outcome
		default:
		}
		secret, err := s.activateOnce(ctx)
		last = clk.Now()
		if !secret.IsZero() {
			s.failures = 0
			s.dev.Secret = secret
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		var ce *ConnectError
		if errors.As(err, &ce) && ce.Refused() {
			return s.activationRefused(err)
		}
		delay = s.failed(err)
		s.act.attemptFailed(err)
	}
}

// activationPossible reports a configuration under which activation can
// never succeed.
func (s *session) activationPossible() error {
	if s.dev.Dialect == secrets.Aliyun && !s.ep.encrypted() {
		return fmt.Errorf("dynamic registration on Alibaba works only over TLS (a tls or wss endpoint), not %s", s.ep.scheme)
	}
	return nil
}

// activationRefused records a refusal in the store and parks the session
// in StateActivationFailed until it is stopped. A secret that was stored
// meanwhile (an operator, or an earlier session whose store finished late)
// is used instead.
func (s *session) activationRefused(cause error) bool {
	if stored, err := s.dev.Activation.DeviceSecret(s.dev.ID); err == nil && !stored.IsZero() {
		s.dev.Secret = stored
		return true
	}
	reason := activationFailure(s.dev.Dialect, cause)
	if err := s.dev.Activation.ActivationFailed(s.dev.ID, reason); err != nil {
		s.log.Error("activation: record the refusal", "err", err)
	}
	s.log.Error("activation refused; not retried until the device or its product is updated", "attempt", s.attempt, "reason", reason)
	s.setState(StateActivationFailed, errors.New(reason), time.Time{})
	s.act.end(secrets.Secret{}, errors.New(reason))
	<-s.ctx.Done()
	return false
}

// activationFailure phrases why an activation failed for the device's
// state. It holds no secret.
func activationFailure(d secrets.Dialect, cause error) string {
	var ce *ConnectError
	if !errors.As(cause, &ce) || ce.Code == 0 {
		return cause.Error()
	}
	what := "EnOS dynamic activation (securemode=3)"
	if d == secrets.Aliyun {
		what = "Alibaba dynamic registration (authType=register)"
	}
	hint := ""
	if ce.Code == packets.ErrRefusedBadUsernameOrPassword || ce.Code == packets.ErrRefusedNotAuthorised {
		hint = ": the device may already be activated (reset it in the cloud console), the productSecret may be wrong, or the product does not allow dynamic activation"
	}
	return fmt.Sprintf("%s refused with CONNACK %d (%s)%s", what, ce.Code, connackText(ce.Code), hint)
}

// activationRequest is one dialect's way of obtaining a deviceSecret.
type activationRequest struct {
	creds  secrets.Credentials
	source string
	topics []string // where the deviceSecret arrives, without a SUBSCRIBE
	reply  bool     // EnOS: answer on <topic>_reply
}

// activationRequest builds the CONNECT of an activation attempt, signed
// with the productSecret (docs/protocol.md §6.1, §6.2).
func (s *session) activationRequest(now time.Time) (activationRequest, error) {
	pk, dn := s.dev.ID.ProductKey, s.dev.ID.DeviceName
	if s.dev.Dialect == secrets.EnOS {
		creds, err := secrets.Sign(secrets.SignParams{
			Dialect: secrets.EnOS, ProductKey: pk, DeviceName: dn, ClientID: s.dev.clientID(),
			Timestamp: strconv.FormatInt(now.UnixMilli(), 10), SignMethod: s.dev.SignMethod,
			SecureMode: 3, Extra: s.dev.Extra,
		}, s.dev.ProductSecret)
		prefix := "/ext/session/" + pk + "/" + dn + "/thing/"
		return activationRequest{
			creds: creds, source: SourceEnOSActivate, reply: true,
			// activated/info is an older document revision's spelling.
			topics: []string{prefix + "activate/info", prefix + "activated/info"},
		}, err
	}
	sm := s.dev.SignMethod
	if sm == "" {
		sm = secrets.DefaultSignMethod(secrets.Aliyun)
	}
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return activationRequest{}, fmt.Errorf("draw registration nonce: %w", err)
	}
	random := strconv.FormatUint(uint64(binary.BigEndian.Uint32(b[:])), 10)
	password, err := secrets.RegisterSign(sm, pk, dn, random, s.dev.ProductSecret)
	if err != nil {
		return activationRequest{}, err
	}
	// The Link SDK's clientId is dn.pk; it is not signed, so the device's
	// own clientId stands in when dn.pk is too long.
	bare := dn + "." + pk
	if len(bare) > secrets.MaxClientIDLen {
		bare = s.dev.clientID()
	}
	cid := secrets.FormatClientID(bare, []secrets.Param{
		{Key: "random", Value: random}, {Key: "authType", Value: "register"},
		{Key: "securemode", Value: "2"}, {Key: "signmethod", Value: string(sm)},
	})
	return activationRequest{
		creds:  secrets.Credentials{ClientID: cid, Username: dn + "&" + pk, Password: secrets.NewSecret(password)},
		source: SourceAliyunRegister,
		topics: []string{"/ext/register"},
	}, nil
}

// activateOnce makes one activation attempt. It returns the deviceSecret
// only once StoreDeviceSecret accepted it; the connection is answered and
// closed after that.
func (s *session) activateOnce(ctx context.Context) (secrets.Secret, error) {
	req, err := s.activationRequest(s.m.clk.Now())
	if err != nil {
		return secrets.Secret{}, &ConnectError{Err: fmt.Errorf("sign activation credentials: %w", err)}
	}
	got := make(chan mqtt.Message, 4)
	c, err := s.dialActivation(ctx, req, got)
	if err != nil {
		return secrets.Secret{}, err
	}
	defer s.closeConn(c)
	msg, err := s.awaitIssued(ctx, c, got)
	if err != nil {
		return secrets.Secret{}, err
	}
	secret, msgID, err := parseIssued(s.dev.Dialect, s.dev.ID, msg.Payload())
	if err != nil {
		return secrets.Secret{}, fmt.Errorf("activation: message on %s: %w", msg.Topic(), err)
	}
	s.log.Info("cloud issued the deviceSecret; storing it", "attempt", s.attempt, "topic", msg.Topic(), "source", req.source)
	if err := s.storeIssued(ctx, secret, req.source); err != nil {
		return secrets.Secret{}, err
	}
	if req.reply {
		s.replyActivation(c, msg.Topic()+"_reply", msgID)
	}
	return secret, nil
}

// awaitIssued waits for the message carrying the deviceSecret. A message
// that arrived before the connection was lost or the session was stopped
// is still taken: once issued, the secret may never be issued again.
func (s *session) awaitIssued(ctx context.Context, c *conn, got <-chan mqtt.Message) (mqtt.Message, error) {
	wait := time.NewTimer(s.m.cfg.ConnectTimeout)
	defer wait.Stop()
	select {
	case m := <-got:
		return m, nil
	case <-c.lost:
		// paho hands every message read before the loss to the (ordered)
		// handler before it reports the loss.
		select {
		case m := <-got:
			return m, nil
		default:
		}
		return nil, fmt.Errorf("activation: %w before the deviceSecret arrived", c.lostErr)
	case <-ctx.Done():
		// The cloud issues the secret right after the CONNACK: give a
		// message on its way a moment before giving up on it.
		grace := time.NewTimer(s.m.cfg.Quiesce)
		defer grace.Stop()
		select {
		case m := <-got:
			return m, nil
		case <-grace.C:
		case <-c.lost:
			select {
			case m := <-got:
				return m, nil
			default:
			}
		}
		return nil, ctx.Err()
	case <-wait.C:
		return nil, fmt.Errorf("activation: no deviceSecret within %v of the CONNACK", s.m.cfg.ConnectTimeout)
	}
}

// storeIssued stores an issued deviceSecret, retrying while the store
// fails and the session runs (a stopped session still tries once more).
func (s *session) storeIssued(ctx context.Context, secret secrets.Secret, source string) error {
	for failures := 1; ; failures++ {
		err := s.dev.Activation.StoreDeviceSecret(s.dev.ID, secret, source)
		if err == nil {
			s.log.Info("issued deviceSecret stored durably", "source", source)
			return nil
		}
		err = fmt.Errorf("store issued device secret: %w", err)
		if ctx.Err() != nil {
			s.log.Error("activation: the session stops with an issued deviceSecret that could not be stored; the cloud may refuse to issue another", "err", err)
			return err
		}
		d := storeRetry.Delay(failures, s.m.rnd())
		s.log.Error("activation: cannot store the issued deviceSecret; keeping it in memory and retrying", "err", err, "retry_in", d)
		s.setState(StateActivating, err, s.m.clk.Now().Add(d))
		_ = sleep(ctx, s.m.clk, d) // a stopped session gets one last try
	}
}

// replyActivation acknowledges the EnOS activation message as the Java SDK
// does, waiting a bounded time for the PUBACK. A failed reply is only
// logged: the secret is stored, and the C SDK sends no reply at all.
func (s *session) replyActivation(c *conn, topic string, msgID json.RawMessage) {
	if len(msgID) == 0 {
		msgID = json.RawMessage(`""`)
	}
	payload := fmt.Appendf(nil, `{"id":%s,"code":200,"data":null,"message":"success"}`, msgID)
	tok := c.client.Publish(topic, 1, false, payload)
	t := time.NewTimer(min(activationReplyWait, s.m.cfg.WriteTimeout))
	defer t.Stop()
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			s.log.Warn("activation reply not delivered", "topic", topic, "err", err)
		}
	case <-c.lost:
		s.log.Warn("activation reply not delivered: connection lost", "topic", topic)
	case <-t.C:
		s.log.Warn("activation reply not acknowledged in time", "topic", topic)
	}
}

// dialActivation connects with the activation credentials. Messages on the
// request's topics go to got; the handler runs in paho's router (ordered)
// and never blocks.
func (s *session) dialActivation(ctx context.Context, req activationRequest, got chan<- mqtt.Message) (*conn, error) {
	return s.dialCloud(ctx, req.creds, connectMode{
		what:    "connecting to activate",
		ordered: true,
		onMessage: func(_ mqtt.Client, m mqtt.Message) {
			for _, t := range req.topics {
				if m.Topic() == t {
					select {
					case got <- m:
					default:
					}
					return
				}
			}
			s.log.Debug("activation: ignoring a message", "topic", m.Topic())
		},
	})
}

// parseIssued extracts the deviceSecret from the cloud's message: EnOS
// {"id":..,"params":{"productKey","deviceKey","deviceSecret"}}, Alibaba
// {"productKey","deviceName","deviceSecret"}. msgID is the EnOS message id
// as sent (a JSON value), for the reply. Errors never contain the secret.
func parseIssued(d secrets.Dialect, id secrets.DeviceID, payload []byte) (secret secrets.Secret, msgID json.RawMessage, err error) {
	var pk, dn, ds string
	if d == secrets.EnOS {
		var m struct {
			ID     json.RawMessage `json:"id"`
			Params struct {
				ProductKey   string `json:"productKey"`
				DeviceKey    string `json:"deviceKey"`
				DeviceSecret string `json:"deviceSecret"`
			} `json:"params"`
		}
		if err := json.Unmarshal(payload, &m); err != nil {
			return secrets.Secret{}, nil, fmt.Errorf("decode activation info: %w", err)
		}
		msgID, pk, dn, ds = bytes.TrimSpace(m.ID), m.Params.ProductKey, m.Params.DeviceKey, m.Params.DeviceSecret
	} else {
		var m struct {
			ProductKey   string `json:"productKey"`
			DeviceName   string `json:"deviceName"`
			DeviceSecret string `json:"deviceSecret"`
		}
		if err := json.Unmarshal(payload, &m); err != nil {
			return secrets.Secret{}, nil, fmt.Errorf("decode registration reply: %w", err)
		}
		pk, dn, ds = m.ProductKey, m.DeviceName, m.DeviceSecret
	}
	if (pk != "" && pk != id.ProductKey) || (dn != "" && dn != id.DeviceName) {
		return secrets.Secret{}, nil, fmt.Errorf("the deviceSecret is for %s/%s, not this device", logsafe.Clip(pk), logsafe.Clip(dn))
	}
	if err := checkIssuedSecret(ds); err != nil {
		return secrets.Secret{}, nil, err
	}
	return secrets.NewSecret(ds), msgID, nil
}

// checkIssuedSecret checks the shape of an issued secret as the registry
// will: 1–512 bytes of printable ASCII without spaces.
func checkIssuedSecret(v string) error {
	if v == "" {
		return errors.New("no deviceSecret in it")
	}
	if len(v) > maxIssuedSecret {
		return fmt.Errorf("the deviceSecret is %d bytes, at most %d allowed", len(v), maxIssuedSecret)
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; c <= ' ' || c >= 0x7f {
			return fmt.Errorf("the deviceSecret has a space, control or non-ASCII byte at offset %d", i)
		}
	}
	return nil
}
