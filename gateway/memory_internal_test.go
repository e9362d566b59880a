package gateway

import (
	"testing"
	"time"
)

// TestSettlerBurstThenQuiet checks when the memory of a burst of
// connections is returned: once the burst (minBurst connections) is
// followed by the quiet period, once per burst, and not while connections
// keep coming faster than one a second.
func TestSettlerBurstThenQuiet(t *testing.T) {
	t0 := time.Unix(1000, 0)
	s := settler{minBurst: 10, quiet: 5 * time.Second}
	at := func(sec int) time.Time { return t0.Add(time.Duration(sec) * time.Second) }
	steps := []struct {
		sec  int
		n    uint64
		want bool
	}{
		{0, 0, false},
		{1, 4, false},   // connecting…
		{2, 12, false},  // …a burst of 12
		{3, 12, false},  // quiet from 2 s
		{6, 12, false},  // 4 s quiet
		{7, 12, true},   // 5 s quiet: settle
		{8, 12, false},  // once
		{20, 12, false}, // nothing new
		{21, 13, false}, // a trickle: one a second is quiet…
		{22, 14, false},
		{23, 15, false},
		{40, 20, false}, // …8 since the settle, below minBurst
		{41, 22, false}, // a new burst: 10 since the settle
		{42, 30, false},
		{43, 40, false},
		{44, 41, false}, // one a second counts as quiet: from 43 s
		{47, 41, false},
		{48, 41, true},
		{49, 41, false},
	}
	for _, st := range steps {
		if got := s.observe(st.n, at(st.sec)); got != st.want {
			t.Fatalf("at %d s with %d connections: settle %v, want %v", st.sec, st.n, got, st.want)
		}
	}
}

// TestRuntimeStatusAddsUp checks that the runtime figures of
// gateway.status account for the runtime's whole mapping.
func TestRuntimeStatusAddsUp(t *testing.T) {
	r := runtimeStatus()
	if r.Goroutines < 1 || r.HeapObjectsBytes == 0 || r.StackBytes == 0 || r.TotalBytes == 0 || r.GCCycles == 0 && r.AllocBytes == 0 {
		t.Fatalf("runtime status %+v", r)
	}
	if sum := r.HeapObjectsBytes + r.HeapFreeBytes + r.HeapReleasedBytes + r.StackBytes + r.OtherBytes; sum != r.TotalBytes {
		t.Errorf("classes add up to %d, total %d: %+v", sum, r.TotalBytes, r)
	}
}
