package localbroker_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	pahopackets "github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/localbroker"
	"github.com/edgegw/edgegw/secrets"
)

func TestNewValidatesConfig(t *testing.T) {
	auth, sink := &testAuth{}, newSink()
	tests := []struct {
		name    string
		cfg     localbroker.Config
		wantErr string // substring; "" means valid
	}{
		{"valid", localbroker.Config{Listeners: []string{"tcp://127.0.0.1:1883", "ws://:8080/mqtt", "unix:///run/edgegw/admin.sock"}}, ""},
		{"no listeners", localbroker.Config{}, "no listeners"},
		{"unknown scheme", localbroker.Config{Listeners: []string{"tcp://:1", "mqtt://:1883"}}, `"mqtt://:1883": unknown scheme`},
		{"no port", localbroker.Config{Listeners: []string{"tcp://127.0.0.1"}}, `"tcp://127.0.0.1"`},
		{"bad port", localbroker.Config{Listeners: []string{"tcp://:99999"}}, `"tcp://:99999": port`},
		{"tcp path", localbroker.Config{Listeners: []string{"tcp://:1883/x"}}, "takes no path"},
		{"relative unix", localbroker.Config{Listeners: []string{"unix://admin.sock"}}, "want unix:///absolute"},
		{"unclean unix", localbroker.Config{Listeners: []string{"unix:///run/../admin.sock"}}, "want unix:///absolute"},
		{"long unix", localbroker.Config{Listeners: []string{"unix:///" + strings.Repeat("x", 120)}}, "longer than"},
		{"user info", localbroker.Config{Listeners: []string{"tcp://u:p@:1883"}}, "user info"},
		{"duplicate", localbroker.Config{Listeners: []string{"tcp://:1883", "tcp://:1883"}}, "listed twice"},
		{"tls without config", localbroker.Config{Listeners: []string{"tls://:8883"}}, `"tls://:8883": Config.TLS is required`},
		{"wss without config", localbroker.Config{Listeners: []string{"wss://:8443"}}, `"wss://:8443": Config.TLS is required`},
		{"unknown inherited", localbroker.Config{Inherited: map[string][]net.Listener{"mqtt-tls": {nil}}}, `"mqtt-tls": unknown name`},
		{"nil inherited", localbroker.Config{Inherited: map[string][]net.Listener{"mqtt": {nil}}}, "entry 0 is nil"},
		{"mode bits", localbroker.Config{Listeners: []string{"tcp://:1"}, UnixSocketMode: fs.ModeSetuid | 0o600}, "UnixSocketMode"},
		{"tiny packets", localbroker.Config{Listeners: []string{"tcp://:1"}, MaxPacketSize: 100}, "MaxPacketSize"},
		{"unverified client certs", localbroker.Config{Listeners: []string{"tls://:1"}, TLS: &tls.Config{ClientAuth: tls.RequireAnyClientCert}}, "does not verify"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tt.cfg
			cfg.Auth, cfg.Sink = auth, sink
			_, err := localbroker.New(cfg)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("New: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("New: got error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
	if _, err := localbroker.New(localbroker.Config{Listeners: []string{"tcp://:1"}, Sink: sink}); err == nil {
		t.Error("New without Auth: no error")
	}
	if _, err := localbroker.New(localbroker.Config{Listeners: []string{"tcp://:1"}, Auth: auth}); err == nil {
		t.Error("New without Sink: no error")
	}
}

func TestConnectAuthentication(t *testing.T) {
	h := startBroker(t, func(c *localbroker.Config) {
		c.Listeners = append(c.Listeners, "ws://127.0.0.1:0/mqtt")
	})
	h.auth.setRefuse(map[string]error{
		"banned":  &localbroker.Refusal{Code: localbroker.RefuseNotAuthorized, Reason: "disabled"},
		"busy":    fmt.Errorf("registry: %w", &localbroker.Refusal{Code: localbroker.RefuseServerUnavailable, Reason: "registry closed"}),
		"badid":   &localbroker.Refusal{Code: localbroker.RefuseIdentifierRejected, Reason: "bad client id"},
		"plain":   errors.New("some failure"),
		"strange": &localbroker.Refusal{Code: 42, Reason: "out of range"},
	})
	url := h.url(t, "tcp")
	tests := []struct {
		user, pass string
		want       error
	}{
		{dnA, passA, nil},
		{dnA, "wrong-password", pahopackets.ErrorRefusedBadUsernameOrPassword},
		{"banned", "x", pahopackets.ErrorRefusedNotAuthorised},
		{"busy", "x", pahopackets.ErrorRefusedServerUnavailable},
		{"badid", "x", pahopackets.ErrorRefusedIDRejected},
		{"plain", "x", pahopackets.ErrorRefusedNotAuthorised},
		{"strange", "x", pahopackets.ErrorRefusedNotAuthorised},
	}
	for i, tt := range tests {
		t.Run(tt.user, func(t *testing.T) {
			err := connectErr(t, url, fmt.Sprintf("c%d", i), tt.user, tt.pass)
			if !errors.Is(err, tt.want) {
				t.Fatalf("connect: got %v, want %v", err, tt.want)
			}
		})
	}
	req := h.auth.last()
	if req.Username != "strange" || req.Password.Reveal() != "x" || req.ProtocolVersion != 4 ||
		req.Transport != localbroker.TransportTCP || req.Listener != "tcp://127.0.0.1:0" || req.Remote == "" {
		t.Errorf("ConnectRequest = %+v", req)
	}
	if got := h.b.Stats().ConnectsRefused; got != uint64(len(tests)-1) {
		t.Errorf("Stats().ConnectsRefused = %d, want %d", got, len(tests)-1)
	}
	if !strings.Contains(h.logs.String(), "reason=disabled") {
		t.Errorf("refusal reason not logged:\n%s", h.logs)
	}

	// The same over WebSocket.
	c := connect(t, h.url(t, "ws"), "ws1", dnA, passA)
	wait(t, c.Publish(topicA("ws"), 1, false, "over ws"), "publish over ws")
	if m := h.sink.next(t); m.Topic != topicA("ws") || string(m.Payload) != "over ws" || m.Device != idA {
		t.Errorf("sink got %+v", m)
	}
	if req := h.auth.last(); req.Transport != localbroker.TransportWS {
		t.Errorf("transport = %q, want ws", req.Transport)
	}
	if err := connectErr(t, h.url(t, "ws"), "ws2", dnA, "bad"); !errors.Is(err, pahopackets.ErrorRefusedBadUsernameOrPassword) {
		t.Errorf("ws connect with a bad password: %v", err)
	}
	// Only the configured path is served.
	wrongPath := strings.TrimSuffix(h.url(t, "ws"), "/mqtt") + "/other"
	if err := connectErr(t, wrongPath, "ws3", dnA, passA); err == nil {
		t.Error("ws connect on an unconfigured path succeeded")
	}
}

func TestACL(t *testing.T) {
	admin := &adminRecorder{got: make(chan localbroker.AdminRequest, 10)}
	h := startBroker(t, func(c *localbroker.Config) {
		c.Listeners = append(c.Listeners, "unix://"+filepath.Join(t.TempDir(), "admin.sock"))
		c.Admin = admin
	})
	url := h.url(t, "tcp")
	lost := make(chan error, 1)
	a := connect(t, url, "a1", dnA, passA, withLost(lost))

	// Subscriptions: inside granted (capped at QoS 1), outside refused.
	subs := []struct {
		filter string
		want   byte
	}{
		{topicA("#"), 1},
		{"/sys/" + pk1 + "/" + dnA + "/thing/+/+", 1},
		{"/broadcast/" + pk1 + "/#", 1},
		{topicB("#"), 0x80},
		{"#", 0x80},
		{"/" + pk1 + "/+/user/x", 0x80},
		{"$edgegw/admin/v1/response", 0x80},
		{"$SYS/#", 0x80},
	}
	for _, s := range subs {
		if got := subscribe(t, a, s.filter, 2, nil); got != s.want {
			t.Errorf("subscribe %q: return code 0x%02x, want 0x%02x", s.filter, got, s.want)
		}
	}
	if got := h.b.Stats().SubscriptionsDenied; got != 5 {
		t.Errorf("SubscriptionsDenied = %d, want 5", got)
	}

	// Publishing inside the namespace reaches the sink; QoS 0 outside is dropped.
	wait(t, a.Publish(topicB("x"), 0, false, "outside"), "publish qos0 outside")
	wait(t, a.Publish(topicA("ok"), 1, false, "inside"), "publish inside")
	if m := h.sink.next(t); m.Topic != topicA("ok") {
		t.Fatalf("sink got %q first, want %q (the QoS 0 publish outside must be dropped)", m.Topic, topicA("ok"))
	}
	if !a.IsConnectionOpen() {
		t.Fatal("a denied QoS 0 publish closed the connection")
	}
	// QoS 1 outside: a 3.1.1 client has no negative PUBACK; it is
	// acknowledged and dropped rather than disconnected, which would make
	// it reconnect and resend for ever. Admin topics likewise.
	wait(t, a.Publish(topicB("x"), 1, false, "outside"), "denied QoS 1 publish acknowledged")
	wait(t, a.Publish(localbroker.AdminRequestTopic, 1, false, `{"method":"device.list"}`), "device's admin request acknowledged")
	wait(t, a.Publish(topicA("ok2"), 1, false, "inside"), "publish inside after the denied ones")
	if m := h.sink.next(t); m.Topic != topicA("ok2") {
		t.Fatalf("sink got %q, want %q: a denied publish was forwarded", m.Topic, topicA("ok2"))
	}
	if !a.IsConnectionOpen() {
		t.Fatal("a denied QoS 1 publish closed the connection")
	}
	select {
	case err := <-lost:
		t.Fatalf("connection lost after denied publishes: %v", err)
	default:
	}
	if got := h.b.Stats().PublishesDenied; got != 3 {
		t.Errorf("PublishesDenied = %d, want 3", got)
	}
	// One warning for the device, however many refusals in the window.
	if n := strings.Count(h.logs.String(), "publish refused: topic outside"); n != 1 {
		t.Errorf("%d log lines for the refusals, want 1 per device and window", n)
	}

	// The unix-socket admin may use them; requests are handed to the
	// AdminHandler, not to the sink, and not fanned out.
	admin.reply = func(req localbroker.AdminRequest) {
		if err := h.b.PublishAdmin(localbroker.AdminResponseTopic, []byte("reply:"+string(req.Payload)), nil); err != nil {
			t.Errorf("PublishAdmin: %v", err)
		}
	}
	adm := connect(t, h.url(t, "unix"), "ctl", "", "")
	got := make(chan paho.Message, 10)
	for _, f := range []string{localbroker.AdminResponseTopic, "$edgegw/admin/#"} {
		if rc := subscribe(t, adm, f, 1, got); rc != 1 {
			t.Fatalf("admin subscribe %q: 0x%02x", f, rc)
		}
	}
	for _, f := range []string{topicA("#"), "#", "$SYS/#"} {
		if rc := subscribe(t, adm, f, 1, nil); rc != 0x80 {
			t.Errorf("admin subscribe %q: 0x%02x, want 0x80", f, rc)
		}
	}
	wait(t, adm.Publish(localbroker.AdminRequestTopic, 1, false, "req1"), "admin request")
	select {
	case req := <-admin.got:
		if string(req.Payload) != "req1" || req.ClientID != "ctl" || req.Topic != localbroker.AdminRequestTopic {
			t.Errorf("admin request = %+v", req)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("admin handler got nothing")
	}
	// The reply was published after the request was handled; had the
	// request been fanned out, it would have arrived first.
	if m := recv(t, got, "admin reply"); string(m.Payload()) != "reply:req1" {
		t.Errorf("admin received %q first, want the reply", m.Payload())
	}
	if req := h.auth.last(); req.Transport != localbroker.TransportUnix || (runtime.GOOS == "linux" && (req.Peer == nil || req.Peer.PID != int32(os.Getpid()))) {
		t.Errorf("unix ConnectRequest: transport %q peer %+v", req.Transport, req.Peer)
	}
	if len(h.sink.topics()) != 2 {
		t.Errorf("admin request reached the sink: %v", h.sink.topics())
	}
	// Admin publishes elsewhere are denied like any other.
	lost3 := make(chan error, 1)
	adm2 := connect(t, h.url(t, "unix"), "ctl2", "", "", withLost(lost3))
	adm2.Publish(topicA("x"), 1, false, "x")
	waitErr(t, lost3, "disconnect after an admin published to a device topic")

	// PublishAdmin refuses topics outside the admin namespace.
	for _, topic := range []string{topicA("x"), localbroker.AdminRequestTopic, "$edgegw/admin/", "$edgegw/admin/+"} {
		if err := h.b.PublishAdmin(topic, nil, nil); !errors.Is(err, localbroker.ErrTopicNotAllowed) {
			t.Errorf("PublishAdmin(%q): %v, want ErrTopicNotAllowed", topic, err)
		}
	}
	if got := h.b.Stats().PublishesDenied; got < 4 {
		t.Errorf("PublishesDenied = %d, want ≥ 4", got)
	}
}

func TestSinkBeforePuback(t *testing.T) {
	h := startBroker(t, nil)
	url := h.url(t, "tcp")
	entered := make(chan struct{}, 1)
	release := make(chan struct{})
	h.sink.setHook(func(_ context.Context, m localbroker.Message) error {
		if strings.HasSuffix(m.Topic, "/slow") {
			entered <- struct{}{}
			<-release
		}
		return nil
	})
	watcher := make(chan paho.Message, 10)
	w := connect(t, url, "watch", dnA, passA)
	subscribe(t, w, topicA("#"), 1, watcher)

	a := connect(t, url, "a", dnA, passA)
	tok := a.Publish(topicA("slow"), 1, false, "payload")
	<-entered
	select {
	case <-tok.Done():
		t.Fatal("PUBACK arrived while the sink was still blocked")
	case m := <-watcher:
		t.Fatalf("message %q fanned out while the sink was still blocked", m.Topic())
	case <-time.After(300 * time.Millisecond):
	}
	close(release)
	wait(t, tok, "publish after the sink returned")
	// Device publishes are never fanned out locally (no echo, also not to
	// the device's other sessions): the watcher's first message is the
	// downlink sent after the PUBACK.
	if err := h.b.Deliver(idA.DeviceID, topicA("marker"), nil, 1); err != nil {
		t.Fatalf("Deliver: %v", err)
	}
	if m := recv(t, watcher, "marker"); m.Topic() != topicA("marker") {
		t.Errorf("watcher got %q: a device publish was fanned out", m.Topic())
	}
}

// A publish the sink refuses gets no PUBACK, and the broker ends the
// connection: clients resend an unacknowledged publish only after a
// reconnect, so without it a device waiting for the PUBACK would wait
// forever. A refused QoS 0 publish is just dropped.
func TestSinkErrorNoPuback(t *testing.T) {
	h := startBroker(t, nil)
	url := h.url(t, "tcp")
	var fails atomic.Int32
	fails.Store(1)
	h.sink.setHook(func(_ context.Context, m localbroker.Message) error {
		if strings.HasSuffix(m.Topic, "/bad") && fails.Add(-1) >= 0 {
			return errors.New("spool full")
		}
		return nil
	})
	watcher := make(chan paho.Message, 10)
	w := connect(t, url, "watch", dnA, passA)
	subscribe(t, w, topicA("#"), 1, watcher)

	// A persistent session: paho resends the unacknowledged publish when it
	// reconnects. Nobody kicks it but the broker.
	reconnected := make(chan struct{}, 1)
	a := connect(t, url, "a", dnA, passA, withClean(false), func(o *paho.ClientOptions) {
		o.SetAutoReconnect(true).SetMaxReconnectInterval(100 * time.Millisecond)
		o.SetReconnectingHandler(func(paho.Client, *paho.ClientOptions) {
			select {
			case reconnected <- struct{}{}:
			default:
			}
		})
	})
	// QoS 0 refused: dropped, the connection stays.
	fails.Store(1)
	wait(t, a.Publish(topicA("bad"), 0, false, "zero"), "publish QoS 0")
	wait(t, a.Publish(topicA("good"), 1, false, "after zero"), "publish good")
	if m := h.sink.next(t); m.Topic != topicA("good") {
		t.Fatalf("sink accepted %q, want the good one (the QoS 0 one was refused)", m.Topic)
	}
	if err := h.b.Deliver(idA.DeviceID, topicA("marker"), nil, 1); err != nil {
		t.Fatalf("Deliver: %v", err)
	}
	if m := recv(t, watcher, "marker"); m.Topic() != topicA("marker") {
		t.Fatalf("watcher got %q first: a device publish was fanned out", m.Topic())
	}
	if got := h.b.Stats().WithheldDisconnects; got != 0 {
		t.Fatalf("a refused QoS 0 publish disconnected the device (%d)", got)
	}

	// QoS 1 refused once: the broker disconnects, paho reconnects and
	// resends, the sink accepts the resent message.
	fails.Store(1)
	bad := a.Publish(topicA("bad"), 1, false, "first")
	select {
	case <-reconnected:
	case <-time.After(10 * time.Second):
		t.Fatal("the device was not disconnected by the broker within 10 s")
	}
	wait(t, bad, "the refused publish, resent after the reconnect")
	if m := h.sink.next(t); m.Topic != topicA("bad") || string(m.Payload) != "first" {
		t.Fatalf("after reconnect the sink got %q %q, want the resent message", m.Topic, m.Payload)
	}
	st := h.b.Stats()
	if st.SinkErrors != 2 || st.WithheldDisconnects != 1 {
		t.Errorf("SinkErrors = %d, WithheldDisconnects = %d; want 2 and 1", st.SinkErrors, st.WithheldDisconnects)
	}
	if !strings.Contains(h.logs.String(), "spool full") {
		t.Error("sink error not logged")
	}
}

func TestDeliver(t *testing.T) {
	h := startBroker(t, nil)
	url := h.url(t, "tcp")
	gotA, gotB := make(chan paho.Message, 10), make(chan paho.Message, 10)
	a := connect(t, url, "a", dnA, passA)
	b := connect(t, url, "b", dnB, passB)
	bcast := "/broadcast/" + pk1 + "/news"
	subscribe(t, a, "/broadcast/"+pk1+"/#", 1, gotA)
	subscribe(t, b, "/broadcast/"+pk1+"/#", 1, gotB)
	subscribe(t, a, topicA("down/+"), 1, gotA)
	subscribe(t, b, topicB("down/+"), 0, gotB)

	if err := h.b.Deliver(idA.DeviceID, bcast, []byte("only A"), 1); err != nil {
		t.Fatalf("Deliver broadcast to A: %v", err)
	}
	if m := recv(t, gotA, "A"); m.Topic() != bcast || string(m.Payload()) != "only A" || m.Qos() != 1 {
		t.Errorf("A got %q %q qos %d", m.Topic(), m.Payload(), m.Qos())
	}
	if err := h.b.Deliver(idB.DeviceID, topicB("down/1"), []byte("for B"), 1); err != nil {
		t.Fatalf("Deliver to B: %v", err)
	}
	// B's first message must be its own: the broadcast for A must not reach it.
	if m := recv(t, gotB, "B"); m.Topic() != topicB("down/1") || m.Qos() != 0 {
		t.Errorf("B got %q qos %d first, want %q at its subscription's QoS 0", m.Topic(), m.Qos(), topicB("down/1"))
	}

	errCases := []struct {
		id    localbroker.Identity
		topic string
		want  error
	}{
		{idA, topicB("down/1"), localbroker.ErrTopicNotAllowed},
		{idA, topicA("down/+"), localbroker.ErrTopicNotAllowed},
		{idA, "$edgegw/admin/v1/response", localbroker.ErrTopicNotAllowed},
		{localbroker.Identity{Admin: true, Name: "x"}, localbroker.AdminResponseTopic, localbroker.ErrTopicNotAllowed},
		{idA, topicA("other"), localbroker.ErrNotSubscribed},
		{localbroker.Identity{DeviceID: secrets.DeviceID{ProductKey: pk1, DeviceName: "nobody"}}, "/" + pk1 + "/nobody/user/x", localbroker.ErrNotConnected},
	}
	for _, c := range errCases {
		if err := h.b.Deliver(c.id.DeviceID, c.topic, nil, 1); !errors.Is(err, c.want) {
			t.Errorf("Deliver(%s, %q): %v, want %v", c.id, c.topic, err, c.want)
		}
	}
	st := h.b.Stats()
	if st.Delivered != 2 || st.DeliverFailed != uint64(len(errCases)) {
		t.Errorf("Stats: Delivered %d DeliverFailed %d", st.Delivered, st.DeliverFailed)
	}
}

func TestDeliverQueuedForPersistentSession(t *testing.T) {
	h := startBroker(t, nil)
	url := h.url(t, "tcp")
	c := newClient(url, "persist", dnA, passA, withClean(false))
	wait(t, c.Connect(), "connect")
	subscribe(t, c, topicA("down/#"), 1, nil)
	c.Disconnect(100)
	testutil.Eventually(t, 10*time.Second, func() bool { return h.b.Stats().ClientsConnected == 0 }, "session offline")

	if err := h.b.Deliver(idA.DeviceID, topicA("down/q1"), []byte("queued"), 1); err != nil {
		t.Fatalf("Deliver to an offline persistent session: %v", err)
	}
	// The session is subscribed; what stops a QoS 0 message is that it is
	// offline (QoS 0 is not queued).
	if err := h.b.Deliver(idA.DeviceID, topicA("down/q0"), []byte("qos0"), 0); !errors.Is(err, localbroker.ErrNotConnected) {
		t.Errorf("QoS 0 Deliver to an offline session: %v, want ErrNotConnected", err)
	}
	got := make(chan paho.Message, 10)
	connect(t, url, "persist", dnA, passA, withClean(false), withDefaultHandler(got))
	if m := recv(t, got, "queued message"); m.Topic() != topicA("down/q1") || string(m.Payload()) != "queued" {
		t.Errorf("got %q %q", m.Topic(), m.Payload())
	}
}

func TestBindErrorNamesListener(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	url := "tcp://" + busy.Addr().String()
	b, err := localbroker.New(localbroker.Config{Listeners: []string{"tcp://127.0.0.1:0", url}, Auth: &testAuth{}, Sink: newSink()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = b.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), url) || !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("Run: %v, want an address-in-use error naming %s", err, url)
	}
	if ctx.Err() != nil {
		t.Fatal("Run waited for the context instead of returning the binding error")
	}
	if err := b.Run(ctx); !errors.Is(err, localbroker.ErrAlreadyStarted) {
		t.Errorf("second Run: %v", err)
	}
}

func TestUnixSocket(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		mode os.FileMode
		want os.FileMode
	}{
		{"default", 0, 0o660},
		{"0600", 0o600, 0o600},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, tt.name+".sock")
			// A stale socket file from a previous run is replaced.
			stale, err := net.Listen("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			stale.(*net.UnixListener).SetUnlinkOnClose(false)
			stale.Close()

			h := startBroker(t, func(c *localbroker.Config) {
				c.Listeners = []string{"unix://" + path}
				c.UnixSocketMode = tt.mode
			})
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != tt.want {
				t.Errorf("socket mode = %v, want socket %v", fi.Mode(), tt.want)
			}
			entries, _ := os.ReadDir(dir)
			for _, e := range entries {
				if strings.HasPrefix(e.Name(), ".sk") {
					t.Errorf("temporary directory %s left behind", e.Name())
				}
			}
			connect(t, "unix://"+path, "ctl", "", "")

			// A second broker on the same path must not steal the live socket.
			b2, err := localbroker.New(localbroker.Config{Listeners: []string{"unix://" + path}, Auth: &testAuth{}, Sink: newSink()})
			if err != nil {
				t.Fatal(err)
			}
			if err := b2.Run(context.Background()); err == nil || !errors.Is(err, syscall.EADDRINUSE) {
				t.Errorf("second broker on a live socket: %v", err)
			}
			if err := h.stop(); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("socket not removed at shutdown: %v", err)
			}
		})
	}
	notSocket := filepath.Join(dir, "file")
	if err := os.WriteFile(notSocket, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	b, err := localbroker.New(localbroker.Config{Listeners: []string{"unix://" + notSocket}, Auth: &testAuth{}, Sink: newSink()})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("Run over a regular file: %v", err)
	}
	if data, _ := os.ReadFile(notSocket); string(data) != "keep me" {
		t.Error("a regular file at the socket path was clobbered")
	}
}

