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
	if now.After(b.last) {
		b.tokens = math.Min(b.burst, b.tokens+b.rate*now.Sub(b.last).Seconds())
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
