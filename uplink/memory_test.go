package uplink

import (
	"runtime"
	"strings"
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

// TestIdleSessionHeap bounds the heap edgegw's own code holds for an idle
// connected session — the session, its drain, its connection's record and
// socket — by the heap profile's attribution to this package (paho's and
// the test cloud's share are theirs). At 10,000 devices every KiB here is
// 10 MiB.
func TestIdleSessionHeap(t *testing.T) {
	old := runtime.MemProfileRate
	runtime.MemProfileRate = 1
	defer func() { runtime.MemProfileRate = old }()

	cloud := startMochi(t, secrets.Aliyun)
	r := newRig(t, cloud.url, func(c *ManagerConfig) { c.OnState = nil })
	r.m.connHook = nil // the production connection, not the rig's counting wrapper
	startManager(t, r.m)
	const n = 20
	devs := make([]Device, n)
	for i := range devs {
		devs[i] = testDevice(i)
		cloud.register(devs[i].ID, devs[i].Secret)
		r.q.Notify(devs[i].ID) // the queue's own per-device state, before the baseline
	}
	base := memreport.Take().HeapByPart[memreport.PartUplink]
	for _, d := range devs {
		r.add(d)
	}
	for _, d := range devs {
		r.waitStatus(d.ID, "connected", func(st SessionStatus) bool { return st.State == StateConnected })
	}
	rep := memreport.Take()
	own := rep.HeapByPart[memreport.PartUplink] - base
	for _, site := range rep.TopHeap { // this package's test doubles are not the session's
		if site.Part == memreport.PartUplink && (strings.Contains(site.Function, "(*cloudHook)") || strings.Contains(site.Function, "(*memQueue)")) {
			own -= site.Bytes
		}
	}
	perSession := float64(own) / n
	t.Logf("edgegw's own heap per idle session: %.0f bytes", perSession)
	const budget = 4608 // it was 5.1 KiB with a logger, an activation watch, a drain window and subscription state made up front
	if perSession > budget {
		t.Errorf("%.0f bytes of edgegw's heap per idle session, budget %d", perSession, budget)
	}
}