func TestTLSClientCertificate(t *testing.T) {
	pki := testutil.NewPKI(t)
	h := startBroker(t, func(c *localbroker.Config) {
		c.Listeners = []string{"tls://127.0.0.1:0", "wss://127.0.0.1:0"}
		c.TLS = pki.ServerTLS(tls.VerifyClientCertIfGiven)
	})
	cert := pki.ClientCert(t, pk1+"/"+dnB)
	for _, scheme := range []string{"tls", "wss"} {
		t.Run(scheme, func(t *testing.T) {
			c := connect(t, h.url(t, scheme), "cert-"+scheme, "", "", withTLS(pki.ClientTLS(cert)))
			req := h.auth.last()
			if len(req.PeerCertificates) == 0 || req.PeerCertificates[0].Subject.CommonName != pk1+"/"+dnB {
				t.Fatalf("Authenticator saw certificates %v", req.PeerCertificates)
			}
			if req.Transport != scheme {
				t.Errorf("transport %q, want %q", req.Transport, scheme)
			}
			wait(t, c.Publish(topicB(scheme), 1, false, "x"), "publish")
			if m := h.sink.next(t); m.Device.DeviceName != dnB || m.Device.Method != localbroker.MethodCert {
				t.Errorf("sink got identity %+v", m.Device)
			}
			// Without a certificate the password path still works.
			connect(t, h.url(t, scheme), "pw-"+scheme, dnA, passA, withTLS(pki.ClientTLS()))
			if req := h.auth.last(); len(req.PeerCertificates) != 0 {
				t.Errorf("certificates without a client certificate: %v", req.PeerCertificates)
			}
		})
	}
	// A certificate from another CA fails the handshake.
	other := testutil.NewPKI(t).ClientCert(t, pk1+"/"+dnA)
	if err := connectErr(t, h.url(t, "tls"), "rogue", "", "", withTLS(pki.ClientTLS(other))); err == nil {
		t.Error("a client certificate from an unknown CA was accepted")
	}
}

