package uplink

import (
	"testing"
	"time"

	"github.com/edgegw/edgegw/internal/memreport"
	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/secrets"
)

// TestIdleSessionGoroutines checks what an idle connected session costs in
// goroutines of edgegw's own: its session loop, nothing else — the
// publisher's goroutine exists only while messages are handed to paho. At
// 10,000 devices every goroutine is 10,000 stacks.
func TestIdleSessionGoroutines(t *testing.T) {
	cloud := startMochi(t, secrets.Aliyun)
	r := newRig(t, cloud.url)
	startManager(t, r.m)
	base := memreport.Goroutines()[memreport.PartUplink]

	const n = 10
	for i := range n {
		d := testDevice(i)
		cloud.register(d.ID, d.Secret)
		r.add(d)
		r.q.appendN(t, d.ID, userTopic(d.ID), 1, 3)
	}
	for i := range n {
		r.waitStatus(testDevice(i).ID, "3 messages sent", func(st SessionStatus) bool { return st.State == StateConnected && st.Sent == 3 })
	}
	var by map[string]int
	testutil.Eventually(t, 10*time.Second, func() bool {
		by = memreport.Goroutines()
		return by[memreport.PartUplink]-base == n
	}, "one uplink goroutine per idle session")
	if got := r.m.Connects(); got != n {
		t.Errorf("Connects() = %d, want %d", got, n)
	}
	t.Logf("%d idle sessions: goroutines %v (paho %.1f per session)", n, by, float64(by[memreport.PartPaho])/n)

	// A new message starts the publisher again; it ends again after.
	id := testDevice(0).ID
	r.q.appendN(t, id, userTopic(id), 1, 1)
	r.waitStatus(id, "a 4th message sent", func(st SessionStatus) bool { return st.Sent == 4 })
	testutil.Eventually(t, 10*time.Second, func() bool {
		return memreport.Goroutines()[memreport.PartUplink]-base == n
	}, "the publisher gone again")
}
