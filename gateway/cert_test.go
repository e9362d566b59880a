package gateway_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/edgegw/edgegw/gateway/config"
)

// testCA is a throwaway certificate authority for TLS tests.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue returns a leaf certificate (PEM cert, PEM key) for a server
// (ip set) or a client.
func (ca *testCA) issue(t *testing.T, cn string, ip net.IP) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature,
	}
	if ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	} else {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
}

func writeFile(t *testing.T, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestClientCertificateAuth: a device presenting a client certificate whose
// CN is productKey/deviceName, signed by the configured client CA, logs in
// without a password on a tls:// listener and its messages reach the cloud
// under its identity; a certificate from another CA, or naming an unknown
// device, is refused.
func TestClientCertificateAuth(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t, "edgegw test CA")
	srvCert, srvKey := ca.issue(t, "edgegw", net.ParseIP("127.0.0.1"))
	certFile, keyFile := writeFile(t, dir, "server.pem", srvCert), writeFile(t, dir, "server.key", srvKey)
	caFile := writeFile(t, dir, "ca.pem", ca.pem)

	r := newRig(t, 2, 0, func(c *config.Config) {
		c.Broker.Listeners = append(c.Broker.Listeners, "tls://127.0.0.1:0")
		c.Broker.TLSCert, c.Broker.TLSKey, c.Broker.ClientCA = certFile, keyFile, caFile
	})
	var tlsAddr string
	for id, a := range r.gw.Addrs() {
		if strings.HasPrefix(id, "tls://") {
			tlsAddr = a.String()
		}
	}
	if tlsAddr == "" {
		t.Fatalf("no tls listener in %v", r.gw.Addrs())
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.cert)
	dial := func(cn string, signer *testCA) (mqtt.Client, error) {
		cp, kp := signer.issue(t, cn, nil)
		pair, err := tls.X509KeyPair(cp, kp)
		if err != nil {
			t.Fatal(err)
		}
		o := mqtt.NewClientOptions().AddBroker("tls://" + tlsAddr).SetClientID("cert-" + strings.ReplaceAll(cn, "/", "-")).
			SetProtocolVersion(4).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second).
			SetTLSConfig(&tls.Config{RootCAs: roots, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12})
		c := mqtt.NewClient(o)
		tok := c.Connect()
		if !tok.WaitTimeout(10 * time.Second) {
			return nil, fmt.Errorf("connect timed out")
		}
		if tok.Error() == nil {
			t.Cleanup(func() { c.Disconnect(0) })
		}
		return c, tok.Error()
	}

	d := r.devices[0]
	c, err := dial(d.ProductKey+"/"+d.DeviceName, ca)
	if err != nil {
		t.Fatalf("device certificate refused: %v", err)
	}
	for i := 1; i <= 3; i++ {
		tok := c.Publish(d.UplinkTopic(), 1, false, fmt.Sprintf(`{"id":"%d","params":{"seq":%d}}`, i, i))
		if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish %d: %v", i, tok.Error())
		}
	}
	waitFor(t, "certificate device's messages in the cloud", 20*time.Second, func() bool { return len(r.seqs(d)) >= 3 })
	if got := fmt.Sprint(r.seqs(d)); got != "[1 2 3]" {
		t.Errorf("cloud got %s", got)
	}

	if _, err := dial(testPK+"/nobody", ca); err == nil {
		t.Error("certificate naming an unknown device was accepted")
	}
	if _, err := dial(d.ProductKey+"/"+d.DeviceName, newTestCA(t, "rogue CA")); err == nil {
		t.Error("certificate from another CA was accepted")
	}
}
