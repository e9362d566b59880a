package testutil

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
	"testing"
	"time"
)

// Validity of every certificate the PKI makes, around the time it is
// made: long enough for the slowest test run, and not dependent on a
// test's fake clock (TLS verification uses the real one).
const (
	certBackdate = time.Hour
	certLifetime = 24 * time.Hour
)

// DefaultCAName is the common name of the CA NewPKI makes.
const DefaultCAName = "edgegw test CA"

// PKI is a throwaway certificate authority for one test, with a server
// certificate for the loopback addresses. All keys are ECDSA P-256 and
// never leave memory except through the files the test asks for.
type PKI struct {
	CA     *x509.Certificate
	CAPEM  []byte         // CA certificate, PEM
	Pool   *x509.CertPool // holds only CA
	Server tls.Certificate
	// Dir is a TempDir of the test that made the PKI; CAFile is the CA
	// certificate there (ca.pem).
	Dir    string
	CAFile string

	caKey *ecdsa.PrivateKey
}

// NewPKI makes a CA named DefaultCAName, and a server certificate signed
// by it for 127.0.0.1, ::1 and localhost.
func NewPKI(tb testing.TB) *PKI {
	tb.Helper()
	return NewNamedPKI(tb, DefaultCAName)
}

// NewNamedPKI is NewPKI with the CA's common name given: for a test that
// needs a second, unrelated CA and wants to tell them apart in messages.
func NewNamedPKI(tb testing.TB, caName string) *PKI {
	tb.Helper()
	key := newKey(tb)
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(tb),
		Subject:               pkix.Name{CommonName: caName},
		NotBefore:             now.Add(-certBackdate),
		NotAfter:              now.Add(certLifetime),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatalf("make test CA: %v", err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatalf("make test CA: %v", err)
	}
	p := &PKI{
		CA:    ca,
		CAPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		Pool:  x509.NewCertPool(),
		Dir:   tb.TempDir(),
		caKey: key,
	}
	p.Pool.AddCert(ca)
	p.CAFile = filepath.Join(p.Dir, "ca.pem")
	writeFile(tb, p.CAFile, p.CAPEM)
	p.Server = p.ServerCert(tb, "127.0.0.1", "::1", "localhost")
	return p
}

// ServerCert issues a server certificate for hosts: IP addresses and DNS
// names. Its common name is the first host.
func (p *PKI) ServerCert(tb testing.TB, hosts ...string) tls.Certificate {
	tb.Helper()
	if len(hosts) == 0 {
		tb.Fatal("ServerCert: no host")
	}
	tmpl := p.leafTemplate(tb, hosts[0], x509.ExtKeyUsageServerAuth)
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	return p.sign(tb, tmpl)
}

// ClientCert issues a client certificate with common name cn (for a
// device, "productKey/deviceName").
func (p *PKI) ClientCert(tb testing.TB, cn string) tls.Certificate {
	tb.Helper()
	return p.sign(tb, p.leafTemplate(tb, cn, x509.ExtKeyUsageClientAuth))
}

// ServerTLS returns a server configuration with the server certificate
// that verifies client certificates against the CA as clientAuth says.
func (p *PKI) ServerTLS(clientAuth tls.ClientAuthType) *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{p.Server},
		ClientCAs:    p.Pool,
		ClientAuth:   clientAuth,
		MinVersion:   tls.VersionTLS12,
	}
}

// ClientTLS returns a client configuration that trusts only the CA and
// presents certs (none: no client certificate).
func (p *PKI) ClientTLS(certs ...tls.Certificate) *tls.Config {
	return &tls.Config{RootCAs: p.Pool, Certificates: certs, MinVersion: tls.VersionTLS12}
}

// WriteCert writes c's certificate and private key as PEM files name.pem
// and name-key.pem (mode 0600) into p.Dir and returns their paths.
func (p *PKI) WriteCert(tb testing.TB, c tls.Certificate, name string) (certFile, keyFile string) {
	tb.Helper()
	certPEM, keyPEM := EncodePEM(tb, c)
	certFile = filepath.Join(p.Dir, name+".pem")
	keyFile = filepath.Join(p.Dir, name+"-key.pem")
	writeFile(tb, certFile, certPEM)
	writeFile(tb, keyFile, keyPEM)
	return certFile, keyFile
}

// EncodePEM returns c's leaf certificate and its private key (PKCS #8) as
// PEM.
func EncodePEM(tb testing.TB, c tls.Certificate) (certPEM, keyPEM []byte) {
	tb.Helper()
	if len(c.Certificate) == 0 {
		tb.Fatal("EncodePEM: no certificate")
	}
	kb, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		tb.Fatalf("encode private key: %v", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb})
}

func (p *PKI) leafTemplate(tb testing.TB, cn string, usage x509.ExtKeyUsage) *x509.Certificate {
	tb.Helper()
	now := time.Now()
	return &x509.Certificate{
		SerialNumber: serial(tb),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    now.Add(-certBackdate),
		NotAfter:     now.Add(certLifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
	}
}

func (p *PKI) sign(tb testing.TB, tmpl *x509.Certificate) tls.Certificate {
	tb.Helper()
	key := newKey(tb)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.CA, &key.PublicKey, p.caKey)
	if err != nil {
		tb.Fatalf("issue certificate for %q: %v", tmpl.Subject.CommonName, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatalf("issue certificate for %q: %v", tmpl.Subject.CommonName, err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

func newKey(tb testing.TB) *ecdsa.PrivateKey {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatalf("generate key: %v", err)
	}
	return key
}

// serial returns a random positive serial number, so that certificates of
// different PKIs in one test never share one.
func serial(tb testing.TB) *big.Int {
	tb.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		tb.Fatalf("certificate serial: %v", err)
	}
	return n.Add(n, big.NewInt(1))
}

func writeFile(tb testing.TB, path string, b []byte) {
	tb.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		tb.Fatal(err)
	}
}
