package localbroker

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
	"github.com/mochi-mqtt/server/v2/listeners"
)

// Names of socket-activated listeners in Config.Inherited (systemd's
// FileDescriptorName=). Each replaces the configured listeners of its
// transport.
const (
	InheritedMQTT  = "mqtt"  // plain MQTT over TCP; replaces tcp:// listeners
	InheritedMQTTS = "mqtts" // MQTT over TLS (wrapped with Config.TLS); replaces tls:// listeners
	InheritedWS    = "ws"    // MQTT over WebSocket; replaces ws:// listeners
	InheritedWSS   = "wss"   // MQTT over secure WebSocket (wrapped with Config.TLS); replaces wss:// listeners
	InheritedUnix  = "unix"  // the admin unix socket; replaces unix:// listeners (its mode is the socket unit's SocketMode=)
)

var inheritedTransport = map[string]string{
	InheritedMQTT:  TransportTCP,
	InheritedMQTTS: TransportTLS,
	InheritedWS:    TransportWS,
	InheritedWSS:   TransportWSS,
	InheritedUnix:  TransportUnix,
}

// maxUnixPath is the longest unix socket path Linux accepts (sun_path is 108
// bytes including the terminating NUL).
const maxUnixPath = 107

// listenerSpec is one listener to bind, from a URL or inherited.
type listenerSpec struct {
	id        string // the URL as configured, or "inherited:NAME/i"
	transport string
	address   string // host:port, or the socket path for unix
	wsPath    string // ws/wss: the only path served; "" serves every path
	inherited net.Listener
}

// parseListenerURL validates one entry of Config.Listeners.
func parseListenerURL(raw string) (listenerSpec, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return listenerSpec{}, fmt.Errorf("parse listener %q: %w", raw, err)
	}
	spec := listenerSpec{id: raw, transport: u.Scheme}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return spec, fmt.Errorf("parse listener %q: user info, query and fragment are not allowed", raw)
	}
	switch u.Scheme {
	case TransportTCP, TransportTLS, TransportWS, TransportWSS:
		host, port, err := net.SplitHostPort(u.Host)
		if err != nil {
			return spec, fmt.Errorf("parse listener %q: want %s://host:port: %w", raw, u.Scheme, err)
		}
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || (n == 0 && port != "0") {
			return spec, fmt.Errorf("parse listener %q: port %q is not a number from 0 to 65535", raw, port)
		}
		spec.address = net.JoinHostPort(host, port)
		if u.Scheme == TransportWS || u.Scheme == TransportWSS {
			if u.Path != "" && u.Path != "/" {
				spec.wsPath = u.Path
			}
		} else if u.Path != "" {
			return spec, fmt.Errorf("parse listener %q: a %s listener takes no path", raw, u.Scheme)
		}
	case TransportUnix:
		if u.Host != "" || !filepath.IsAbs(u.Path) || filepath.Clean(u.Path) != u.Path {
			return spec, fmt.Errorf("parse listener %q: want unix:///absolute/clean/path", raw)
		}
		if len(u.Path) > maxUnixPath {
			return spec, fmt.Errorf("parse listener %q: socket path longer than %d bytes", raw, maxUnixPath)
		}
		spec.address = u.Path
	case "":
		return spec, fmt.Errorf("parse listener %q: missing scheme (want tcp, tls, ws, wss or unix)", raw)
	default:
		return spec, fmt.Errorf("parse listener %q: unknown scheme %q (want tcp, tls, ws, wss or unix)", raw, u.Scheme)
	}
	return spec, nil
}

// listenerSpecs turns the configured URLs and inherited listeners into the
// list to bind: an inherited name present with at least one listener
// replaces every configured listener of its transport.
func listenerSpecs(cfg *Config) ([]listenerSpec, error) {
	replaced := map[string]bool{}
	var specs []listenerSpec
	names := make([]string, 0, len(cfg.Inherited))
	for name := range cfg.Inherited {
		names = append(names, name)
	}
	slices.Sort(names) // deterministic IDs and errors
	for _, name := range names {
		lns := cfg.Inherited[name]
		transport, ok := inheritedTransport[name]
		if !ok {
			return nil, fmt.Errorf("inherited listener %q: unknown name (want mqtt, mqtts, ws, wss or unix)", name)
		}
		if len(lns) == 0 {
			continue
		}
		replaced[transport] = true
		for i, ln := range lns {
			id := fmt.Sprintf("inherited:%s/%d", name, i)
			if ln == nil {
				return nil, fmt.Errorf("inherited listener %q: entry %d is nil (the file descriptor was not a listening socket)", name, i)
			}
			specs = append(specs, listenerSpec{id: id, transport: transport, inherited: ln})
		}
	}
	seen := map[string]bool{}
	for _, raw := range cfg.Listeners {
		spec, err := parseListenerURL(raw)
		if err != nil {
			return nil, err
		}
		if seen[raw] {
			return nil, fmt.Errorf("listener %q: listed twice", raw)
		}
		seen[raw] = true
		if replaced[spec.transport] {
			continue
		}
		specs = append(specs, spec)
	}
	for _, s := range specs {
		if (s.transport == TransportTLS || s.transport == TransportWSS) && cfg.TLS == nil {
			return nil, fmt.Errorf("listener %q: Config.TLS is required for %s", s.id, s.transport)
		}
	}
	if len(specs) == 0 {
		return nil, errors.New("no listeners configured")
	}
	return specs, nil
}

