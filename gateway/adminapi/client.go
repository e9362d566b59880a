package adminapi

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// Options say how Dial reaches a gateway's admin topic.
type Options struct {
	// URL is the gateway's local broker: unix:///run/edgegw/admin.sock (a
	// unix socket listener, where every client is an admin), or
	// tcp://host:port or tls://host:port with User and Password.
	URL string
	// User and Password are an admin user of the gateway's configuration
	// ([[broker.admin]]), for network listeners.
	User     string
	Password string
	// TLS configures a tls:// URL (nil: the system's CAs).
	TLS *tls.Config
	// Name starts the MQTT client id, which goes on with "-" and random hex
	// (default "edgegw-admin"). The gateway logs it with each request.
	Name string
}

// ConnectError is a Dial that could not connect (the broker is not there,
// or refused the credentials), as opposed to one whose subscription
// failed.
type ConnectError struct {
	URL string
	Err error
}

func (e *ConnectError) Error() string { return fmt.Sprintf("connect to %s: %v", e.URL, e.Err) }

func (e *ConnectError) Unwrap() error { return e.Err }

// Client is an MQTT 3.1.1 client of the admin topic. Replies arrive on the
// shared ResponseTopic and are matched to requests by id. It is safe for
// concurrent use; Close it when done.
type Client struct {
	c       mqtt.Client
	mu      sync.Mutex
	pending map[string]chan Reply
	anon    []chan Reply // DoRaw calls waiting for a reply without a string id, oldest first
	lost    chan struct{}
	lostErr error
}

// Dial connects to the admin topic and subscribes to ResponseTopic. The
// connection is not re-established when lost: calls then fail.
func Dial(ctx context.Context, o Options) (*Client, error) {
	c := &Client{pending: map[string]chan Reply{}, lost: make(chan struct{})}
	name := o.Name
	if name == "" {
		name = "edgegw-admin"
	}
	mo := mqtt.NewClientOptions().AddBroker(o.URL).
		SetClientID(name + "-" + randomID(6)).
		SetProtocolVersion(4).SetCleanSession(true).
		SetAutoReconnect(false).SetConnectRetry(false).SetOrderMatters(false).
		SetKeepAlive(30 * time.Second).SetConnectTimeout(10 * time.Second).SetWriteTimeout(10 * time.Second).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			c.mu.Lock()
			if c.lostErr == nil {
				c.lostErr = err
				close(c.lost)
			}
			c.mu.Unlock()
		})
	if o.TLS != nil {
		mo.SetTLSConfig(o.TLS)
	}
	if o.User != "" {
		mo.SetUsername(o.User)
		mo.SetPassword(o.Password)
	}
	c.c = mqtt.NewClient(mo)
	if err := wait(ctx, c.c.Connect(), 15*time.Second); err != nil {
		c.c.Disconnect(0)
		return nil, &ConnectError{URL: o.URL, Err: err}
	}
	tok := c.c.Subscribe(ResponseTopic, 1, c.onReply)
	if err := wait(ctx, tok, 10*time.Second); err != nil {
		c.Close()
		return nil, fmt.Errorf("subscribe to %s: %w", ResponseTopic, err)
	}
	if st, ok := tok.(*mqtt.SubscribeToken); ok {
		if code := st.Result()[ResponseTopic]; code >= 0x80 {
			c.Close()
			return nil, fmt.Errorf("subscribe to %s: refused: not an admin identity", ResponseTopic)
		}
	}
	return c, nil
}

// Close disconnects. Calls still waiting fail.
func (c *Client) Close() error {
	c.c.Disconnect(250)
	return nil
}

// Call sends one request and decodes the reply's data into out (when out
// is not nil and the reply has data). A reply with a code other than
// CodeOK is returned as an *Error. params is one of the *Params types, or
// nil; ctx bounds the wait for the reply.
func (c *Client) Call(ctx context.Context, method string, params, out any) error {
	r, err := c.Do(ctx, method, params)
	if err != nil {
		return err
	}
	if err := r.Err(); err != nil {
		return err
	}
	return r.Decode(method, out)
}

