package devsim

import (
	"testing"
	"time"
)

// The reconnect wait doubles from the minimum to the maximum, each wait
// jittered between half and all of its step, and starts over on reset.
func TestBackoff(t *testing.T) {
	b := backoff{min: 50 * time.Millisecond, max: time.Second}
	steps := []time.Duration{50, 100, 200, 400, 800, 1000, 1000}
	for round := range 2 {
		for i, step := range steps {
			step *= time.Millisecond
			if w := b.wait(); w < step/2 || w > step {
				t.Errorf("round %d, wait %d: %v, want between %v and %v", round, i, w, step/2, step)
			}
		}
		b.reset()
	}
}
