package gateway_test

import (
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgegw/edgegw/gateway/config"
	"github.com/edgegw/edgegw/gateway/devsim"
	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/uplink/cloudsim"
)

// faultProxy is a TCP proxy on loopback between the gateway and the cloud.
// It can add latency, cut connections silently — stop forwarding and hold
// both sockets open, so neither end sees a FIN or RST — and stall
// connections mid-stream (hold the bytes, then deliver them in order).
// Faults apply to the connections open when they are set; new connections
// are forwarded normally.
type faultProxy struct {
	ln      net.Listener
	target  atomic.Pointer[string]
	latency atomic.Int64 // one-way, nanoseconds
	done    chan struct{}
	wg      sync.WaitGroup

	mu       sync.Mutex
	conns    map[*proxyConn]struct{}
	closed   bool
	accepted int
	cut      int
}

// Proxy directions.
const (
	upstream   = 0 // gateway → cloud
	downstream = 1 // cloud → gateway
)

type proxyConn struct {
	client, server net.Conn
	dirs           [2]*proxyDir
	writers        atomic.Int32 // directions still forwarding; at 0 the connection is forgotten
}

// proxyDir forwards one direction of a connection through a queue, so
// that latency and stalls delay bytes without reordering them.
type proxyDir struct {
	src, dst net.Conn
	q        chan proxyChunk

	mu      sync.Mutex
	stalled bool
	cut     bool
	changed chan struct{} // closed and replaced when stalled or cut changes
}

type proxyChunk struct {
	b   []byte
	at  time.Time
	eof bool
}

func newFaultProxy(t *testing.T) *faultProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &faultProxy{ln: ln, done: make(chan struct{}), conns: map[*proxyConn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *faultProxy) addr() string { return p.ln.Addr().String() }

func (p *faultProxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		target := p.target.Load()
		if target == nil {
			client.Close()
			continue
		}
		server, err := net.DialTimeout("tcp", *target, 5*time.Second)
		if err != nil {
			client.Close() // the cloud is down: so is the path
			continue
		}
		c := &proxyConn{client: client, server: server}
		c.writers.Store(2)
		c.dirs[upstream] = &proxyDir{src: client, dst: server, q: make(chan proxyChunk, 256), changed: make(chan struct{})}
		c.dirs[downstream] = &proxyDir{src: server, dst: client, q: make(chan proxyChunk, 256), changed: make(chan struct{})}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			client.Close()
			server.Close()
			return
		}
		p.conns[c] = struct{}{}
		p.accepted++
		p.mu.Unlock()
		for _, d := range c.dirs {
			p.wg.Add(2)
			go p.read(c, d)
			go p.write(c, d)
		}
	}
}

// read moves bytes from the source into the queue; once the direction is
// cut it stops reading (the sender's buffers fill, as on a dead path).
func (p *faultProxy) read(c *proxyConn, d *proxyDir) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		if _, cut := d.state(); cut {
			<-p.done
			return
		}
		n, err := d.src.Read(buf)
		if n > 0 {
			select {
			case d.q <- proxyChunk{b: append([]byte(nil), buf[:n]...), at: time.Now()}:
			case <-p.done:
				return
			}
		}
		if err != nil {
			select {
			case d.q <- proxyChunk{eof: true, at: time.Now()}:
			case <-p.done:
			}
			return
		}
	}
}

