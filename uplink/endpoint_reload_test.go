package uplink

import (
	"crypto/tls"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/edgegw/edgegw/internal/testutil"
)

// TestEndpointReloadTLS: a renewed CA file (the cloud changed its
// certificate chain) is trusted by the next connection attempt once the
// endpoint's TLS is reloaded, without rebuilding the manager; a CA file
// that cannot be read keeps the previous trust roots.
func TestEndpointReloadTLS(t *testing.T) {
	oldCA, newCA := testutil.NewPKI(t), testutil.NewNamedPKI(t, "renewed CA")
	ln, err := tls.Listen("tcp", "127.0.0.1:0", newCA.ServerTLS(tls.NoClientCert))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()

	caFile := filepath.Join(t.TempDir(), "cloud-ca.pem")
	if err := os.WriteFile(caFile, oldCA.CAPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	e := Endpoint{URL: "tls://" + ln.Addr().String(), CAFile: caFile}
	ep, err := compileEndpoint(e)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse("tls://" + ln.Addr().String())
	try := func() error {
		c, err := dial(t.Context(), u, ep.tlsFor(nil), 5*time.Second)
		if err == nil {
			c.Close()
		}
		return err
	}
	if err := try(); err == nil {
		t.Fatal("server with a certificate from an untrusted CA accepted")
	}

	if err := os.WriteFile(caFile, newCA.CAPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := ep.reloadTLS(e); err != nil {
		t.Fatalf("reload: %v", err)
	}
	if err := try(); err != nil {
		t.Fatalf("after reloading the renewed CA file: %v", err)
	}

	if err := ep.reloadTLS(Endpoint{URL: e.URL, CAFile: caFile + ".missing"}); err == nil {
		t.Error("reload with a missing CA file succeeded")
	}
	if err := try(); err != nil {
		t.Errorf("a failed reload dropped the trust roots: %v", err)
	}
	if err := ep.reloadTLS(Endpoint{URL: "tls://other.example:8883", CAFile: caFile}); err == nil {
		t.Error("reload changed the endpoint URL")
	}
}

// TestEndpointClientCertificateHook: the base configuration's
// GetClientCertificate (the gateway-wide certificate, reloadable) is used
// unless the device has its own certificate, which then wins.
func TestEndpointClientCertificateHook(t *testing.T) {
	pki := testutil.NewPKI(t)
	gw, dev := pki.ClientCert(t, "gateway"), pki.ClientCert(t, "pk/dev")
	e := Endpoint{URL: "tls://127.0.0.1:1", CAPEM: pki.CAPEM, TLS: &tls.Config{MinVersion: tls.VersionTLS12,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &gw, nil }}}
	ep, err := compileEndpoint(e)
	if err != nil {
		t.Fatal(err)
	}
	if c := ep.tlsFor(nil); c.GetClientCertificate == nil {
		t.Error("gateway-wide client certificate hook lost")
	}
	c := ep.tlsFor(&dev)
	if c.GetClientCertificate != nil || len(c.Certificates) != 1 {
		t.Errorf("device certificate not used alone: hook %v, %d certificates", c.GetClientCertificate != nil, len(c.Certificates))
	}
}
