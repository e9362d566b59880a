package uplink

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgegw/edgegw/secrets"
)

// testPKI is a CA with a server certificate for 127.0.0.1 and a client
// certificate.
type testPKI struct {
	ca     *x509.Certificate
	caPEM  []byte
	server tls.Certificate
	client tls.Certificate
}

func newTestPKI(t testing.TB) *testPKI {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "edgegw test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	leaf := func(serial int64, cn string, usage x509.ExtKeyUsage, ip bool) tls.Certificate {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		}
		if ip {
			tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	}
	return &testPKI{
		ca:     ca,
		caPEM:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		server: leaf(2, "127.0.0.1", x509.ExtKeyUsageServerAuth, true),
		client: leaf(3, "dev0001", x509.ExtKeyUsageClientAuth, false),
	}
}

func (p *testPKI) serverConfig(requireClient bool) *tls.Config {
	c := &tls.Config{Certificates: []tls.Certificate{p.server}, MinVersion: tls.VersionTLS12}
	if requireClient {
		pool := x509.NewCertPool()
		pool.AddCert(p.ca)
		c.ClientCAs, c.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return c
}

func TestTransports(t *testing.T) {
	pki := newTestPKI(t)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pki.caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	wsAddr := func() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t))) }
	tests := []struct {
		name       string
		dialect    secrets.Dialect
		server     mochiOptions
		endpoint   func(url string) Endpoint
		clientCert bool
		secureMode int
		wantErr    string // empty: connects
	}{
		{"tls with CA PEM", secrets.Aliyun, mochiOptions{tls: pki.serverConfig(false)},
			func(u string) Endpoint { return Endpoint{URL: u, CAPEM: pki.caPEM} }, false, 2, ""},
		{"tls with CA file", secrets.Aliyun, mochiOptions{tls: pki.serverConfig(false)},
			func(u string) Endpoint { return Endpoint{URL: u, CAFile: caFile} }, false, 2, ""},
		{"tls with vendor roots hook", secrets.Aliyun, mochiOptions{tls: pki.serverConfig(false)},
			func(u string) Endpoint { return Endpoint{URL: u, ExtraRoots: []*x509.Certificate{pki.ca}} }, false, 2, ""},
		{"tls verifies the server by default", secrets.Aliyun, mochiOptions{tls: pki.serverConfig(false)},
			func(u string) Endpoint { return Endpoint{URL: u} }, false, 0, "certificate"},
		{"EnOS two-way tls with client certificate", secrets.EnOS, mochiOptions{tls: pki.serverConfig(true)},
			func(u string) Endpoint { return Endpoint{URL: u, CAPEM: pki.caPEM} }, true, 2, ""},
		{"EnOS two-way tls without client certificate", secrets.EnOS, mochiOptions{tls: pki.serverConfig(true)},
			func(u string) Endpoint { return Endpoint{URL: u, CAPEM: pki.caPEM} }, false, 0, "certificate required"},
		{"EnOS over plain tcp signs with securemode 2", secrets.EnOS, mochiOptions{},
			func(u string) Endpoint { return Endpoint{URL: u} }, false, 2, ""},
		{"ws", secrets.Aliyun, mochiOptions{ws: wsAddr()},
			func(u string) Endpoint { return Endpoint{URL: u} }, false, 3, ""},
		{"wss", secrets.Aliyun, mochiOptions{ws: wsAddr(), tls: pki.serverConfig(false)},
			func(u string) Endpoint { return Endpoint{URL: u, CAPEM: pki.caPEM} }, false, 2, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cloud := startMochi(t, tt.dialect, tt.server)
			url := cloud.url
			if tt.server.ws != "" {
				// mochi's WebSocket listener starts asynchronously.
				eventually(t, 5*time.Second, "websocket listener", func() bool {
					c, err := net.Dial("tcp", tt.server.ws)
					if err == nil {
						c.Close()
					}
					return err == nil
				})
			}
			r := newRig(t, url, func(c *ManagerConfig) {
				c.Endpoint = tt.endpoint(url)
				c.ConnectTimeout = 5 * time.Second
				l := DefaultLimits(tt.dialect)
				l.Backoff = Backoff{Initial: 5 * time.Millisecond, Max: 50 * time.Millisecond}
				l.MessageRate = Rate{} // the transport is under test, not the rate
				c.Limits = map[secrets.Dialect]DialectLimits{tt.dialect: l}
			})
			dev := testDevice(1)
			dev.Dialect = tt.dialect
			if tt.clientCert {
				dev.ClientCert = &pki.client
			}
			cloud.register(dev.ID, dev.Secret)
			r.add(dev)
			startManager(t, r.m)
			if tt.wantErr != "" {
				st := r.waitStatus(dev.ID, "a failed attempt", func(st SessionStatus) bool { return st.State == StateBackoff && st.Attempts >= 1 })
				if !strings.Contains(st.LastError, tt.wantErr) || st.Connects != 0 {
					t.Fatalf("state %s, connects %d, last error %q; want a failure mentioning %q", st.State, st.Connects, st.LastError, tt.wantErr)
				}
				return
			}
			r.waitStatus(dev.ID, "connected", func(st SessionStatus) bool { return st.State == StateConnected })
			recs := cloud.hook.connectRecords()
			if len(recs) == 0 || recs[0].Presented == nil || recs[0].Presented.SecureMode != tt.secureMode {
				t.Fatalf("CONNECT records %+v, want securemode %d", recs, tt.secureMode)
			}
			r.q.appendN(t, dev.ID, userTopic(dev.ID), 1, 20)
			r.waitStatus(dev.ID, "delivered", func(st SessionStatus) bool { return st.Sent == 20 })
			checkOrder(t, "cloud", cloud.hook.receivedBy(dev.ID), 20)
		})
	}
}