// write delivers queued bytes after the latency, waiting while the
// direction is stalled and discarding everything once it is cut.
func (p *faultProxy) write(c *proxyConn, d *proxyDir) {
	defer p.wg.Done()
	defer func() {
		if c.writers.Add(-1) == 0 {
			p.mu.Lock()
			delete(p.conns, c)
			p.mu.Unlock()
		}
	}()
	for {
		var ch proxyChunk
		select {
		case ch = <-d.q:
		case <-p.done:
			return
		}
		if wait := time.Until(ch.at.Add(time.Duration(p.latency.Load()))); wait > 0 {
			select {
			case <-time.After(wait):
			case <-p.done:
				return
			}
		}
		for {
			stalled, cut := d.state()
			if cut {
				break
			}
			if !stalled {
				break
			}
			d.mu.Lock()
			changed := d.changed
			d.mu.Unlock()
			select {
			case <-changed:
			case <-p.done:
				return
			}
		}
		if _, cut := d.state(); cut {
			continue // held: nothing more reaches the other end, and no FIN
		}
		if ch.eof {
			if tc, ok := d.dst.(*net.TCPConn); ok {
				tc.CloseWrite()
			}
			return
		}
		if _, err := d.dst.Write(ch.b); err != nil {
			// The other end is gone (for example the cloud closed a
			// session taken over by a newer one): close both sides.
			c.client.Close()
			c.server.Close()
			return
		}
	}
}

func (d *proxyDir) state() (stalled, cut bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stalled, d.cut
}

func (d *proxyDir) set(stalled, cut bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stalled, d.cut = stalled, cut
	close(d.changed)
	d.changed = make(chan struct{})
}

// setLatency delays every chunk by d in each direction.
func (p *faultProxy) setLatency(d time.Duration) { p.latency.Store(int64(d)) }

// cutAll silently cuts every open connection and returns how many.
func (p *faultProxy) cutAll() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for c := range p.conns {
		if _, cut := c.dirs[upstream].state(); cut {
			continue
		}
		for _, d := range c.dirs {
			d.set(false, true)
		}
		n++
	}
	p.cut += n
	return n
}

// stall holds the bytes of the given directions on every open connection
// until resume; it returns the stalled connections.
func (p *faultProxy) stall(dirs ...int) []*proxyConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []*proxyConn
	for c := range p.conns {
		if _, cut := c.dirs[upstream].state(); cut {
			continue
		}
		for _, i := range dirs {
			c.dirs[i].set(true, false)
		}
		out = append(out, c)
	}
	return out
}

// resume lets stalled connections deliver what they hold, in order.
func (p *faultProxy) resume(conns []*proxyConn) {
	for _, c := range conns {
		for _, d := range c.dirs {
			if stalled, cut := d.state(); stalled && !cut {
				d.set(false, false)
			}
		}
	}
}

func (p *faultProxy) close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	close(p.done)
	p.ln.Close()
	for c := range p.conns {
		c.client.Close()
		c.server.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *faultProxy) counts() (accepted, cut int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted, p.cut
}

