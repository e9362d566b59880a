package cloudsim

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// listener is one transport's listening socket. addr starts as the
// configured address and becomes the bound one, which Up reuses.
type listener struct {
	kind string
	addr string
	ln   net.Listener
	hs   *http.Server // WS and WSS
}

// bindAll binds every listener; on failure it closes those it bound.
// lifeMu must be held.
func (s *Sim) bindAll(ctx context.Context) error {
	var lc net.ListenConfig
	for i, l := range s.lns {
		ln, err := lc.Listen(ctx, "tcp", l.addr)
		if err != nil {
			for _, done := range s.lns[:i] {
				done.close()
			}
			return fmt.Errorf("listen %s on %s: %w", l.kind, l.addr, err)
		}
		l.ln = ln
		l.addr = ln.Addr().String()
	}
	s.mu.Lock()
	s.down = false
	s.notifyLocked()
	s.mu.Unlock()
	for _, l := range s.lns {
		s.serveListener(l)
	}
	return nil
}

func (s *Sim) serveListener(l *listener) {
	ln := l.ln
	if l.kind == TLS || l.kind == WSS {
		cfg := s.cfg.TLSConfig.Clone()
		if l.kind == WSS {
			cfg.NextProtos = []string{"http/1.1"}
		}
		ln = tls.NewListener(ln, cfg)
	}
	s.acceptWG.Add(1)
	switch l.kind {
	case WS, WSS:
		l.hs = &http.Server{
			Handler:           s.wsHandler(l.kind),
			ReadHeaderTimeout: s.cfg.ConnectTimeout,
			ErrorLog:          log.New(io.Discard, "", 0),
		}
		go func(hs *http.Server) {
			defer s.acceptWG.Done()
			_ = hs.Serve(ln) // returns http.ErrServerClosed after close
		}(l.hs)
	default:
		go s.acceptLoop(l.kind, ln)
	}
}

func (l *listener) close() {
	if l.hs != nil {
		_ = l.hs.Close()
		l.hs = nil
	}
	if l.ln != nil {
		_ = l.ln.Close()
		l.ln = nil
	}
}

func (s *Sim) acceptLoop(kind string, ln net.Listener) {
	defer s.acceptWG.Done()
	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE and friends: keep the listener alive, back off.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Warn("accept failed", "transport", kind, "error", err, "retry_in", backoff)
			select {
			case <-time.After(backoff):
				continue
			case <-s.done:
				return
			}
		}
		backoff = 0
		c := newConn(nc, kind)
		if !s.track(c) {
			_ = nc.Close()
			continue
		}
		go s.serveConn(c)
	}
}

// wsHandler upgrades any path to an MQTT-over-WebSocket connection.
func (s *Sim) wsHandler(kind string) http.Handler {
	up := &websocket.Upgrader{
		Subprotocols:     []string{"mqtt", "mqttv3.1"},
		HandshakeTimeout: s.cfg.ConnectTimeout,
		CheckOrigin:      func(*http.Request) bool { return true },
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return // Upgrade has answered with an HTTP error
		}
		c := newConn(&wsConn{Conn: ws.UnderlyingConn(), ws: ws}, kind)
		if !s.track(c) {
			_ = ws.Close()
			return
		}
		s.serveConn(c) // the handler goroutine serves the connection
	})
}

// goDown closes the listeners, then every connection, and waits until all
// connection goroutines have finished. lifeMu must be held.
func (s *Sim) goDown() {
	s.mu.Lock()
	s.down = true
	s.notifyLocked()
	s.mu.Unlock()
	for _, l := range s.lns {
		l.close()
	}
	s.acceptWG.Wait()
	s.mu.Lock()
	all := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		all = append(all, c)
	}
	s.mu.Unlock()
	for _, c := range all {
		_ = c.Close()
	}
	s.connWG.Wait()
}

// conn wraps every accepted connection, so the hooks can find the
// transport and the session of a mochi client (cl.Net.Conn).
type conn struct {
	net.Conn
	kind      string
	sess      atomic.Pointer[session] // set once the CONNECT is accepted
	closed    chan struct{}           // closed by Close
	closeOnce sync.Once
	done      chan struct{} // closed when the connection's goroutine has finished
}

func newConn(nc net.Conn, kind string) *conn {
	return &conn{Conn: nc, kind: kind, closed: make(chan struct{}), done: make(chan struct{})}
}

// Close closes the connection; it is idempotent.
func (c *conn) Close() error {
	first := false
	c.closeOnce.Do(func() { close(c.closed); first = true })
	if !first {
		return nil
	}
	return c.Conn.Close()
}

func (c *conn) encrypted() bool { return c.kind == TLS || c.kind == WSS }

// track registers a new connection; it fails when the Sim is down.
func (s *Sim) track(c *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.down || s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	s.connWG.Add(1)
	return true
}

// serveConn hands a connection to mochi and cleans up after it.
func (s *Sim) serveConn(c *conn) {
	defer s.connWG.Done()
	// Until the CONNECT has been read (TLS and WebSocket handshakes
	// included); mochi then sets 1.5 × keepalive.
	_ = c.SetDeadline(time.Now().Add(s.cfg.ConnectTimeout))
	err := s.srv.EstablishConnection(c.kind, c)
	_ = c.Close()
	sess := c.sess.Load()
	s.mu.Lock()
	delete(s.conns, c)
	if sess != nil {
		if sess.linger != nil {
			sess.linger.Stop()
		}
		if sess.kind == kindDevice && s.active[sess.dev] == sess {
			delete(s.active, sess.dev)
		}
	}
	s.notifyLocked()
	s.mu.Unlock()
	close(c.done)
	switch {
	case sess != nil:
		s.log.Debug("connection closed", "transport", c.kind, "client", sess.clientID, "kind", sess.kind.String(), "error", err)
	case err != nil:
		var ref *refusal
		if !errors.As(err, &ref) { // refusals are logged by OnConnect
			s.log.Debug("connection failed before a CONNECT was accepted", "transport", c.kind, "remote", c.RemoteAddr().String(), "error", err)
		}
	}
}

// wsConn adapts a WebSocket connection to net.Conn: every MQTT write is
// one binary message; reads run across message boundaries.
type wsConn struct {
	net.Conn // the underlying connection: addresses, deadlines, Close
	ws       *websocket.Conn
	r        io.Reader
	wmu      sync.Mutex
}

func (w *wsConn) Read(p []byte) (int, error) {
	for {
		if w.r == nil {
			op, r, err := w.ws.NextReader()
			if err != nil {
				return 0, err
			}
			if op != websocket.BinaryMessage {
				return 0, errors.New("websocket: MQTT needs binary messages")
			}
			w.r = r
		}
		n, err := w.r.Read(p)
		if errors.Is(err, io.EOF) {
			w.r = nil
			if n == 0 {
				continue
			}
			err = nil
		}
		return n, err
	}
}

func (w *wsConn) Write(p []byte) (int, error) {
	w.wmu.Lock()
	defer w.wmu.Unlock()
	if err := w.ws.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}
