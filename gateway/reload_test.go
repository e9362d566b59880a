package gateway_test

import (
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgegw/edgegw/gateway"
	"github.com/edgegw/edgegw/gateway/config"
	"github.com/edgegw/edgegw/gateway/devsim"
	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/internal/testutil/gwtest"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink"
	"github.com/edgegw/edgegw/uplink/cloudsim"
)

// servedSerial returns the serial number of the certificate a new TLS
// client is shown on addr (empty when the handshake fails).
func servedSerial(t *testing.T, addr string, roots *x509.CertPool) string {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12})
	if err != nil {
		return ""
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber.String()
}

func serial(t *testing.T, c tls.Certificate) string {
	t.Helper()
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return leaf.SerialNumber.String()
}

// TestListenerCertificateRotation: renewing the tls:// listener's
// certificate on disk (same paths, as certbot or an enrolment agent does)
// makes new TLS clients see the new certificate without a restart, while a
// device already connected over TLS stays connected and keeps publishing.
func TestListenerCertificateRotation(t *testing.T) {
	ca := testutil.NewPKI(t)
	certFile, keyFile := ca.WriteCert(t, ca.Server, "server")
	r := newRigWith(t, rigOptions{devices: 1, passwords: 1, simRate: cloudsim.RateUnlimited,
		opts: gateway.Options{CertCheckInterval: 20 * time.Millisecond},
		mutate: func(c *config.Config) {
			c.Broker.Listeners = append(c.Broker.Listeners, "tls://127.0.0.1:0")
			c.Broker.TLSCert, c.Broker.TLSKey = certFile, keyFile
		}})
	addr := r.run.Addr("tls")
	if got, want := servedSerial(t, addr, ca.Pool), serial(t, ca.Server); got != want {
		t.Fatalf("served certificate %s, want %s", got, want)
	}

	d := r.devices[0]
	o := mqtt.NewClientOptions().AddBroker("tls://" + addr).SetClientID(d.DeviceName).
		SetUsername(d.DeviceName + "&" + d.ProductKey).SetPassword("pw-" + d.DeviceName).
		SetProtocolVersion(4).SetAutoReconnect(false).SetTLSConfig(ca.ClientTLS())
	dev := mqtt.NewClient(o)
	testutil.WaitToken(t, dev.Connect(), 10*time.Second, "device connect over TLS")
	t.Cleanup(func() { dev.Disconnect(0) })

	renewed := ca.ServerCert(t, "127.0.0.1", "localhost")
	certPEM, keyPEM := testutil.EncodePEM(t, renewed)
	for path, b := range map[string][]byte{certFile: certPEM, keyFile: keyPEM} {
		tmp := path + ".new"
		if err := os.WriteFile(tmp, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	want := serial(t, renewed)
	testutil.Eventually(t, 20*time.Second, func() bool { return servedSerial(t, addr, ca.Pool) == want },
		"new TLS clients shown the renewed certificate %s", want)

	if !dev.IsConnectionOpen() {
		t.Fatal("the device's TLS connection dropped with the certificate renewal")
	}
	testutil.WaitToken(t, dev.Publish(d.UplinkTopic(), 1, false, `{"id":"1","params":{"seq":1}}`), 10*time.Second, "publish after renewal")
	testutil.Eventually(t, 20*time.Second, func() bool { return len(r.seqs(d)) >= 1 }, "message after renewal in the cloud")
}

// TestReloadAppliesLiveKeys: Reload applies the log level and the admin
// users at once, names what needs a restart, and a configuration whose
// certificate cannot be loaded changes nothing.
func TestReloadAppliesLiveKeys(t *testing.T) {
	ca := testutil.NewPKI(t)
	certFile, keyFile := ca.WriteCert(t, ca.Server, "server")
	var level slog.LevelVar
	r := newRigWith(t, rigOptions{devices: 1, simRate: cloudsim.RateUnlimited,
		opts: gateway.Options{Level: &level},
		mutate: func(c *config.Config) {
			c.Broker.Listeners = append(c.Broker.Listeners, "tls://127.0.0.1:0")
			c.Broker.TLSCert, c.Broker.TLSKey = certFile, keyFile
		}})
	login := func(user, pw string) error {
		o := mqtt.NewClientOptions().AddBroker("tcp://" + r.local).SetClientID("reload-" + user).SetUsername(user).SetPassword(pw).
			SetProtocolVersion(4).SetAutoReconnect(false)
		c := mqtt.NewClient(o)
		tok := c.Connect()
		if !tok.WaitTimeout(10 * time.Second) {
			t.Fatalf("login %s: no CONNACK", user)
		}
		if tok.Error() == nil {
			c.Disconnect(0)
		}
		return tok.Error()
	}
	if err := login("ops", "ops-password-1"); err == nil {
		t.Fatal("admin ops accepted before it was configured")
	}

	next := *r.cfg
	next.LogLevel = "debug"
	next.Cloud.Inflight = r.cfg.Cloud.Inflight + 1
	next.Broker.Admin = nil
	gwtest.AddAdmin(t, &next, "ops", "ops-password-1")
	applied, restart, err := r.gw.Reload(&next)
	if err != nil {
		t.Fatalf("reload: %v", err)
	}
	if !slices.Contains(applied, "log_level") || !slices.Contains(applied, "broker.admin") {
		t.Errorf("applied %q, want log_level and broker.admin", applied)
	}
	if !slices.Equal(restart, []string{"cloud.inflight"}) {
		t.Errorf("needs restart %q, want [cloud.inflight]", restart)
	}
	if level.Level() != slog.LevelDebug {
		t.Errorf("log level %v after reload, want debug", level.Level())
	}
	if err := login("ops", "ops-password-1"); err != nil {
		t.Errorf("admin ops added by reload refused: %v", err)
	}

	bad := next
	bad.LogLevel = "warn"
	bad.Broker.TLSCert = certFile + ".missing"
	if _, _, err := r.gw.Reload(&bad); err == nil || !strings.Contains(err.Error(), "broker.tls_cert") {
		t.Errorf("reload with a missing certificate: err %v, want one naming broker.tls_cert", err)
	}
	if level.Level() != slog.LevelDebug {
		t.Errorf("a failed reload changed the log level to %v", level.Level())
	}
	if got, want := servedSerial(t, r.run.Addr("tls"), ca.Pool), serial(t, ca.Server); got != want {
		t.Errorf("after a failed reload the listener serves %q, want %s", got, want)
	}
}

// TestCloudTLSRenewal: the cloud's CA file and the gateway-wide client
// certificate (cloud.client_cert) are used for mutual TLS to the cloud,
// and a CA file renewed on disk is picked up by the next connection
// attempt without a restart.
func TestCloudTLSRenewal(t *testing.T) {
	pki := testutil.NewPKI(t)
	dev := devsim.Device{Dialect: secrets.Aliyun, ProductKey: testPK, DeviceName: "tls-dev", Secret: secrets.NewSecret("secret-tls-0123456789abcdef")}
	sim := gwtest.StartCloud(t, cloudsim.Config{Dialect: secrets.Aliyun, Listen: "127.0.0.1:0", TLSListen: "127.0.0.1:0",
		TLSConfig: pki.ServerTLS(tls.RequireAndVerifyClientCert), DeviceRate: cloudsim.RateUnlimited,
		Devices: []cloudsim.Device{{ProductKey: dev.ProductKey, DeviceName: dev.DeviceName, Secret: dev.Secret}}})
	cfg := gwtest.Config(t, sim)
	cfg.Cloud.Endpoint = "tls://" + sim.Addr(cloudsim.TLS)
	cfg.Cloud.BackoffMin, cfg.Cloud.BackoffMax = config.Duration(20*time.Millisecond), config.Duration(100*time.Millisecond)
	caFile := filepath.Join(t.TempDir(), "cloud-ca.pem")
	if err := os.WriteFile(caFile, testutil.NewNamedPKI(t, "expired CA").CAPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.Cloud.CAFile = caFile
	cfg.Cloud.ClientCert, cfg.Cloud.ClientKey = pki.WriteCert(t, pki.ClientCert(t, "edgegw"), "gateway-client")
	seedRegistry(t, cfg, []devsim.Device{dev}, 0)
	run := gwtest.Start(t, cfg, gateway.Options{CertCheckInterval: 20 * time.Millisecond})

	connected := func() bool { return run.Gateway.Snapshot().Sessions[uplink.StateConnected] == 1 }
	if connected() {
		t.Fatal("connected to a cloud whose CA is not trusted")
	}
	if err := os.WriteFile(caFile, pki.CAPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 20*time.Second, connected, "cloud session up after the CA file was renewed")
}