// TestFaultProxy publishes QoS 1 messages with sequence numbers through
// the gateway while a proxy between the gateway and the cloud adds
// latency, cuts connections without a FIN and stalls them mid-stream in
// either direction, shortly (below the gateway's ack timeout) and long
// (above it). Afterwards every message the gateway acknowledged must be at
// the cloud, none reordered; duplicates are counted and logged. It runs a
// short cycle by default; EDGEGW_FAULT_LONG=1 runs more devices through
// more cycles.
func TestFaultProxy(t *testing.T) {
	// The cloud simulator records up to 100,000 messages: the long run
	// posts more slowly so that every message stays reconcilable.
	cycles, ndev, interval := 1, 6, 5*time.Millisecond
	if os.Getenv("EDGEGW_FAULT_LONG") == "1" {
		cycles, ndev, interval = 8, 24, 50*time.Millisecond
	}
	proxy := newFaultProxy(t)
	const ackTimeout = 2 * time.Second
	r := newRig(t, ndev, 0, func(c *config.Config) {
		target := strings.TrimPrefix(c.Cloud.Endpoint, "tcp://")
		proxy.target.Store(&target)
		c.Cloud.Endpoint = "tcp://" + proxy.addr()
		c.Cloud.AckTimeout = config.Duration(ackTimeout)
		c.Cloud.Keepalive = config.Duration(30 * time.Second)
		unlimited := 0.0
		c.Cloud.DeviceRate = &unlimited
		c.Cloud.ConnectRate, c.Cloud.ConnectBurst = 200, 200
	})
	acks := newAckLog()
	f := r.fleet(devsim.Config{Devices: r.devices, QoS: 1, Window: 4, Interval: interval, OnAck: acks.add})

	stats := func() cloudsim.Stats { return r.sim.Stats() }
	// flowing waits until the cloud recorded n more messages.
	flowing := func(what string, n int64) {
		t.Helper()
		target := stats().Messages + n
		testutil.Eventually(t, 60*time.Second, func() bool { return stats().Messages >= target }, "%s", what)
	}
	// reconnected waits until every device opened a new cloud session.
	reconnected := func(what string, before cloudsim.Stats) {
		t.Helper()
		testutil.Eventually(t, 60*time.Second, func() bool {
			st := stats()
			return st.ConnectsAccepted >= before.ConnectsAccepted+int64(ndev) && st.Connected == ndev
		}, "%s", what)
	}
	testutil.Eventually(t, 30*time.Second, func() bool { return stats().Connected == ndev }, "every cloud session up")
	flowing("traffic before the faults", 200)

	for cycle := range cycles {
		start := time.Now()
		// Latency: 40 ms each way on every chunk.
		proxy.setLatency(40 * time.Millisecond)
		flowing("traffic with latency", 300)
		proxy.setLatency(0)

		// Silent cut: the gateway only learns from its ack timeout.
		before := stats()
		if n := proxy.cutAll(); n == 0 {
			t.Fatal("no connection to cut")
		}
		reconnected("every session re-established after a silent cut", before)
		flowing("traffic after the cut", 200)

		// Short stall of the upstream, below the ack timeout: the
		// session survives and the held bytes arrive in order.
		before = stats()
		held := proxy.stall(upstream)
		ackedBefore := f.Stats().Acked
		testutil.Eventually(t, 10*time.Second, func() bool {
			return f.Stats().Acked >= ackedBefore+int64(20*ndev)
		}, "devices acknowledged while the upstream is stalled")
		if stats().ConnectsAccepted != before.ConnectsAccepted {
			t.Logf("cycle %d: a session reconnected during the short stall", cycle)
		}
		proxy.resume(held)
		flowing("traffic after a short stall", 200)

		// Long stalls, beyond the ack timeout: PUBACKs held, then both
		// directions held. The gateway reconnects; the stale bytes are
		// released afterwards and must not reorder anything.
		for _, dirs := range [][]int{{downstream}, {upstream, downstream}} {
			before = stats()
			held = proxy.stall(dirs...)
			reconnected("every session re-established after a long stall", before)
			proxy.resume(held)
			flowing("traffic after a long stall", 200)
		}

		// Latency and a cut together.
		proxy.setLatency(100 * time.Millisecond)
		before = stats()
		proxy.cutAll()
		reconnected("every session re-established after a cut with latency", before)
		flowing("traffic after a cut with latency", 100)
		proxy.setLatency(0)
		t.Logf("cycle %d took %v", cycle, time.Since(start).Round(time.Millisecond))
	}

	// Stop the devices; every acknowledged message must reach the cloud.
	f.Close()
	total, dups := r.reconcileAll(t, acks, 60*time.Second)
	accepted, cut := proxy.counts()
	st := stats()
	if st.RecordsDiscarded > 0 {
		t.Fatalf("the cloud's recorder discarded %d records: reconciliation incomplete", st.RecordsDiscarded)
	}
	if cut < 2*cycles*ndev || accepted <= ndev {
		t.Errorf("the proxy cut %d of %d connections: the faults did not happen", cut, accepted)
	}
	t.Logf("%d cycles, %d devices: %d acknowledged messages all delivered in order; %d duplicates (%.2f%%); "+
		"proxy carried %d connections and cut %d; cloud accepted %d CONNECTs, %d takeovers",
		cycles, ndev, total, dups, 100*float64(dups)/float64(max(total, 1)), accepted, cut, st.ConnectsAccepted, st.Takeovers)
}
