package loglimit

import (
	"fmt"
	"testing"
	"time"
)

func TestLimiter(t *testing.T) {
	now := time.Unix(1000, 0)
	l := New(10*time.Second, 2)
	l.Now = func() time.Time { return now }
	steps := []struct {
		advance    time.Duration
		ok         bool
		suppressed int
	}{
		{0, true, 0}, {0, true, 0}, {0, false, 0}, {time.Second, false, 0},
		{10 * time.Second, true, 2}, {0, true, 0}, {0, false, 0},
	}
	for i, s := range steps {
		now = now.Add(s.advance)
		ok, suppressed := l.Allow("k")
		if ok != s.ok || suppressed != s.suppressed {
			t.Errorf("step %d: allow = %v, %d; want %v, %d", i, ok, suppressed, s.ok, s.suppressed)
		}
	}
	if ok, _ := l.Allow("other"); !ok {
		t.Error("keys share a budget")
	}
}

// Per-device keys do not accumulate: past MaxKeys, keys whose window
// has passed are forgotten; a key still holding back lines is kept.
func TestLimiterForgetsOldKeys(t *testing.T) {
	now := time.Unix(1000, 0)
	l := New(time.Minute, 1)
	l.Now = func() time.Time { return now }
	l.Allow("busy")
	l.Allow("busy") // held back: must survive pruning
	for i := range MaxKeys {
		l.Allow(fmt.Sprint("dev-", i))
	}
	now = now.Add(2 * time.Minute)
	l.Allow("new")
	if len(l.keys) != 2 {
		t.Fatalf("%d keys after pruning, want 2 (busy, new)", len(l.keys))
	}
	if ok, suppressed := l.Allow("busy"); !ok || suppressed != 1 {
		t.Errorf("busy: allow = %v, %d; want true, 1", ok, suppressed)
	}
}
