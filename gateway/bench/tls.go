package bench

import (
	"context"
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
	"time"
)

// Cloud transports the sessions scenario measures.
const (
	transportTCP = "tcp" // plain MQTT, Alibaba securemode=3
	transportTLS = "tls" // MQTT over TLS, Alibaba securemode=2
)

// benchPKI is a throwaway CA made for one run and a server certificate it
// signed for the cloud simulator on loopback. The CA's private key never
// leaves memory: nothing else is ever signed with it.
type benchPKI struct {
	CAFile   string // the CA certificate (PEM): the gateway's cloud.ca_file
	CertFile string // the simulator's certificate (PEM)
	KeyFile  string // its private key (PEM, mode 0600)
}

// makePKI generates an ECDSA P-256 CA and a server certificate for
// 127.0.0.1 and localhost into dir.
func makePKI(dir string) (*benchPKI, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("make benchmark CA: %w", err)
	}
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("make benchmark CA: %w", err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "edgegw bench throwaway CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(7 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("make benchmark CA: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, fmt.Errorf("make benchmark CA: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("make cloud certificate: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(7 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("make cloud certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("make cloud certificate: %w", err)
	}
	p := &benchPKI{
		CAFile:   filepath.Join(dir, "ca.pem"),
		CertFile: filepath.Join(dir, "cloud.pem"),
		KeyFile:  filepath.Join(dir, "cloud-key.pem"),
	}
	for _, f := range []struct {
		path, typ string
		der       []byte
	}{{p.CAFile, "CERTIFICATE", caDER}, {p.CertFile, "CERTIFICATE", der}, {p.KeyFile, "PRIVATE KEY", keyDER}} {
		if err := os.WriteFile(f.path, pem.EncodeToMemory(&pem.Block{Type: f.typ, Bytes: f.der}), 0o600); err != nil {
			return nil, fmt.Errorf("make benchmark CA: %w", err)
		}
	}
	clear(keyDER)
	return p, nil
}

// serial returns a random certificate serial number.
func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n.Add(n, big.NewInt(1))
}

// probeTLS completes one TLS handshake with addr, trusting only the CA in
// caFile as the gateway does, and returns the negotiated version. It
// checks the simulator's certificate before edgegw is started, so that a
// broken setup fails at once instead of at the end of the connect budget.
func probeTLS(ctx context.Context, addr, caFile string) (string, error) {
	b, err := os.ReadFile(caFile)
	if err != nil {
		return "", fmt.Errorf("probe TLS listener: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return "", fmt.Errorf("probe TLS listener: no certificate in %s", caFile)
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("probe TLS listener: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	d := tls.Dialer{Config: &tls.Config{RootCAs: pool, ServerName: host, MinVersion: tls.VersionTLS12}}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", fmt.Errorf("probe TLS listener %s: %w", addr, err)
	}
	defer c.Close()
	return tls.VersionName(c.(*tls.Conn).ConnectionState().Version), nil
}
