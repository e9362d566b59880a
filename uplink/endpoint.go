package uplink

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"golang.org/x/net/proxy"
)

const productKeyPlaceholder = "{productKey}"

// endpoint is a validated Endpoint with its trust roots loaded. The TLS
// configuration is swapped whole by reloadTLS (a renewed CA file or client
// certificate); each connection attempt reads the current one.
type endpoint struct {
	template string
	scheme   string                     // tcp, tls, ws or wss
	tls      atomic.Pointer[tls.Config] // nil for tcp and ws
}

var schemes = map[string]struct {
	canonical string
	port      string
}{
	"tcp": {"tcp", "1883"}, "mqtt": {"tcp", "1883"},
	"tls": {"tls", "8883"}, "ssl": {"tls", "8883"}, "mqtts": {"tls", "8883"}, "tcps": {"tls", "8883"},
	"ws": {"ws", "80"}, "wss": {"wss", "443"},
}

// compileEndpoint validates e and loads its trust roots.
func compileEndpoint(e Endpoint) (*endpoint, error) {
	if e.URL == "" {
		return nil, errors.New("endpoint URL is empty")
	}
	u, err := url.Parse(strings.ReplaceAll(e.URL, productKeyPlaceholder, "pk"))
	if err != nil {
		return nil, fmt.Errorf("parse endpoint %q: %w", e.URL, err)
	}
	sc, ok := schemes[strings.ToLower(u.Scheme)]
	if !ok {
		return nil, fmt.Errorf("endpoint %q: scheme %q is not tcp, tls, ws or wss", e.URL, u.Scheme)
	}
	if u.Hostname() == "" {
		return nil, fmt.Errorf("endpoint %q: no host", e.URL)
	}
	if u.User != nil {
		return nil, fmt.Errorf("endpoint %q: credentials do not belong in the URL", e.URL)
	}
	ep := &endpoint{template: e.URL, scheme: sc.canonical}
	if ep.encrypted() {
		if err := ep.reloadTLS(e); err != nil {
			return nil, err
		}
	}
	return ep, nil
}

// reloadTLS rebuilds the TLS configuration from e (same URL), reading its
// CA file again; on error the current configuration stays. The new one
// has a new session cache, so no connection resumes a session verified
// under the old roots or made with the old client certificate.
func (e *endpoint) reloadTLS(src Endpoint) error {
	if src.URL != e.template {
		return fmt.Errorf("endpoint %q: reload cannot change the URL to %q", e.template, src.URL)
	}
	if !e.encrypted() {
		return nil
	}
	c, err := buildTLS(src)
	if err != nil {
		return fmt.Errorf("endpoint %q: %w", src.URL, err)
	}
	e.tls.Store(c)
	return nil
}

func (e *endpoint) encrypted() bool { return e.scheme == "tls" || e.scheme == "wss" }

// url returns the broker URL for productKey, with the scheme made
// canonical and the default port filled in.
func (e *endpoint) url(productKey string) (*url.URL, error) {
	u, err := url.Parse(strings.ReplaceAll(e.template, productKeyPlaceholder, productKey))
	if err != nil {
		return nil, fmt.Errorf("endpoint for product %q: %w", productKey, err)
	}
	sc := schemes[strings.ToLower(u.Scheme)]
	u.Scheme = sc.canonical
	if u.Port() == "" {
		u.Host = net.JoinHostPort(u.Hostname(), sc.port)
	}
	return u, nil
}

// checkProductKey reports whether productKey can stand in for the
// placeholder of the template (a host name label: letters, digits, '-').
func (e *endpoint) checkProductKey(productKey string) error {
	if !strings.Contains(e.template, productKeyPlaceholder) {
		return nil
	}
	for _, r := range productKey {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
			return fmt.Errorf("productKey %q cannot be put into the endpoint %s: only letters, digits and '-'", productKey, e.template)
		}
	}
	return nil
}

// tlsFor returns the TLS configuration for a device: the endpoint's, with
// the device's client certificate when one is given (it replaces a
// gateway-wide GetClientCertificate, which would otherwise take
// precedence).
func (e *endpoint) tlsFor(cert *tls.Certificate) *tls.Config {
	cur := e.tls.Load()
	if cur == nil || cert == nil {
		return cur
	}
	c := cur.Clone()
	c.GetClientCertificate = nil
	c.Certificates = []tls.Certificate{*cert}
	return c
}