// listener is a mochi listener over a net.Listener the broker bound (or
// inherited) itself. Unlike mochi's own listeners it binds before Serve, so
// errors reach Run; it keeps accepting after temporary errors (EMFILE); it
// puts a deadline on the TLS handshake and the CONNECT packet; and its unix
// sockets never exist with a wider mode than configured.
type listener struct {
	b         *Broker
	id        string
	transport string
	ln        net.Listener // as bound, for closing
	addr      net.Addr     // the address clients use
	accept    net.Listener // ln, TLS-wrapped for tls
	http      *http.Server // ws and wss
	wsPath    string
	upgrader  websocket.Upgrader
	unixPath  string      // a socket file this listener created
	unixFile  os.FileInfo // … and its identity, to remove only our own file
	log       *slog.Logger
	establish listeners.EstablishFn
	closing   atomic.Bool
	closeOnce sync.Once
}

// bind opens the listener described by spec.
func (b *Broker) bind(spec listenerSpec) (*listener, error) {
	l := &listener{b: b, id: spec.id, transport: spec.transport, wsPath: spec.wsPath}
	ln := spec.inherited
	if ln == nil {
		var err error
		if spec.transport == TransportUnix {
			ln, l.unixFile, err = listenUnix(spec.address, b.cfg.UnixSocketMode)
			l.unixPath = spec.address
		} else {
			ln, err = net.Listen("tcp", spec.address)
		}
		if err != nil {
			return nil, fmt.Errorf("bind listener %q: %w", spec.id, err)
		}
	}
	l.ln, l.accept, l.addr = ln, ln, ln.Addr()
	if l.unixPath != "" {
		l.addr = &net.UnixAddr{Name: l.unixPath, Net: "unix"} // ln.Addr() is the temporary path
	}
	switch spec.transport {
	case TransportTLS:
		l.accept = tls.NewListener(ln, b.cfg.TLS)
	case TransportWS, TransportWSS:
		l.upgrader = websocket.Upgrader{
			HandshakeTimeout: b.cfg.ConnectTimeout,
			Subprotocols:     []string{"mqtt", "mqttv3.1"},
			// Device firmware sends no Origin; browsers on the plant network
			// still have to authenticate like any client.
			CheckOrigin: func(*http.Request) bool { return true },
		}
		l.http = &http.Server{
			Handler:           http.HandlerFunc(l.serveWS),
			ReadHeaderTimeout: b.cfg.ConnectTimeout,
			ErrorLog:          log.New(limitedWriter{b: b, key: "http:" + spec.id, listener: spec.id}, "", 0),
		}
		if spec.transport == TransportWSS {
			cfg := b.cfg.TLS.Clone()
			cfg.NextProtos = []string{"http/1.1"}
			l.accept = tls.NewListener(ln, cfg)
		}
	}
	return l, nil
}

// listenUnix creates a unix socket at path with the given mode. The socket is
// bound inside a fresh private (0700) directory next to path, chmodded, then
// renamed into place, so it is never reachable with a wider mode and no
// process-wide umask is touched. An existing socket file that nobody listens
// on is replaced; a live socket or a file that is not a socket is an error.
func listenUnix(path string, mode os.FileMode) (net.Listener, os.FileInfo, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			_ = c.Close()
			return nil, nil, fmt.Errorf("%s: %w (another process is listening)", path, syscall.EADDRINUSE)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, nil, err
	}
	dir, err := os.MkdirTemp(filepath.Dir(path), ".sk")
	if err != nil {
		return nil, nil, fmt.Errorf("create private directory for the socket: %w", err)
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "s")
	if len(tmp) > maxUnixPath {
		return nil, nil, fmt.Errorf("%s: the directory path is too long to create the socket safely", path)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, nil, err
	}
	ln.SetUnlinkOnClose(false) // it will not be at tmp; Close removes path
	if err := os.Chmod(tmp, mode); err != nil {
		_ = ln.Close()
		return nil, nil, fmt.Errorf("chmod socket: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = ln.Close()
		return nil, nil, fmt.Errorf("move socket into place: %w", err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		_ = ln.Close()
		return nil, nil, err
	}
	return ln, fi, nil
}

// ID returns the listener ID (the configured URL).
func (l *listener) ID() string { return l.id }

// Address returns the bound address.
func (l *listener) Address() string { return l.addr.String() }

// Protocol returns the transport.
func (l *listener) Protocol() string { return l.transport }

// Init is called by mochi's AddListener; the socket is already bound.
func (l *listener) Init(log *slog.Logger) error {
	l.log = log
	return nil
}

// Serve accepts connections until Close. A non-temporary accept error is
// reported to Run, which then shuts the broker down: a listener never stops
// silently while the process stays up.
func (l *listener) Serve(establish listeners.EstablishFn) {
	l.establish = establish
	if l.http != nil {
		err := l.http.Serve(l.accept)
		if err != nil && !errors.Is(err, http.ErrServerClosed) && !l.closing.Load() {
			l.b.listenerFailed(l.id, err)
		}
		return
	}
	var delay time.Duration
	for {
		conn, err := l.accept.Accept()
		if err != nil {
			if l.closing.Load() {
				return
			}
			if temporary(err) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				l.b.stats.acceptErrors.Add(1)
				l.b.logLimited("accept", slog.LevelWarn, "accept failed; retrying",
					"listener", l.id, "error", err, "retry_in", delay)
				time.Sleep(delay)
				continue
			}
			l.b.listenerFailed(l.id, err)
			return
		}
		delay = 0
		go l.handle(conn)
	}
}

