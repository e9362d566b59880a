package uplink

import (
	"context"
	"fmt"
	"math"
	"sync"
	"time"
)

// Rate configures a token bucket: PerSecond tokens are added every second
// and at most Burst are held. PerSecond 0 means unlimited. A Burst of 0
// means 1 (strict pacing). For message rates a token is one message (for
// byte rates one byte); for the connect budget a token is one attempt.
type Rate struct {
	PerSecond float64
	Burst     int
}

// Validate reports whether the rate is usable.
func (r Rate) Validate() error {
	if r.PerSecond < 0 || math.IsNaN(r.PerSecond) || math.IsInf(r.PerSecond, 0) || r.Burst < 0 {
		return fmt.Errorf("rate %v/s burst %d: want a finite rate ≥ 0 and burst ≥ 0", r.PerSecond, r.Burst)
	}
	return nil
}

// bucket is a token bucket whose balance may go negative: reserve always
// succeeds and returns how long the caller must wait, so concurrent callers
// are served in the order they asked (a queue of reservations). That makes
// a shared bucket fair: a device that reserves again after its turn queues
// behind everyone who asked meanwhile.
type bucket struct {
	mu     sync.Mutex
	rate   float64 // tokens per second, > 0
	burst  float64
	tokens float64
	last   time.Time
}

// newBucket returns nil (unlimited) when r.PerSecond is 0. The bucket
// starts full.
func newBucket(r Rate, now time.Time) *bucket {
	if r.PerSecond <= 0 {
		return nil
	}
	burst := float64(max(r.Burst, 1))
	return &bucket{rate: r.PerSecond, burst: burst, tokens: burst, last: now}
}

func (b *bucket) advance(now time.Time) {
	switch {
	case now.After(b.last):
		b.tokens = math.Min(b.burst, b.tokens+b.rate*now.Sub(b.last).Seconds())
		b.last = now
	case now.Before(b.last):
		// The clock stepped back: count from here instead of waiting for
		// it to catch up (hours without a refill for a step of hours).
		b.last = now
	}
}

// reserve takes n tokens at now and returns how long the caller must wait
// before acting on them. A nil bucket never waits.
func (b *bucket) reserve(now time.Time, n float64) time.Duration {
	if b == nil || n <= 0 {
		return 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.advance(now)
	b.tokens -= n
	if b.tokens >= 0 {
		return 0
	}
	// Rounded, not ceiled: float noise must not push a wait past the
	// instant a whole token is due.
	return time.Duration(math.Round(-b.tokens / b.rate * float64(time.Second)))
}

// cancel returns n reserved tokens that will not be used.
func (b *bucket) cancel(n float64) {
	if b == nil || n <= 0 {
		return
	}
	b.mu.Lock()
	b.tokens = math.Min(b.burst, b.tokens+n)
	b.mu.Unlock()
}

// wait reserves n tokens and waits for them; when ctx ends first the tokens
// are returned and ctx's error is returned.
func (b *bucket) wait(ctx context.Context, clk Clock, n float64) error {
	d := b.reserve(clk.Now(), n)
	if d <= 0 {
		return nil
	}
	if err := sleep(ctx, clk, d); err != nil {
		b.cancel(n)
		return err
	}
	return nil
}

// sleep waits d on clk or until ctx ends.
func sleep(ctx context.Context, clk Clock, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := clk.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// connectLimiter is the gateway-wide connect budget, in two steps. The
// bucket (wait) spaces attempts and serves them in the order they asked.
// But between that turn and the CONNECT on the wire lie timers, goroutine
// scheduling and the TCP dial, and on a busy machine (a reconnect storm is
// exactly when it is busy) those delays vary by hundreds of milliseconds and
// release attempts in bunches: the storm benchmark's cloud counted 664-752
// CONNECTs in one second against a budget of 500/s and burst 50. The cloud
// counts per second, so the window (admit) is checked after the dial, just
// before paho writes the CONNECT, and lets at most burst + rate attempts
// through in any one second.
type connectLimiter struct {
	bucket *bucket
	window *window
}

func newConnectLimiter(r Rate, now time.Time) *connectLimiter {
	b := newBucket(r, now)
	if b == nil {
		return &connectLimiter{}
	}
	return &connectLimiter{bucket: b, window: newWindow(int(math.Floor(r.PerSecond))+int(b.burst), time.Second)}
}

// wait takes the attempt's turn in the bucket: callers are served in the
// order they asked.
func (l *connectLimiter) wait(ctx context.Context, clk Clock) error {
	return l.bucket.wait(ctx, clk, 1)
}

// admit returns when the attempt may send its CONNECT, or ctx's error. It
// is called at the last moment, in the dial function after the TCP (and TLS)
// handshake, so that nothing that waits lies between the count and the wire.
func (l *connectLimiter) admit(ctx context.Context, clk Clock) error {
	for {
		d := l.window.admit(clk.Now())
		if d <= 0 {
			return nil
		}
		if err := sleep(ctx, clk, d); err != nil {
			return err
		}
	}
}

// window admits at most max events in any span of length per, by the
// times they are admitted.
type window struct {
	mu    sync.Mutex
	per   time.Duration
	times []time.Time // ring of the last len(times) admissions
	next  int         // the oldest admission, overwritten by the next
}

func newWindow(max int, per time.Duration) *window {
	return &window{per: per, times: make([]time.Time, max)}
}

// admit records an event at now and returns 0, or returns how long to wait
// before asking again when max events already fell within (now-per, now].
// A nil window admits everything.
func (w *window) admit(now time.Time) time.Duration {
	if w == nil || len(w.times) == 0 {
		return 0
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if oldest := w.times[w.next]; !oldest.IsZero() {
		if age := now.Sub(oldest); age < w.per {
			// A clock that stepped back makes age negative: wait one span
			// at most, never the size of the step.
			return min(w.per-age, w.per)
		}
	}
	w.times[w.next] = now
	w.next = (w.next + 1) % len(w.times)
	return 0
}