func TestTakeover(t *testing.T) {
	obs := &recorder{}
	h := startBroker(t, func(c *localbroker.Config) { c.Observer = obs })
	url := h.url(t, "tcp")
	lost := make(chan error, 1)
	connect(t, url, "same", dnA, passA, withLost(lost))
	second := connect(t, url, "same", dnA, passA)
	waitErr(t, lost, "first connection kicked by the second")
	testutil.Eventually(t, 10*time.Second, func() bool {
		return strings.Count(strings.Join(obs.list(), "\n"), "disconnected "+pk1+"/"+dnA+" same") == 1
	}, "first disconnect processed")
	// The second connection keeps its identity after the first one's
	// disconnect was processed.
	wait(t, second.Publish(topicA("after"), 1, false, "x"), "publish on the second connection")
	if m := h.sink.next(t); m.Device != idA || m.ClientID != "same" {
		t.Errorf("sink got %+v", m)
	}
	// Another identity with the same client identifier gets a session of
	// its own: it neither takes this one over nor is refused.
	other := connect(t, url, "same", dnB, passB)
	wait(t, other.Publish(topicB("mine"), 1, false, "y"), "publish as the other device")
	if m := h.sink.next(t); m.Device != idB || m.ClientID != "same" {
		t.Errorf("sink got %+v", m)
	}
	if !second.IsConnectionOpen() {
		t.Error("another identity's connection with the same client identifier closed the session owner's")
	}
}