// temporary reports accept errors worth retrying (descriptor exhaustion,
// aborted connections).
func temporary(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM,
		syscall.ECONNABORTED, syscall.ECONNRESET, syscall.EINTR, syscall.EAGAIN, syscall.EPROTO} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// handle runs one connection through mochi.
func (l *listener) handle(conn net.Conn) {
	// Bound the TLS handshake and the CONNECT packet; mochi replaces this
	// deadline with 1.5 × keepalive once the CONNECT is read.
	_ = conn.SetDeadline(time.Now().Add(l.b.cfg.ConnectTimeout))
	l.b.open.Store(conn, struct{}{})
	defer l.b.open.Delete(conn)
	if l.closing.Load() {
		// Accepted in the moment the listener was stopped: shutdown may
		// already have looked for open connections.
		_ = conn.Close()
	}
	err := l.establish(l.id, conn)
	l.b.connectionEnded(l, conn, err)
}

// serveWS upgrades one HTTP request to an MQTT-over-WebSocket connection.
func (l *listener) serveWS(w http.ResponseWriter, r *http.Request) {
	if l.wsPath != "" && r.URL.Path != l.wsPath {
		http.NotFound(w, r)
		return
	}
	c, err := l.upgrader.Upgrade(w, r, nil)
	if err != nil {
		l.b.logLimited("ws-upgrade", slog.LevelInfo, "websocket upgrade failed",
			"listener", l.id, "remote", r.RemoteAddr, "error", err)
		return
	}
	wc := &wsConn{Conn: c.UnderlyingConn(), ws: c}
	if r.TLS != nil {
		wc.peerCerts = r.TLS.PeerCertificates
	}
	defer c.Close()
	l.handle(wc)
}

// Close stops accepting, asks mochi to close this listener's clients, and
// removes the unix socket file this listener created.
func (l *listener) Close(closeClients listeners.CloseFn) {
	l.stopAccepting()
	closeClients(l.id)
}

// stopAccepting closes the listening socket (idempotent).
func (l *listener) stopAccepting() {
	l.closeOnce.Do(func() {
		l.closing.Store(true)
		if l.http != nil {
			// Hijacked (upgraded) connections are not affected.
			_ = l.http.Close()
		} else {
			_ = l.ln.Close()
		}
		if l.unixPath != "" {
			if fi, err := os.Lstat(l.unixPath); err == nil && os.SameFile(fi, l.unixFile) {
				_ = os.Remove(l.unixPath)
			}
		}
	})
}

// limitedWriter turns net/http's error log (TLS handshake failures, bad
// requests) into rate-limited Info lines.
type limitedWriter struct {
	b        *Broker
	key      string
	listener string
}

func (w limitedWriter) Write(p []byte) (int, error) {
	w.b.logLimited(w.key, slog.LevelInfo, strings.TrimSpace(string(p)), "listener", w.listener)
	return len(p), nil
}

// wsConn carries MQTT over binary WebSocket messages as a net.Conn.
// Deadlines, addresses and Close go to the underlying connection.
type wsConn struct {
	net.Conn
	ws        *websocket.Conn
	r         io.Reader
	peerCerts []*x509.Certificate
	wmu       sync.Mutex
}

func (c *wsConn) Read(p []byte) (int, error) {
	for {
		if c.r == nil {
			op, r, err := c.ws.NextReader()
			if err != nil {
				return 0, err
			}
			if op != websocket.BinaryMessage {
				return 0, errors.New("websocket: text message received; MQTT needs binary messages")
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if errors.Is(err, io.EOF) {
			c.r = nil
			if n == 0 {
				continue
			}
			err = nil
		}
		return n, err
	}
}

func (c *wsConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.ws.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}
