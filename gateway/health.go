package gateway

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink"
	"github.com/edgegw/edgegw/uplink/spool"
)

const (
	// aliveTimeout bounds one liveness probe.
	aliveTimeout = 2 * time.Second
	// aliveReuse is how long a finished probe's result is reused, so that
	// frequent callers (health checks, the watchdog) cost at most one
	// spool commit per interval.
	aliveReuse = time.Second
	// aliveGrace is how long past the probe's deadline a caller waits.
	aliveGrace = 100 * time.Millisecond
)

var (
	errNotRunning   = errors.New("gateway is not running")
	errStarting     = errors.New("starting: the local broker does not serve yet")
	errShuttingDown = errors.New("shutting down")
)

// observer is what one Run adds for the operators: the liveness probe
// behind Alive and, when metrics.listen is set, the HTTP server for
// /metrics, /healthz and /readyz.
type observer struct {
	g        *Gateway
	ctx      context.Context // Run's: done once shutdown begins
	stopping atomic.Bool     // set when Run returns for another reason

	ln     net.Listener // nil when the HTTP server is disabled
	srv    *http.Server
	served chan struct{} // closed when srv.Serve has returned

	probeMu sync.Mutex
	probe   *aliveProbe // running, or the last one finished
}

// observer returns this Run's observer, nil before the observer starts and
// after Run returns.
func (g *Gateway) observer() *observer { return g.obs.Load() }

// ready reports whether the gateway is ready and not shutting down.
func (o *observer) ready() bool {
	select {
	case <-o.g.ready:
	default:
		return false
	}
	return !o.shuttingDown()
}

func (o *observer) shuttingDown() bool { return o.ctx.Err() != nil || o.stopping.Load() }

// Alive reports whether the gateway's loops respond: Run is running and
// past Ready, the local broker serves (its listeners are bound — one that
// fails ends Run — and its connection table answers), the uplink manager
// answers, and the spool writer takes a Sync within 2 s. It returns nil
// when they do, else an error naming the part that does not (also before
// Ready, once shutdown has begun, and when Run is not running).
//
// A spool whose commits fail (a full disk) still responds, so it is alive:
// a restart would not help; the metrics report it. Concurrent callers share
// one probe and a finished probe's result is reused for a second, so Alive
// may be polled freely; a probe stuck on a wedged part is never started
// twice.
func (g *Gateway) Alive() error {
	o := g.observer()
	if o == nil {
		return errNotRunning
	}
	return o.alive()
}

// aliveProbe is one liveness check.
type aliveProbe struct {
	deadline time.Time
	stage    atomic.Value // string: the part being checked
	done     chan struct{}
	// err and finished are written before done is closed.
	err      error
	finished time.Time
}

func (o *observer) alive() error {
	select {
	case <-o.g.ready:
	default:
		return errStarting
	}
	if o.shuttingDown() {
		return errShuttingDown
	}
	p := o.currentProbe()
	t := time.NewTimer(time.Until(p.deadline) + aliveGrace)
	defer t.Stop()
	select {
	case <-p.done:
		return p.err
	case <-o.ctx.Done():
		return errShuttingDown
	case <-t.C:
		return fmt.Errorf("%s does not respond within %v", p.stage.Load(), aliveTimeout)
	}
}

// currentProbe returns the running probe, or a fresh enough finished one,
// or starts a new one.
func (o *observer) currentProbe() *aliveProbe {
	o.probeMu.Lock()
	defer o.probeMu.Unlock()
	if p := o.probe; p != nil {
		select {
		case <-p.done:
			if time.Since(p.finished) < aliveReuse {
				return p
			}
		default:
			return p // still running, perhaps stuck: share it
		}
	}
	p := &aliveProbe{deadline: time.Now().Add(aliveTimeout), done: make(chan struct{})}
	p.stage.Store("local broker")
	o.probe = p
	go o.runProbe(p)
	return p
}

// syncer is implemented by spool.Spool (a request through the writer) and
// spool.Mem.
type syncer interface {
	Sync(ctx context.Context) error
}

// runProbe checks each part in turn. The broker and manager checks take
// their locks and cannot be abandoned: when one hangs, this goroutine
// stays with it and the callers report the stage it is stuck in.
func (o *observer) runProbe(p *aliveProbe) {
	defer func() {
		p.finished = time.Now()
		close(p.done)
	}()
	g := o.g
	g.mu.Lock()
	b, m, q := g.broker, g.mgr, g.queue
	g.mu.Unlock()
	if b == nil || m == nil || q == nil {
		p.err = errStarting
		return
	}

	p.stage.Store("local broker")
	if b.Addrs() == nil {
		p.err = errors.New("local broker: not serving")
		return
	}
	_ = b.Stats()

	p.stage.Store("uplink manager")
	_, _ = m.Status(secrets.DeviceID{})

	p.stage.Store("spool writer")
	if s, ok := q.(syncer); ok {
		ctx, cancel := context.WithDeadline(context.Background(), p.deadline)
		defer cancel()
		err := s.Sync(ctx)
		switch {
		case err == nil:
		case errors.Is(err, context.DeadlineExceeded):
			p.err = fmt.Errorf("spool writer did not answer a sync within %v", aliveTimeout)
		case errors.Is(err, spool.ErrClosed):
			p.err = errors.New("spool is closed")
		default:
			// The writer answered: a failing commit (full disk) is
			// reported by the metrics and the log, not fixed by a restart.
			g.log.Debug("liveness probe: spool sync failed", "err", err)
		}
	}
}

// serveHealthz answers 200 while Alive, else 503 with the reason.
func (o *observer) serveHealthz(w http.ResponseWriter, _ *http.Request) {
	if err := o.alive(); err != nil {
		plain(w, http.StatusServiceUnavailable, "unhealthy: "+err.Error()+"\n")
		return
	}
	plain(w, http.StatusOK, "ok\n")
}

// serveReadyz answers 200 once Ready until shutdown begins, else 503. The
// cloud's reachability is information in the body, never a reason to be
// unready: the plant works offline.
func (o *observer) serveReadyz(w http.ResponseWriter, _ *http.Request) {
	switch {
	case o.shuttingDown():
		plain(w, http.StatusServiceUnavailable, "not ready: "+errShuttingDown.Error()+"\n")
		return
	case !o.ready():
		plain(w, http.StatusServiceUnavailable, "not ready: "+errStarting.Error()+"\n")
		return
	}
	g := o.g
	g.mu.Lock()
	m, q := g.mgr, g.queue
	g.mu.Unlock()
	body := "ready\n"
	if m != nil {
		byState, _ := m.Summary()
		all := 0
		for _, n := range byState {
			all += n
		}
		if all == 0 {
			body += "cloud: no device sessions\n"
		} else {
			body += fmt.Sprintf("cloud: %d of %d device sessions connected\n", byState[uplink.StateConnected], all)
		}
	}
	if q != nil {
		body += fmt.Sprintf("spool: %d messages waiting\n", q.Totals().Depth)
	}
	plain(w, http.StatusOK, body)
}

func plain(w http.ResponseWriter, code int, body string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(body))
}