// Decode decodes r's data into out; it does nothing when out is nil or r
// has no data. method names the request in the error.
func (r Reply) Decode(method string, out any) error {
	if out == nil || len(r.Data) == 0 {
		return nil
	}
	if err := json.Unmarshal(r.Data, out); err != nil {
		return fmt.Errorf("decode %s reply: %w", method, err)
	}
	return nil
}

// Do sends one request and returns its reply, whatever its code; errors
// are those of the transport (or ctx).
func (c *Client) Do(ctx context.Context, method string, params any) (Reply, error) {
	id := randomID(12)
	payload, err := json.Marshal(Request{ID: id, Method: method, Params: params})
	if err != nil {
		return Reply{}, fmt.Errorf("encode %s request: %w", method, err)
	}
	return c.send(ctx, method, payload, id)
}

// DoRaw publishes payload as the request, as is, and returns the reply
// whose id is the JSON string id; with id "" it returns the next reply
// without a string id (a request without id, with a numeric one, or one
// the gateway could not read). It is for tests of malformed requests.
func (c *Client) DoRaw(ctx context.Context, payload []byte, id string) (Reply, error) {
	return c.send(ctx, "request", payload, id)
}

func (c *Client) send(ctx context.Context, what string, payload []byte, id string) (Reply, error) {
	ch := make(chan Reply, 1)
	c.mu.Lock()
	if id != "" {
		c.pending[id] = ch
	} else {
		c.anon = append(c.anon, ch)
	}
	c.mu.Unlock()
	defer c.forget(id, ch)
	if err := wait(ctx, c.c.Publish(RequestTopic, 1, false, payload), 10*time.Second); err != nil {
		return Reply{}, fmt.Errorf("send %s request: %w", what, c.lostOr(err))
	}
	select {
	case r := <-ch:
		return r, nil
	case <-c.lost:
		return Reply{}, fmt.Errorf("%s: %w", what, c.lostOr(nil))
	case <-ctx.Done():
		return Reply{}, fmt.Errorf("%s: %w", what, ctxErr(ctx))
	}
}

// forget drops a waiter that got its reply or gave up.
func (c *Client) forget(id string, ch chan Reply) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if id != "" {
		delete(c.pending, id)
		return
	}
	for i, w := range c.anon {
		if w == ch {
			c.anon = append(c.anon[:i], c.anon[i+1:]...)
			return
		}
	}
}

func (c *Client) onReply(_ mqtt.Client, m mqtt.Message) {
	var r Reply
	if json.Unmarshal(m.Payload(), &r) != nil {
		return
	}
	var id string
	var ch chan Reply
	c.mu.Lock()
	if len(r.ID) > 0 && json.Unmarshal(r.ID, &id) == nil {
		ch = c.pending[id] // nil: another client's reply
		delete(c.pending, id)
	} else if len(c.anon) > 0 {
		ch = c.anon[0]
		c.anon = c.anon[1:]
	}
	c.mu.Unlock()
	if ch != nil {
		ch <- r // buffered, and each waiter gets one reply: never blocks
	}
}

func (c *Client) lostOr(err error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lostErr != nil {
		return fmt.Errorf("the gateway closed the connection (%v): is this an admin identity?", c.lostErr)
	}
	return err
}

// wait waits for a paho token, bounded by d and ctx.
func wait(ctx context.Context, tok mqtt.Token, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-tok.Done():
		return tok.Error()
	case <-ctx.Done():
		return ctxErr(ctx)
	case <-t.C:
		return fmt.Errorf("timed out after %s", d)
	}
}

// ctxErr is ctx's error; for a deadline, its cause, so that a caller's
// context.WithTimeoutCause can say what did not happen in time.
func ctxErr(ctx context.Context) error {
	if err := ctx.Err(); !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return context.Cause(ctx)
}

func randomID(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return hex.EncodeToString(b)
}