func buildTLS(e Endpoint) (*tls.Config, error) {
	var c *tls.Config
	if e.TLS != nil {
		c = e.TLS.Clone()
	} else {
		c = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	if c.InsecureSkipVerify {
		return nil, errors.New("TLS server verification cannot be turned off")
	}
	var pem [][]byte
	if e.CAFile != "" {
		b, err := os.ReadFile(e.CAFile)
		if err != nil {
			return nil, fmt.Errorf("read CA file: %w", err)
		}
		pem = append(pem, b)
	}
	if len(e.CAPEM) > 0 {
		pem = append(pem, e.CAPEM)
	}
	if c.RootCAs == nil || len(pem) > 0 || len(e.ExtraRoots) > 0 {
		var pool *x509.CertPool
		if c.RootCAs != nil {
			pool = c.RootCAs.Clone()
		} else if sys, err := x509.SystemCertPool(); err == nil {
			pool = sys
		} else {
			pool = x509.NewCertPool()
		}
		for _, cert := range e.ExtraRoots {
			pool.AddCert(cert)
		}
		for i, b := range pem {
			if !pool.AppendCertsFromPEM(b) {
				src := "CA PEM"
				if i == 0 && e.CAFile != "" {
					src = "CA file " + e.CAFile
				}
				return nil, fmt.Errorf("%s: no certificate found", src)
			}
		}
		c.RootCAs = pool
	}
	if c.ClientSessionCache == nil {
		c.ClientSessionCache = tls.NewLRUClientSessionCache(256)
	}
	return c, nil
}

// dial opens the transport to u (TCP, TLS, WebSocket), honouring ctx and
// the proxy environment variables as paho does (all_proxy for TCP and TLS,
// HTTP(S)_PROXY for WebSocket).
func dial(ctx context.Context, u *url.URL, tlsCfg *tls.Config, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	switch u.Scheme {
	case "tcp", "tls":
		nd := &net.Dialer{Timeout: timeout}
		var conn net.Conn
		var err error
		if cd, ok := proxy.FromEnvironmentUsing(nd).(proxy.ContextDialer); ok {
			conn, err = cd.DialContext(ctx, "tcp", u.Host)
		} else {
			conn, err = nd.DialContext(ctx, "tcp", u.Host)
		}
		if err != nil || u.Scheme == "tcp" {
			return conn, err
		}
		cfg := tlsCfg
		if cfg.ServerName == "" {
			cfg = cfg.Clone()
			cfg.ServerName = u.Hostname()
		}
		tc := tls.Client(conn, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			_ = conn.Close()
			return nil, err
		}
		return tc, nil
	case "ws", "wss":
		var cfg *tls.Config
		if u.Scheme == "wss" {
			cfg = tlsCfg
		}
		type result struct {
			c   net.Conn
			err error
		}
		ch := make(chan result, 1)
		go func() {
			c, err := mqtt.NewWebsocket(u.String(), cfg, timeout, nil, nil)
			ch <- result{c, err}
		}()
		select {
		case r := <-ch:
			return r.c, r.err
		case <-ctx.Done():
			go func() { // the handshake ends within timeout; close what it opened
				if r := <-ch; r.c != nil {
					_ = r.c.Close()
				}
			}()
			return nil, ctx.Err()
		}
	}
	return nil, fmt.Errorf("dial %s: unsupported scheme", u.Redacted())
}

// readBuffered gives paho's reader one read(2) per batch of packets. paho
// reads straight from the net.Conn and takes a packet's fixed header a byte
// at a time, so an unbuffered PUBACK costs three system calls. Only paho's
// one reader goroutine reads (the CONNACK before it, from the same buffer).
//
// The buffer costs memory on every cloud session, and most sessions are
// idle most of the time, their reader waiting for the next packet. So:
//   - a TLS connection gets no buffer of ours: crypto/tls reads whole
//     records and hands them out from its own buffer;
//   - a TCP connection gets a pooledReader (readbuf_unix.go), which waits
//     for data without a buffer and borrows one from a pool only while it
//     holds unread bytes;
//   - anything else (WebSocket, a wrapped test connection, other systems)
//     gets a bufio.Reader of readBufferSize for its whole life.
type readBuffered struct {
	net.Conn
	r *bufio.Reader
}

// readBufferSize holds dozens of acknowledgements; larger reads (a big
// downlink payload) bypass the buffer.
const readBufferSize = 1024

func newReadBuffered(nc net.Conn) net.Conn {
	if _, ok := nc.(*tls.Conn); ok {
		return nc
	}
	if c := newPooledReader(nc); c != nil {
		return c
	}
	return &readBuffered{Conn: nc, r: bufio.NewReaderSize(nc, readBufferSize)}
}

func (c *readBuffered) Read(p []byte) (int, error) { return c.r.Read(p) }

// ReloadEndpointTLS rebuilds the TLS configuration of the default
// endpoint (ManagerConfig.Endpoint) from e, which must have the same URL:
// a renewed CA file, or a changed base configuration. Sessions that are up
// keep their connection; every later connection attempt uses the new
// configuration. On error nothing changes.
func (m *Manager) ReloadEndpointTLS(e Endpoint) error {
	if m.defaultEP == nil {
		return errors.New("reload endpoint TLS: no default endpoint")
	}
	return m.defaultEP.reloadTLS(e)
}