func TestObserverAndDisconnectDevice(t *testing.T) {
	obs := &recorder{}
	h := startBroker(t, func(c *localbroker.Config) { c.Observer = obs })
	lost := make(chan error, 1)
	a := connect(t, h.url(t, "tcp"), "obs", dnA, passA, withLost(lost))
	subscribe(t, a, topicA("x"), 1, nil)
	subscribe(t, a, topicB("x"), 1, nil) // denied: not reported
	subscribe(t, a, topicA("y"), 1, nil)
	wait(t, a.Unsubscribe(topicA("x")), "unsubscribe")
	if n := h.b.DisconnectDevice(idA.DeviceID); n != 1 {
		t.Errorf("DisconnectDevice = %d, want 1", n)
	}
	waitErr(t, lost, "kicked")
	dev := pk1 + "/" + dnA
	want := []string{
		"connected " + dev + " obs",
		"subscribed " + dev + " obs [" + topicA("x") + "]",
		"subscribed " + dev + " obs [" + topicA("y") + "]",
		"unsubscribed " + dev + " obs [" + topicA("x") + "]",
		"disconnected " + dev + " obs",
		"unsubscribed " + dev + " obs [" + topicA("y") + "]",
	}
	testutil.Eventually(t, 10*time.Second, func() bool { return len(obs.list()) >= len(want) }, "all events")
	if got := obs.list(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("events:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if n := h.b.DisconnectDevice(idA.DeviceID); n != 0 {
		t.Errorf("DisconnectDevice of a gone device = %d", n)
	}
}

func TestProtocolLimits(t *testing.T) {
	h := startBroker(t, nil)
	url := h.url(t, "tcp")
	// QoS 2 is not supported: the connection is closed, nothing is stored.
	lost := make(chan error, 1)
	a := connect(t, url, "q2", dnA, passA, withLost(lost))
	a.Publish(topicA("q2"), 2, false, "x")
	waitErr(t, lost, "disconnect after a QoS 2 publish")

	// A retained publish is accepted, reported, and not retained.
	b := connect(t, url, "ret", dnA, passA)
	wait(t, b.Publish(topicA("r"), 1, true, "retained?"), "retained publish")
	if m := h.sink.next(t); !m.Retain || m.Topic != topicA("r") {
		t.Errorf("sink got %+v", m)
	}
	got := make(chan paho.Message, 10)
	c := connect(t, url, "late", dnA, passA)
	subscribe(t, c, topicA("#"), 1, got)
	if err := h.b.Deliver(idA.DeviceID, topicA("marker"), nil, 1); err != nil {
		t.Fatalf("Deliver: %v", err)
	}
	if m := recv(t, got, "first message"); m.Topic() != topicA("marker") {
		t.Errorf("late subscriber got %q first: a retained message was stored", m.Topic())
	}

	// A will outside the namespace is refused.
	err := connectErr(t, url, "will", dnA, passA, func(o *paho.ClientOptions) { o.SetWill(topicB("lwt"), "x", 0, false) })
	if !errors.Is(err, pahopackets.ErrorRefusedNotAuthorised) {
		t.Errorf("will outside the namespace: %v", err)
	}
	connect(t, url, "will2", dnA, passA, func(o *paho.ClientOptions) { o.SetWill(topicA("lwt"), "x", 0, false) })

	// Oversized packets close the connection.
	lost2 := make(chan error, 1)
	d := connect(t, url, "big", dnA, passA, withLost(lost2))
	d.Publish(topicA("big"), 1, false, make([]byte, localbroker.DefaultMaxPacketSize+1))
	waitErr(t, lost2, "disconnect after an oversized packet")
}

func TestMaxClients(t *testing.T) {
	h := startBroker(t, func(c *localbroker.Config) { c.MaxClients = 1 })
	url := h.url(t, "tcp")
	connect(t, url, "first", dnA, passA)
	if err := connectErr(t, url, "second", dnB, passB); !errors.Is(err, pahopackets.ErrorRefusedServerUnavailable) {
		t.Errorf("connect beyond MaxClients: %v, want server unavailable", err)
	}
	testutil.Eventually(t, 10*time.Second, func() bool { return h.b.Stats().ConnectsRefused == 1 }, "refusal counted")
}

func TestShutdownWithManyClients(t *testing.T) {
	const n = 200
	const bound = 3 * time.Second
	h := startBroker(t, func(c *localbroker.Config) { c.ShutdownTimeout = bound })
	url := h.url(t, "tcp")
	lost := make(chan error, n)
	clients := make([]paho.Client, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			c := newClient(url, fmt.Sprintf("c%03d", i), dnA, passA, withLost(lost))
			if tok := c.Connect(); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
				errs <- fmt.Errorf("client %d: %v", i, tok.Error())
				return
			}
			clients[i] = c
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, c := range clients {
			c.Disconnect(0)
		}
	})
	if got := h.b.Stats().ClientsConnected; got != n {
		t.Fatalf("ClientsConnected = %d, want %d", got, n)
	}
	// Connections that never send their CONNECT are invisible to mochi's
	// client list; shutdown must close them too, not wait for their
	// ConnectTimeout (15 s by default).
	addr := strings.TrimPrefix(url, "tcp://")
	for range 3 {
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nc.Close() })
	}
	// One of them is stuck in a sink that only returns when cancelled.
	entered := make(chan struct{})
	h.sink.setHook(func(ctx context.Context, m localbroker.Message) error {
		close(entered)
		<-ctx.Done()
		return ctx.Err()
	})
	clients[0].Publish(topicA("stuck"), 1, false, "x")
	<-entered

	start := time.Now()
	if err := h.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if d := time.Since(start); d > bound+time.Second {
		t.Errorf("shutdown took %v, bound is %v", d, bound)
	}
	for i := range n {
		waitErr(t, lost, fmt.Sprintf("client %d told of the shutdown", i))
	}
	if err := h.b.Deliver(idA.DeviceID, topicA("x"), nil, 1); !errors.Is(err, localbroker.ErrNotRunning) {
		t.Errorf("Deliver after shutdown: %v", err)
	}
}

