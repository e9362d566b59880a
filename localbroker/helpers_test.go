package localbroker_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/localbroker"
	"github.com/edgegw/edgegw/secrets"
)

const (
	pk1 = "a1Prod"
	dnA = "devA"
	dnB = "devB"
	// Passwords of the test devices; logs must never show them.
	passA     = "pw-A-7f3e9c"
	passB     = "pw-B-1d2c4b"
	passAdmin = "pw-admin-77aa"
)

var (
	idA = localbroker.Identity{DeviceID: secrets.DeviceID{ProductKey: pk1, DeviceName: dnA}, Method: localbroker.MethodPassword}
	idB = localbroker.Identity{DeviceID: secrets.DeviceID{ProductKey: pk1, DeviceName: dnB}, Method: localbroker.MethodPassword}
)

func topicA(rest string) string { return "/" + pk1 + "/" + dnA + "/user/" + rest }
func topicB(rest string) string { return "/" + pk1 + "/" + dnB + "/user/" + rest }

// testAuth authenticates by user name and password, the unix socket as
// admin, and TLS client certificates whose CN is "productKey/deviceName". It
// records every request.
type testAuth struct {
	mu       sync.Mutex
	requests []localbroker.ConnectRequest
	// refuse maps a user name to the error to return.
	refuse map[string]error
}

func (a *testAuth) Authenticate(req localbroker.ConnectRequest) (localbroker.Identity, error) {
	a.mu.Lock()
	a.requests = append(a.requests, req)
	err := a.refuse[req.Username]
	a.mu.Unlock()
	if err != nil {
		return localbroker.Identity{}, err
	}
	if len(req.PeerCertificates) > 0 {
		pk, dn, ok := strings.Cut(req.PeerCertificates[0].Subject.CommonName, "/")
		if !ok {
			return localbroker.Identity{}, &localbroker.Refusal{Code: 5, Reason: "certificate CN is not pk/dn"}
		}
		return localbroker.Identity{DeviceID: secrets.DeviceID{ProductKey: pk, DeviceName: dn}, Method: localbroker.MethodCert}, nil
	}
	if req.Transport == localbroker.TransportUnix {
		return localbroker.Identity{Admin: true, Name: "unix", Method: localbroker.MethodUnix}, nil
	}
	switch {
	case req.Username == dnA && req.Password.Reveal() == passA:
		id := idA
		// A clientId ending in "+ss" stands for firmware relying on
		// server-side subscription.
		id.ServerSubscribed = strings.HasSuffix(req.ClientID, "+ss")
		return id, nil
	case req.Username == dnB && req.Password.Reveal() == passB:
		return idB, nil
	case req.Username == "admin" && req.Password.Reveal() == passAdmin:
		return localbroker.Identity{Admin: true, Name: "admin", Method: localbroker.MethodAdmin}, nil
	}
	return localbroker.Identity{}, &localbroker.Refusal{Code: 4, Reason: "unknown user or wrong password"}
}

func (a *testAuth) setRefuse(m map[string]error) {
	a.mu.Lock()
	a.refuse = m
	a.mu.Unlock()
}

func (a *testAuth) last() localbroker.ConnectRequest {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.requests[len(a.requests)-1]
}

// testSink records messages. A hook can make it block or fail. It answers
// inline, before Publish returns, as a sink that stores synchronously does.
type testSink struct {
	mu   sync.Mutex
	msgs []localbroker.Message
	got  chan localbroker.Message // every accepted message, if not nil
	hook func(ctx context.Context, m localbroker.Message) error
}

func newSink() *testSink { return &testSink{got: make(chan localbroker.Message, 1000)} }

func (s *testSink) Publish(ctx context.Context, m localbroker.Message, done func(error)) {
	done(s.publish(ctx, m))
}

func (s *testSink) publish(ctx context.Context, m localbroker.Message) error {
	s.mu.Lock()
	hook := s.hook
	s.mu.Unlock()
	if hook != nil {
		if err := hook(ctx, m); err != nil {
			return err
		}
	}
	s.mu.Lock()
	s.msgs = append(s.msgs, m)
	s.mu.Unlock()
	if s.got != nil {
		s.got <- m
	}
	return nil
}

