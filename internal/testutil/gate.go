package testutil

import (
	"sync"
	"testing"
	"time"
)

// Gate holds back the code under test at a seam (a hook it calls, such as
// spool.Options.BeforeCommit): while the gate is closed, Pass blocks until
// it opens. The zero value is an open gate.
type Gate struct {
	mu      sync.Mutex
	open    chan struct{} // nil while open
	entered chan struct{}
}

// Pass is the hook: it returns at once while the gate is open, and
// otherwise reports that it is waiting (WaitEntered) and waits.
func (g *Gate) Pass() {
	g.mu.Lock()
	open, entered := g.open, g.enteredLocked()
	g.mu.Unlock()
	if open == nil {
		return
	}
	select {
	case entered <- struct{}{}:
	default:
	}
	<-open
}

// Close makes Pass wait from now on.
func (g *Gate) Close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.open == nil {
		g.open = make(chan struct{})
	}
}

// Open releases every waiting Pass and lets later ones through.
func (g *Gate) Open() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.open != nil {
		close(g.open)
		g.open = nil
	}
}

// WaitEntered waits until a Pass is held by the closed gate (or has been,
// since the last WaitEntered), and fails tb if none is within timeout.
func (g *Gate) WaitEntered(tb testing.TB, timeout time.Duration) {
	tb.Helper()
	g.mu.Lock()
	entered := g.enteredLocked()
	g.mu.Unlock()
	select {
	case <-entered:
	case <-time.After(timeout):
		tb.Fatalf("nothing held at the gate within %v", timeout)
	}
}

func (g *Gate) enteredLocked() chan struct{} {
	if g.entered == nil {
		g.entered = make(chan struct{}, 1)
	}
	return g.entered
}