func TestInheritedListeners(t *testing.T) {
	plain, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := startBroker(t, func(c *localbroker.Config) {
		c.Listeners = []string{"tcp://127.0.0.1:0", "ws://127.0.0.1:0"}
		c.Inherited = map[string][]net.Listener{localbroker.InheritedMQTT: {plain}}
	})
	if len(h.addrs) != 2 || h.addrs["inherited:mqtt/0"].String() != plain.Addr().String() || h.addrs["ws://127.0.0.1:0"] == nil {
		t.Fatalf("Addrs = %v: the inherited listener must replace tcp:// and leave ws:// alone", h.addrs)
	}
	c := connect(t, "tcp://"+plain.Addr().String(), "inh", dnA, passA)
	wait(t, c.Publish(topicA("inh"), 1, false, "x"), "publish")
	h.sink.next(t)
	if req := h.auth.last(); req.Listener != "inherited:mqtt/0" || req.Transport != localbroker.TransportTCP {
		t.Errorf("request listener %q transport %q", req.Listener, req.Transport)
	}
}

func TestSecretsStayOutOfLogs(t *testing.T) {
	h := startBroker(t, nil)
	url := h.url(t, "tcp")
	const wrong = "wrong-secret-9d8c7b"
	if err := connectErr(t, url, "s1", dnA, wrong); err == nil {
		t.Fatal("connected with a wrong password")
	}
	connect(t, url, "s2", dnA, passA)
	h.auth.setRefuse(map[string]error{"leaky": fmt.Errorf("refused %v", secrets.NewSecret(wrong))})
	if err := connectErr(t, url, "s3", "leaky", wrong); err == nil {
		t.Fatal("connected")
	}
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}
	logs := h.logs.String()
	if strings.Contains(logs, wrong) || strings.Contains(logs, passA) {
		t.Errorf("a password is in the log:\n%s", logs)
	}
	if !strings.Contains(logs, "connection refused") {
		t.Errorf("refusals not logged:\n%s", logs)
	}
}

