// Package loglimit keeps repetitive log lines from flooding the journal:
// at most a few lines per key and window, with a count of what was held
// back, so that the next line can say so. The local broker keys it by
// category and by device; the gateway by device for dropped downlinks.
package loglimit

import (
	"sync"
	"time"
)

// Limiter lets through at most burst log lines per key and window, and
// counts what it held back. It is safe for concurrent use.
type Limiter struct {
	// Now is the clock (default time.Now); tests set it before first use.
	Now func() time.Time

	mu     sync.Mutex
	window time.Duration
	burst  int
	keys   map[string]*state
}

type state struct {
	start      time.Time
	n          int
	suppressed int
}

// New returns a Limiter of burst lines per key and window.
func New(window time.Duration, burst int) *Limiter {
	return &Limiter{window: window, burst: burst, Now: time.Now, keys: map[string]*state{}}
}

// Allow reports whether a line for key may be logged now and, if so, how
// many lines for key were suppressed since the last one that was.
func (l *Limiter) Allow(key string) (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.Now()
	s := l.keys[key]
	if s == nil {
		if len(l.keys) >= MaxKeys {
			l.prune(now)
		}
		s = &state{start: now}
		l.keys[key] = s
	}
	if now.Sub(s.start) >= l.window {
		s.start, s.n = now, 0
	}
	if s.n >= l.burst {
		s.suppressed++
		return false, 0
	}
	s.n++
	suppressed, s.suppressed = s.suppressed, 0
	return true, suppressed
}

// MaxKeys is the size at which a Limiter forgets keys whose window has
// passed (per-device keys would otherwise accumulate for ever).
const MaxKeys = 4096

// prune forgets the keys whose window has passed with nothing held back.
func (l *Limiter) prune(now time.Time) {
	for k, s := range l.keys {
		if now.Sub(s.start) >= l.window && s.suppressed == 0 {
			delete(l.keys, k)
		}
	}
}
