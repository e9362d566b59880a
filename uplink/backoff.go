package uplink

import (
	"errors"
	"fmt"
	"time"
)

// Backoff is an exponential backoff with full jitter: after n consecutive
// failed attempts the next one waits Floor + a uniformly random duration in
// [0, min(Max-Floor, Initial·2ⁿ)). After a connection that was good (it
// stayed up for ResetAfter or saw a PUBACK) the failure count is reset and
// the next attempt waits a random duration in [0, Initial), without Floor, so
// ten thousand sessions dropped together do not come back in lockstep.
type Backoff struct {
	// Initial is the ceiling of the jitter after a good connection and the
	// base of the exponential ceiling.
	Initial time.Duration
	// Max bounds every delay.
	Max time.Duration
	// Floor is the least wait after a failed attempt. EnOS blocks a device
	// for 5 minutes after 4 connection requests within 2 minutes, so its
	// default is 30 s.
	Floor time.Duration
}

// Validate reports whether the backoff is usable.
func (b Backoff) Validate() error {
	switch {
	case b.Initial <= 0:
		return fmt.Errorf("backoff initial %v: must be positive", b.Initial)
	case b.Max < b.Initial:
		return fmt.Errorf("backoff max %v: must be at least initial %v", b.Max, b.Initial)
	case b.Floor < 0 || b.Floor >= b.Max:
		return fmt.Errorf("backoff floor %v: must be at least 0 and less than max %v", b.Floor, b.Max)
	}
	return nil
}

// Delay returns the wait before the next attempt after failures consecutive
// failed attempts (0: the previous connection was good), for a random
// number r in [0, 1).
func (b Backoff) Delay(failures int, r float64) time.Duration {
	if r < 0 || r >= 1 {
		r = 0
	}
	if failures <= 0 {
		return time.Duration(r * float64(b.Initial))
	}
	ceiling := b.Max - b.Floor
	if failures < 40 {
		if c := b.Initial << failures; c > 0 && c < ceiling {
			ceiling = c
		}
	}
	return b.Floor + time.Duration(r*float64(ceiling))
}

// RetryWindow is a wait drawn uniformly from [Min, Max]: the slow retry of a
// refused login (auth-failed) and the long wait after "server unavailable".
type RetryWindow struct {
	Min, Max time.Duration
}

// Validate reports whether the window is usable.
func (w RetryWindow) Validate() error {
	if w.Min <= 0 || w.Max < w.Min {
		return fmt.Errorf("retry window %v–%v: want 0 < min ≤ max", w.Min, w.Max)
	}
	return nil
}

// Delay returns Min + r·(Max−Min) for r in [0, 1).
func (w RetryWindow) Delay(r float64) time.Duration {
	if r < 0 || r >= 1 {
		r = 0
	}
	return w.Min + time.Duration(r*float64(w.Max-w.Min))
}

// ConnectWindow caps connection attempts per device: at most Max attempts
// within any interval of length Per. EnOS blocks a device for 5 minutes after
// 4 connection requests within 2 minutes, so its default is 3 per 2 minutes.
// The zero value imposes no cap.
type ConnectWindow struct {
	Max int
	Per time.Duration
}

// Validate reports whether the window is usable.
func (w ConnectWindow) Validate() error {
	if w.Max < 0 || w.Per < 0 || (w.Max > 0) != (w.Per > 0) {
		return errors.New("connect window: set both max and per (or neither)")
	}
	return nil
}

// attemptLog remembers a device's recent connection attempts for its
// ConnectWindow. It is used by one session at a time.
type attemptLog struct {
	times []time.Time // oldest first, at most window.Max
}

// wait returns how long to wait at now before another attempt fits w.
func (l *attemptLog) wait(w ConnectWindow, now time.Time) time.Duration {
	if w.Max <= 0 || len(l.times) < w.Max {
		return 0
	}
	oldest := l.times[len(l.times)-w.Max]
	if d := oldest.Add(w.Per).Sub(now); d > 0 {
		// Never more than one window, whatever the clock did.
		return min(d, w.Per)
	}
	return 0
}

// record notes an attempt at now.
func (l *attemptLog) record(w ConnectWindow, now time.Time) {
	if w.Max <= 0 {
		return
	}
	l.times = append(l.times, now)
	if len(l.times) > w.Max {
		l.times = append(l.times[:0], l.times[len(l.times)-w.Max:]...)
	}
}