func TestListenerFailureEndsRun(t *testing.T) {
	inherited, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b, err := localbroker.New(localbroker.Config{
		Inherited: map[string][]net.Listener{localbroker.InheritedMQTT: {inherited}},
		Auth:      &testAuth{}, Sink: newSink(), Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- b.Run(context.Background()) }()
	<-b.Ready()
	inherited.Close() // the listener dies under the broker
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "inherited:mqtt/0") {
			t.Errorf("Run: %v, want an error naming the failed listener", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run kept going with its only listener dead")
	}
}

func TestPersistentSessionExpires(t *testing.T) {
	obs := &recorder{}
	h := startBroker(t, func(c *localbroker.Config) {
		c.Observer = obs
		c.SessionExpiry = time.Second
	})
	c := newClient(h.url(t, "tcp"), "exp", dnA, passA, withClean(false))
	wait(t, c.Connect(), "connect")
	subscribe(t, c, topicA("down"), 1, nil)
	c.Disconnect(100)
	dev := pk1 + "/" + dnA
	testutil.Eventually(t, 10*time.Second, func() bool {
		ev := obs.list()
		return len(ev) > 0 && ev[len(ev)-1] == "unsubscribed "+dev+" exp ["+topicA("down")+"]"
	}, "session expired")
	if err := h.b.Deliver(idA.DeviceID, topicA("down"), nil, 1); !errors.Is(err, localbroker.ErrNotConnected) {
		t.Errorf("Deliver after the session expired: %v, want ErrNotConnected", err)
	}
	if got := h.b.Stats().Sessions; got != 0 {
		t.Errorf("Sessions = %d after expiry", got)
	}
	// A new session with the same client ID starts empty.
	got := make(chan paho.Message, 1)
	d := connect(t, h.url(t, "tcp"), "exp", dnA, passA, withClean(false), withDefaultHandler(got))
	wait(t, d.Publish(topicA("down"), 1, false, "x"), "publish")
	select {
	case m := <-got:
		t.Errorf("the expired session's subscription still delivers: %q", m.Topic())
	case <-time.After(300 * time.Millisecond):
	}
}

// TestIdentityWildcardFilters: firmware such as the Link SDK 4.x subscribes
// with '+' in the identity positions ("/sys/+/+/thing/service/+",
// "/ota/device/upgrade/+/+"). The filter is granted, and the device only
// ever gets its own topics through it: Deliver goes to the addressed
// device's sessions only, and the local fan-out of another device's publish
// is refused by the per-delivery ACL check.
func TestIdentityWildcardFilters(t *testing.T) {
	h := startBroker(t, nil)
	url := h.url(t, "tcp")
	gotA := make(chan paho.Message, 10)
	a := connect(t, url, "a", dnA, passA)
	b := connect(t, url, "b", dnB, passB)
	for _, f := range []string{"/sys/+/+/thing/service/+", "/sys/+/+/thing/event/+/post", "/ota/device/upgrade/+/+"} {
		if got := subscribe(t, a, f, 1, gotA); got != 1 {
			t.Fatalf("subscribe %q: return code 0x%02x, want 1", f, got)
		}
	}
	// B publishes on its own topic that A's filter matches: A must not get it.
	bTopic := "/sys/" + pk1 + "/" + dnB + "/thing/event/alarm/post"
	wait(t, b.Publish(bTopic, 1, false, "B's event"), "B publishes its event")
	if m := h.sink.next(t); m.Topic != bTopic {
		t.Fatalf("sink got %q, want %q", m.Topic, bTopic)
	}
	if err := h.b.Deliver(idB.DeviceID, "/ota/device/upgrade/"+pk1+"/"+dnB, []byte("for B"), 1); !errors.Is(err, localbroker.ErrNotSubscribed) {
		t.Errorf("Deliver to B (not subscribed): %v, want ErrNotSubscribed", err)
	}
	own := "/ota/device/upgrade/" + pk1 + "/" + dnA
	if err := h.b.Deliver(idA.DeviceID, own, []byte("for A"), 1); err != nil {
		t.Fatalf("Deliver to A: %v", err)
	}
	// A's first message is its own upgrade notice, not B's event.
	if m := recv(t, gotA, "A"); m.Topic() != own || string(m.Payload()) != "for A" {
		t.Errorf("A got %q %q first, want %q", m.Topic(), m.Payload(), own)
	}
}
