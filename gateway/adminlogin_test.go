package gateway_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgegw/edgegw/gateway"
	"github.com/edgegw/edgegw/gateway/adminapi"
	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/internal/testutil/gwtest"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink/cloudsim"
)

// loginRig is a gateway with a network admin "ops", a device with a local
// password, a TCP listener and metrics, on a clock the test can move.
type loginRig struct {
	t       testing.TB
	clk     *jumpClock
	run     *gwtest.Running
	tcp     string
	metrics string
	log     *testutil.SyncBuffer
}

const loginDevice = "pump-login1"

func newLoginRig(t testing.TB) *loginRig {
	t.Helper()
	sim := gwtest.StartCloud(t, cloudsim.Config{Dialect: secrets.Aliyun, Listen: "127.0.0.1:0", DeviceRate: cloudsim.RateUnlimited})
	cfg := gwtest.Config(t, sim)
	cfg.Metrics.Listen = "127.0.0.1:0"
	gwtest.AddAdmin(t, cfg, "ops", admAdminPassword)
	r := &loginRig{t: t, clk: &jumpClock{}, log: &testutil.SyncBuffer{}}
	logger := slog.New(slog.NewTextHandler(r.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	r.run = gwtest.Start(t, cfg, gateway.Options{Logger: logger, Clock: r.clk})
	r.tcp = r.run.Addr("tcp")
	r.metrics = r.run.Gateway.MetricsAddr().String()

	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	api, err := adminapi.Dial(ctx, adminapi.Options{URL: "unix://" + gwtest.Socket(cfg), Name: "login-setup"})
	if err != nil {
		t.Fatal(err)
	}
	defer api.Close()
	if err := api.Call(ctx, adminapi.MethodProductAdd, adminapi.ProductAddParams{ProductKey: admPK, Dialect: "aliyun"}, nil); err != nil {
		t.Fatal(err)
	}
	if err := api.Call(ctx, adminapi.MethodDeviceAdd, adminapi.DeviceAddParams{DeviceID: did(admPK, loginDevice),
		DeviceSecret: "0123456789abcdef0123456789abcdef", LocalPassword: "device-pw-0001"}, nil); err != nil {
		t.Fatal(err)
	}
	return r
}

// login connects to the TCP listener and disconnects again; it returns
// paho's error (nil when the CONNACK accepted the login).
func (r *loginRig) login(clientID, user, password string) error {
	o := mqtt.NewClientOptions().AddBroker("tcp://" + r.tcp).SetClientID(clientID).SetUsername(user).SetPassword(password).
		SetProtocolVersion(4).SetAutoReconnect(false).SetConnectRetry(false)
	c := mqtt.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		r.t.Fatalf("connect %s: no CONNACK within 10s", user)
	}
	if err := tok.Error(); err != nil {
		return err
	}
	c.Disconnect(0)
	return nil
}

// counter returns the value of one series of /metrics ("" if missing).
func (r *loginRig) counter(series string) string {
	resp, err := http.Get("http://" + r.metrics + "/metrics")
	if err != nil {
		r.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			return v
		}
	}
	return ""
}

func notAuthorized(err error) bool {
	return err != nil && strings.Contains(err.Error(), "not Authorized")
}

// TestAdminLoginThrottled: wrong guesses against a [[broker.admin]] user
// make the next logins of that user wait (refused at once with CONNACK 5,
// even with the right password) for a delay that grows with every failure;
// once the delay has passed the right password works and resets it.
// Devices logging in from the same address are not affected. The gateway's
// clock is moved instead of waiting.
func TestAdminLoginThrottled(t *testing.T) {
	r := newLoginRig(t)
	for i := range 5 {
		if err := r.login(fmt.Sprintf("guess-%d", i), "ops", fmt.Sprintf("guess-%d", i)); !notAuthorized(err) {
			t.Fatalf("wrong guess %d: %v, want CONNACK 5 not authorized", i, err)
		}
	}
	// The right password now is refused: the user waits after 5 failures.
	if err := r.login("ops-early", "ops", admAdminPassword); !notAuthorized(err) {
		t.Fatalf("right password during the delay: %v, want CONNACK 5 not authorized", err)
	}
	// A device on the same address logs in as usual.
	if err := r.login(admPK+"."+loginDevice, loginDevice+"&"+admPK, "device-pw-0001"); err != nil {
		t.Fatalf("device login while the admin is throttled: %v", err)
	}
	if got := r.counter(`edgegw_broker_admin_login_failures_total{reason="throttled"}`); got == "" || got == "0" {
		t.Errorf("throttled failures = %q, want > 0", got)
	}
	if got := r.counter(`edgegw_broker_admin_login_failures_total{reason="wrong_password"}`); got == "" || got == "0" {
		t.Errorf("wrong-password failures = %q, want > 0", got)
	}

	r.clk.jump(31 * time.Second) // past the longest delay
	if err := r.login("ops-late", "ops", admAdminPassword); err != nil {
		t.Fatalf("right password after the delay: %v", err)
	}
	// Success reset the count: one more typo costs no wait.
	if err := r.login("ops-typo", "ops", "typo"); !notAuthorized(err) {
		t.Fatalf("typo: %v", err)
	}
	if err := r.login("ops-again", "ops", admAdminPassword); err != nil {
		t.Fatalf("right password after one typo: %v", err)
	}
	if logs := r.log.String(); strings.Contains(logs, admAdminPassword) {
		t.Fatal("the admin password is in the log")
	}
}

// BenchmarkAdminGuessing guesses a network admin's password over TCP as
// fast as one client can, on the real clock, and reports the attempts per
// second and how many of them were checked against the password (the
// others were refused by the throttle without a hash). The figure
// before throttling: 5,000 guesses in 0.87 s, every one checked.
func BenchmarkAdminGuessing(b *testing.B) {
	r := newLoginRig(b)
	start := time.Now()
	n := 0
	for b.Loop() {
		if err := r.login(fmt.Sprintf("guess-%d", n), "ops", fmt.Sprintf("guess-%d", n)); !notAuthorized(err) {
			b.Fatalf("guess %d: %v", n, err)
		}
		n++
	}
	secs := time.Since(start).Seconds()
	b.ReportMetric(float64(n)/secs, "attempts/s")
	checked := float64(n) // before throttling every attempt was a check
	if v := r.counter(`edgegw_broker_admin_login_failures_total{reason="wrong_password"}`); v != "" {
		fmt.Sscan(v, &checked)
	}
	b.ReportMetric(checked/secs, "checked/s")
	b.ReportMetric(checked, "checked")
}
