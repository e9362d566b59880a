package gateway

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgegw/edgegw/gateway/config"
	"github.com/edgegw/edgegw/internal/testutil"
)

// The liveness probe behind Alive and /healthz: shared, bounded, and
// honest about a wedged spool. /metrics and /readyz are in metrics_test.go.

// TestAliveSharesProbes: concurrent and repeated calls reuse one probe
// (one spool commit) instead of starting one each.
func TestAliveSharesProbes(t *testing.T) {
	dir := t.TempDir()
	cfg := config.Default()
	cfg.StateDir = dir
	cfg.Broker.Listeners = []string{"tcp://127.0.0.1:0"}
	cfg.Metrics.Listen = ""
	gw, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	cancel, done := runReady(t, gw)
	defer func() {
		cancel()
		<-done
	}()
	if err := gw.Alive(); err != nil {
		t.Fatal(err)
	}
	o := gw.observer()
	first := currentOf(o)
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			if err := gw.Alive(); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if currentOf(o) != first && time.Since(first.finished) < aliveReuse {
		t.Error("a fresh probe result was not reused")
	}
	// After the reuse interval a new probe runs.
	testutil.Eventually(t, 5*time.Second, func() bool {
		if err := gw.Alive(); err != nil {
			t.Fatal(err)
		}
		return currentOf(o) != first
	}, "a new probe after the reuse interval")
}

// wedgedQueue is a queue whose Sync hangs until released, ignoring its
// context, like a writer stuck in fsync on a dead disk.
type wedgedQueue struct {
	Queue
	release chan struct{}
}

func (q *wedgedQueue) Sync(context.Context) error {
	<-q.release
	return nil
}

// TestAliveDetectsWedgedSpool: a spool writer that does not answer makes
// Alive fail within its bound, naming the part; callers meanwhile share
// the stuck probe instead of piling up goroutines; Alive recovers when
// the writer does.
func TestAliveDetectsWedgedSpool(t *testing.T) {
	dir := t.TempDir()
	cfg := config.Default()
	cfg.StateDir = dir
	cfg.Broker.Listeners = []string{"tcp://127.0.0.1:0"}
	cfg.Metrics.Listen = "127.0.0.1:0"
	gw, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	cancel, done := runReady(t, gw)
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	o := gw.observer()
	// Let any earlier result expire, then wedge the spool.
	testutil.Eventually(t, 5*time.Second, func() bool {
		p := currentOf(o)
		if p == nil {
			return true
		}
		select {
		case <-p.done:
			return time.Since(p.finished) >= aliveReuse
		default:
			return false
		}
	}, "no fresh probe result")
	wq := &wedgedQueue{release: make(chan struct{})}
	gw.mu.Lock()
	wq.Queue = gw.queue
	gw.queue = wq
	gw.mu.Unlock()

	start := time.Now()
	err = gw.Alive()
	took := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), "spool writer does not respond within 2s") {
		t.Errorf("Alive with a wedged spool = %v", err)
	}
	if took < aliveTimeout-100*time.Millisecond || took > aliveTimeout+time.Second {
		t.Errorf("Alive took %v, want about %v", took, aliveTimeout)
	}
	stuck := currentOf(o)
	start = time.Now()
	code, body, gerr := get("http://" + gw.MetricsAddr().String() + "/healthz")
	if gerr != nil || code != http.StatusServiceUnavailable || !strings.HasPrefix(body, "unhealthy: spool writer does not respond") {
		t.Errorf("/healthz with a wedged spool: %d %q %v", code, body, gerr)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("/healthz on a stuck probe took %v, want an immediate answer", d)
	}
	if currentOf(o) != stuck {
		t.Error("a second probe was started while the first is stuck")
	}
	// Ready is about serving, not about liveness.
	if code, _, _ := get("http://" + gw.MetricsAddr().String() + "/readyz"); code != http.StatusOK {
		t.Errorf("/readyz with a wedged spool: %d", code)
	}

	close(wq.release)
	gw.mu.Lock()
	gw.queue = wq.Queue
	gw.mu.Unlock()
	testutil.Eventually(t, 5*time.Second, func() bool { return gw.Alive() == nil }, "Alive to recover")
}

func currentOf(o *observer) *aliveProbe {
	o.probeMu.Lock()
	defer o.probeMu.Unlock()
	return o.probe
}