func (s *testSink) setHook(h func(ctx context.Context, m localbroker.Message) error) {
	s.mu.Lock()
	s.hook = h
	s.mu.Unlock()
}

func (s *testSink) topics() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, m := range s.msgs {
		out = append(out, m.Topic)
	}
	return out
}

// next waits for the next accepted message.
func (s *testSink) next(t *testing.T) localbroker.Message {
	t.Helper()
	select {
	case m := <-s.got:
		return m
	case <-time.After(10 * time.Second):
		t.Fatal("sink received nothing within 10s")
		return localbroker.Message{}
	}
}

// harness is a running broker.
type harness struct {
	b     *localbroker.Broker
	auth  *testAuth
	sink  *testSink
	logs  *testutil.SyncBuffer
	addrs map[string]net.Addr
	stop  func() error // cancels Run and returns its result
	// stopFails is set by a test whose broker is meant to stop late.
	stopFails bool
}

// startBroker runs a broker with the test authenticator and sink, plus
// whatever mod changes. It stops (and checks the stop) at cleanup.
func startBroker(t testing.TB, mod func(*localbroker.Config)) *harness {
	t.Helper()
	h := &harness{auth: &testAuth{}, sink: newSink(), logs: &testutil.SyncBuffer{}}
	cfg := localbroker.Config{
		Listeners: []string{"tcp://127.0.0.1:0"},
		Auth:      h.auth,
		Sink:      h.sink,
		Logger:    slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if mod != nil {
		mod(&cfg)
	}
	b, err := localbroker.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	h.b = b
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	select {
	case <-b.Ready():
	case err := <-done:
		cancel()
		t.Fatalf("Run returned before Ready: %v", err)
	case <-time.After(10 * time.Second):
		cancel()
		t.Fatal("broker not ready within 10s")
	}
	h.addrs = b.Addrs()
	var once sync.Once
	var stopErr error
	h.stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case stopErr = <-done:
			case <-time.After(30 * time.Second):
				stopErr = errors.New("Run did not return within 30s of cancel")
			}
		})
		return stopErr
	}
	t.Cleanup(func() {
		if err := h.stop(); err != nil && !h.stopFails {
			t.Errorf("stop broker: %v", err)
		}
		for _, secret := range []string{passA, passB, passAdmin} {
			if strings.Contains(h.logs.String(), secret) {
				t.Errorf("a password appears in the broker log")
			}
		}
	})
	return h
}

// url returns the client URL of the listener whose configured URL starts
// with scheme.
func (h *harness) url(t testing.TB, scheme string) string {
	t.Helper()
	for id, a := range h.addrs {
		if strings.HasPrefix(id, scheme+"://") {
			if scheme == "unix" {
				return "unix://" + a.String()
			}
			u := scheme + "://" + a.String()
			if i := strings.Index(id[len(scheme)+3:], "/"); i >= 0 && (scheme == "ws" || scheme == "wss") {
				u += id[len(scheme)+3+i:]
			}
			return u
		}
	}
	t.Fatalf("no %s listener in %v", scheme, h.addrs)
	return ""
}

// hostPort returns the address of the first tcp listener.
func (h *harness) hostPort(t testing.TB) (string, string) {
	t.Helper()
	host, port, err := net.SplitHostPort(strings.TrimPrefix(h.url(t, "tcp"), "tcp://"))
	if err != nil {
		t.Fatal(err)
	}
	return host, port
}

type clientOpt func(*paho.ClientOptions)

func withClean(clean bool) clientOpt {
	return func(o *paho.ClientOptions) { o.SetCleanSession(clean) }
}

func withLost(ch chan error) clientOpt {
	return func(o *paho.ClientOptions) {
		o.SetConnectionLostHandler(func(_ paho.Client, err error) { ch <- err })
	}
}

func withDefaultHandler(ch chan paho.Message) clientOpt {
	return func(o *paho.ClientOptions) {
		o.SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { ch <- m })
	}
}

func withTLS(c *tls.Config) clientOpt { return func(o *paho.ClientOptions) { o.SetTLSConfig(c) } }

// newClient creates a paho 3.1.1 client without auto-reconnect.
func newClient(url, clientID, user, pass string, opts ...clientOpt) paho.Client {
	o := paho.NewClientOptions().AddBroker(url).SetClientID(clientID).SetUsername(user).SetPassword(pass).
		SetProtocolVersion(4).SetAutoReconnect(false).SetConnectRetry(false).SetOrderMatters(false).
		SetConnectTimeout(10 * time.Second).SetWriteTimeout(10 * time.Second).SetKeepAlive(30 * time.Second)
	for _, opt := range opts {
		opt(o)
	}
	return paho.NewClient(o)
}

// connect connects a client and disconnects it at cleanup.
func connect(t testing.TB, url, clientID, user, pass string, opts ...clientOpt) paho.Client {
	t.Helper()
	c := newClient(url, clientID, user, pass, opts...)
	tok := c.Connect()
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s as %s: %v", url, user, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(0) })
	return c
}

// connectErr returns the error of a connection attempt.
func connectErr(t testing.TB, url, clientID, user, pass string, opts ...clientOpt) error {
	t.Helper()
	c := newClient(url, clientID, user, pass, opts...)
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		c.Disconnect(0)
		t.Fatalf("connect %s as %s: no answer within 10s", url, user)
	}
	if tok.Error() == nil {
		c.Disconnect(0)
	}
	return tok.Error()
}

func wait(t testing.TB, tok paho.Token, what string) {
	t.Helper()
	if !tok.WaitTimeout(10 * time.Second) {
		t.Fatalf("%s: no completion within 10s", what)
	}
	if err := tok.Error(); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// subscribe subscribes and returns the granted return code.
func subscribe(t testing.TB, c paho.Client, filter string, qos byte, ch chan paho.Message) byte {
	t.Helper()
	var cb paho.MessageHandler
	if ch != nil {
		cb = func(_ paho.Client, m paho.Message) { ch <- m }
	}
	tok := c.Subscribe(filter, qos, cb)
	wait(t, tok, "subscribe "+filter)
	return tok.(*paho.SubscribeToken).Result()[filter]
}

func recv(t testing.TB, ch chan paho.Message, what string) paho.Message {
	t.Helper()
	select {
	case m := <-ch:
		return m
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: nothing received within 10s", what)
		return nil
	}
}

func waitErr(t testing.TB, ch chan error, what string) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: did not happen within 10s", what)
		return nil
	}
}

// runTool runs a mosquitto client with a deadline.
func runTool(t testing.TB, bin string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("%s %v: timed out; output: %s", filepath.Base(bin), args, out)
	}
	return string(out), err
}

// recorder is an Observer that records events as strings.
type recorder struct {
	mu     sync.Mutex
	events []string
}

func (r *recorder) add(format string, args ...any) {
	r.mu.Lock()
	r.events = append(r.events, fmt.Sprintf(format, args...))
	r.mu.Unlock()
}

func (r *recorder) Connected(id localbroker.Identity, clientID string) {
	r.add("connected %s %s", id, clientID)
}

func (r *recorder) Disconnected(id localbroker.Identity, clientID string, _ error) {
	r.add("disconnected %s %s", id, clientID)
}

func (r *recorder) Subscribed(id localbroker.Identity, clientID string, filters []string) {
	r.add("subscribed %s %s %v", id, clientID, filters)
}

func (r *recorder) Unsubscribed(id localbroker.Identity, clientID string, filters []string) {
	r.add("unsubscribed %s %s %v", id, clientID, filters)
}

func (r *recorder) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.events...)
}

// adminRecorder is an AdminHandler that records requests.
type adminRecorder struct {
	got   chan localbroker.AdminRequest
	reply func(localbroker.AdminRequest)
}

func (a *adminRecorder) HandleAdmin(id localbroker.Identity, req localbroker.AdminRequest) {
	if !id.Admin {
		panic("admin request from a non-admin identity")
	}
	if a.reply != nil {
		a.reply(req)
	}
	a.got <- req
}
