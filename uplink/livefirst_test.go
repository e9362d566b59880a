package uplink

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink/spool"
)

// freshBase: fresh messages carry payloads freshBase+k, backlog messages k.
const freshBase = 100000

// statsQueue is a LiveQueue with the visibility the tests need.
type statsQueue interface {
	LiveQueue
	Stats(device secrets.DeviceID) spool.DeviceStats
	Close() error
}

// ackRecorder records every Ack of the queue it wraps.
type ackRecorder struct {
	statsQueue
	mu   sync.Mutex
	acks map[secrets.DeviceID][]uint64
}

func (a *ackRecorder) Ack(d secrets.DeviceID, seq uint64) error {
	a.mu.Lock()
	a.acks[d] = append(a.acks[d], seq)
	a.mu.Unlock()
	return a.statsQueue.Ack(d, seq)
}

func (a *ackRecorder) acked(d secrets.DeviceID) []uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.acks[d])
}

// liveQueues are the LiveQueue implementations the tests run against.
var liveQueues = []struct {
	name string
	open func(t testing.TB) statsQueue
}{
	{"mem", func(t testing.TB) statsQueue {
		q, err := spool.NewMem(spool.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { q.Close() })
		return q
	}},
	{"spool", func(t testing.TB) statsQueue {
		q, err := spool.Open(filepath.Join(t.TempDir(), "spool.db"), spool.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { q.Close() })
		return q
	}},
}

// liveRig is a manager with LiveFirst on a real queue, paced at rate
// messages/s per device, against the mochi test cloud.
type liveRig struct {
	*rig
	cloud *mochiCloud
	q     *ackRecorder

	mu     sync.Mutex
	values map[secrets.DeviceID]map[uint64]uint64 // seq → payload value
}

func newLiveRig(t *testing.T, open func(testing.TB) statsQueue, rate float64, opts ...rigOption) *liveRig {
	t.Helper()
	cloud := startMochi(t, secrets.Aliyun)
	lr := &liveRig{cloud: cloud, q: &ackRecorder{statsQueue: open(t), acks: map[secrets.DeviceID][]uint64{}},
		values: map[secrets.DeviceID]map[uint64]uint64{}}
	opts = append([]rigOption{func(c *ManagerConfig) {
		c.Queue = lr.q
		c.LiveFirst = true
		l := c.Limits[secrets.Aliyun]
		l.MessageRate = Rate{PerSecond: rate, Burst: 1}
		c.Limits[secrets.Aliyun] = l
	}}, opts...)
	lr.rig = newRig(t, cloud.url, opts...)
	return lr
}

// put appends a message with payload value v for d.
func (lr *liveRig) put(d secrets.DeviceID, v uint64) {
	lr.t.Helper()
	seq, err := lr.q.Append(context.Background(), d, spool.Message{Topic: userTopic(d), QoS: 1, Payload: fmt.Appendf(nil, "%d", v)})
	if err != nil {
		lr.t.Fatal(err)
	}
	lr.mu.Lock()
	defer lr.mu.Unlock()
	if lr.values[d] == nil {
		lr.values[d] = map[uint64]uint64{}
	}
	lr.values[d][seq] = v
}

// arrived returns how many publishes of d the cloud has received.
func (lr *liveRig) arrived(d secrets.DeviceID) int { return len(lr.cloud.hook.receivedBy(d)) }

// checkAcks verifies that every message was acknowledged to the queue
// exactly once, only after the cloud PUBACKed it, and that the queue is
// empty.
func (lr *liveRig) checkAcks(d secrets.DeviceID) {
	t := lr.t
	t.Helper()
	lr.mu.Lock()
	values := lr.values[d]
	lr.mu.Unlock()
	acked := lr.q.acked(d)
	seen := map[uint64]bool{}
	for _, seq := range acked {
		if seen[seq] {
			t.Errorf("%s: seq %d acknowledged twice", d, seq)
		}
		seen[seq] = true
		v, ok := values[seq]
		if !ok {
			t.Errorf("%s: acknowledged unknown seq %d", d, seq)
		} else if !lr.cloud.hook.wasPubacked(d, v) {
			t.Errorf("%s: seq %d (payload %d) acknowledged to the queue but never PUBACKed by the cloud", d, seq, v)
		}
	}
	if len(seen) != len(values) {
		t.Errorf("%s: %d of %d messages acknowledged", d, len(seen), len(values))
	}
	testutil.Eventually(t, 10*time.Second, func() bool { return lr.q.Stats(d).Depth == 0 }, "%s queue empty", d)
}

// splitLanes returns the first arrivals of backlog and fresh payloads, in
// arrival order, and the number of repeated arrivals.
func splitLanes(got []uint64) (backlog, fresh []uint64, dups int) {
	seen := map[uint64]bool{}
	for _, v := range got {
		if seen[v] {
			dups++
			continue
		}
		seen[v] = true
		if v > freshBase {
			fresh = append(fresh, v)
		} else {
			backlog = append(backlog, v)
		}
	}
	return backlog, fresh, dups
}

func wantRange(from, to uint64) []uint64 {
	var out []uint64
	for v := from; v <= to; v++ {
		out = append(out, v)
	}
	return out
}

// With a backlog of old messages and live traffic arriving while it
// drains, each fresh message goes out right away (ahead of the rest of the
// backlog), each lane arrives complete and in its own order, and every
// message is acknowledged to the queue only after its PUBACK.
func TestLiveFirstFreshAheadOfBacklog(t *testing.T) {
	for _, qi := range liveQueues {
		t.Run(qi.name, func(t *testing.T) {
			lr := newLiveRig(t, qi.open, 200)
			devs := []Device{testDevice(1), testDevice(2)}
			for _, d := range devs {
				lr.cloud.register(d.ID, d.Secret)
			}
			const backlog, fresh = 150, 15
			for i := uint64(1); i <= backlog; i++ {
				for _, d := range devs { // interleaved: a device's seqs have gaps
					lr.put(d.ID, i)
				}
			}
			lr.add(devs...)
			startManager(t, lr.m)
			for _, d := range devs {
				testutil.Eventually(t, 15*time.Second, func() bool { return lr.arrived(d.ID) > 0 }, "%s draining", d.ID)
			}
			// Live traffic, paced by the cloud's progress (not by sleeps):
			// fresh message k is appended once the cloud has received three
			// more messages of the device since fresh message k-1.
			posAtAppend := map[secrets.DeviceID][]int{}
			for k := uint64(1); k <= fresh; k++ {
				for _, d := range devs {
					n := lr.arrived(d.ID)
					posAtAppend[d.ID] = append(posAtAppend[d.ID], n)
					lr.put(d.ID, freshBase+k)
				}
				for _, d := range devs {
					n := posAtAppend[d.ID][k-1]
					testutil.Eventually(t, 15*time.Second, func() bool { return lr.arrived(d.ID) >= n+3 }, "progress")
				}
			}
			for _, d := range devs {
				st := lr.waitStatus(d.ID, "all delivered", func(st SessionStatus) bool { return st.Sent == backlog+fresh })
				got := lr.cloud.hook.receivedBy(d.ID)
				b, f, dups := splitLanes(got)
				if !slices.Equal(b, wantRange(1, backlog)) {
					t.Errorf("%s: backlog lane arrived as %v, want 1..%d in order", d.ID, b, backlog)
				}
				if !slices.Equal(f, wantRange(freshBase+1, freshBase+fresh)) {
					t.Errorf("%s: fresh lane arrived as %v, want %d..%d in order", d.ID, f, freshBase+1, freshBase+fresh)
				}
				if dups != 0 || st.Resent != 0 {
					t.Errorf("%s: %d duplicates, %d counted as resent, without any fault", d.ID, dups, st.Resent)
				}
				// Fresh message k was appended when the cloud had n
				// messages; ahead of it can be only what was already in
				// flight (the window) and the message holding rate tokens.
				lastBacklog := slices.Index(got, backlog)
				for k := range fresh {
					pos := slices.Index(got, freshBase+uint64(k+1))
					if limit := posAtAppend[d.ID][k] + lr.m.cfg.Window + 1; pos > limit {
						t.Errorf("%s: fresh message %d arrived at position %d, want at most %d (appended when %d had arrived)",
							d.ID, k+1, pos, limit, posAtAppend[d.ID][k])
					}
					if pos > lastBacklog {
						t.Errorf("%s: fresh message %d arrived after the backlog finished", d.ID, k+1)
					}
				}
				lr.checkAcks(d.ID)
				t.Logf("%s: fresh messages arrived at %v of %d; backlog finished at %d",
					d.ID, positions(got, freshBase+1, freshBase+fresh), len(got), lastBacklog)
			}
		})
	}
}

func positions(got []uint64, from, to uint64) []int {
	var out []int
	for v := from; v <= to; v++ {
		out = append(out, slices.Index(got, v))
	}
	return out
}

// The cloud drops the connection before the PUBACK of a backlog message
// and later of a fresh one. Nothing is lost, the backlog stays in order,
// and on every connection the arrivals split into two ordered lanes at
// one boundary (a fresh message not acknowledged before a reconnect joins
// the next connection's backlog).
func TestLiveFirstAcrossReconnects(t *testing.T) {
	for _, qi := range liveQueues {
		t.Run(qi.name, func(t *testing.T) {
			const backlog, fresh = 120, 12
			var (
				segMu    sync.Mutex
				arrivals int
				cuts     []int // arrival counts at which a connection was closed
				kicked   = map[uint64]bool{}
			)
			lr := newLiveRig(t, qi.open, 200)
			d := testDevice(1)
			lr.cloud.register(d.ID, d.Secret)
			lr.cloud.hook.set(func(h *cloudHook) {
				h.kick = func(_ secrets.DeviceID, v uint64) bool {
					segMu.Lock()
					defer segMu.Unlock()
					arrivals++
					if (v == 40 || v == freshBase+4) && !kicked[v] {
						kicked[v] = true
						cuts = append(cuts, arrivals)
						return true
					}
					return false
				}
			})
			for i := uint64(1); i <= backlog; i++ {
				lr.put(d.ID, i)
			}
			lr.add(d)
			startManager(t, lr.m)
			testutil.Eventually(t, 15*time.Second, func() bool { return lr.arrived(d.ID) > 0 }, "draining")
			for k := uint64(1); k <= fresh; k++ {
				n := lr.arrived(d.ID)
				lr.put(d.ID, freshBase+k)
				testutil.Eventually(t, 15*time.Second, func() bool { return lr.arrived(d.ID) >= n+4 }, "progress")
			}
			st := lr.waitStatus(d.ID, "all delivered", func(st SessionStatus) bool { return st.Sent >= backlog+fresh })
			lr.checkAcks(d.ID)
			got := lr.cloud.hook.receivedBy(d.ID)
			b, f, dups := splitLanes(got)
			if !slices.Equal(b, wantRange(1, backlog)) {
				t.Errorf("backlog arrived as %v, want 1..%d in order", b, backlog)
			}
			if got := slices.Sorted(slices.Values(f)); !slices.Equal(got, wantRange(freshBase+1, freshBase+fresh)) {
				t.Errorf("fresh messages arrived: %v, want %d..%d", f, freshBase+1, freshBase+fresh)
			}
			segMu.Lock()
			segs := append([]int(nil), cuts...)
			segMu.Unlock()
			if len(segs) != 2 || st.Connects != 3 {
				t.Fatalf("cuts at %v, %d connects: want 2 kicks, 3 connections", segs, st.Connects)
			}
			if st.Resent == 0 {
				t.Errorf("no resend counted after two kicks")
			}
			start := 0
			for i, end := range append(segs, len(got)) {
				if w, ok := twoLanes(got[start:end]); !ok {
					t.Errorf("connection %d: arrivals %v do not split into two ordered lanes", i+1, got[start:end])
				} else {
					t.Logf("connection %d: %d arrivals, lanes split at payload %d", i+1, end-start, w)
				}
				start = end
			}
			t.Logf("%d arrivals, %d duplicates, %d counted as resent", len(got), dups, st.Resent)
		})
	}
}

// twoLanes reports whether some boundary w splits seg into the payloads
// <= w and > w with each part strictly increasing, and returns it.
func twoLanes(seg []uint64) (uint64, bool) {
	cands := append([]uint64{0}, seg...)
	for _, w := range cands {
		var lo, hi uint64
		ok := true
		for _, v := range seg {
			p := &hi
			if v <= w {
				p = &lo
			}
			if v <= *p {
				ok = false
				break
			}
			*p = v
		}
		if ok {
			return w, true
		}
	}
	return 0, false
}

// A device whose live traffic fills its whole rate still drains its
// backlog: with both lanes waiting, at most backlogShare-1 fresh messages
// go out in a row.
func TestLiveFirstBacklogShare(t *testing.T) {
	lr := newLiveRig(t, liveQueues[0].open, 200)
	d := testDevice(1)
	lr.cloud.register(d.ID, d.Secret)
	const backlog, fresh = 100, 100
	for i := uint64(1); i <= backlog; i++ {
		lr.put(d.ID, i)
	}
	lr.add(d)
	startManager(t, lr.m)
	testutil.Eventually(t, 15*time.Second, func() bool { return lr.arrived(d.ID) > 0 }, "draining")
	for k := uint64(1); k <= fresh; k++ {
		lr.put(d.ID, freshBase+k)
	}
	lr.waitStatus(d.ID, "all delivered", func(st SessionStatus) bool { return st.Sent == backlog+fresh })
	got := lr.cloud.hook.receivedBy(d.ID)
	// While both lanes had messages waiting: from the first fresh arrival
	// until one lane ran dry.
	first := slices.IndexFunc(got, func(v uint64) bool { return v > freshBase })
	last := min(slices.Index(got, backlog), slices.Index(got, freshBase+fresh))
	if first < 0 || first > last {
		t.Fatalf("first fresh arrival at %d, a lane finished at %d", first, last)
	}
	run, maxRun, backlogIn := 0, 0, 0
	for _, v := range got[first : last+1] {
		if v > freshBase {
			run++
			maxRun = max(maxRun, run)
		} else {
			run = 0
			backlogIn++
		}
	}
	if maxRun > backlogShare-1 {
		t.Errorf("%d fresh messages in a row while the backlog waited, want at most %d", maxRun, backlogShare-1)
	}
	if maxRun < backlogShare-1 {
		t.Errorf("at most %d fresh messages in a row: fresh messages did not get priority", maxRun)
	}
	b, f, _ := splitLanes(got)
	if !slices.Equal(b, wantRange(1, backlog)) || !slices.Equal(f, wantRange(freshBase+1, freshBase+fresh)) {
		t.Errorf("lanes out of order: backlog %v, fresh %v", b, f)
	}
	lr.checkAcks(d.ID)
	t.Logf("while both lanes waited: %d arrivals, %d from the backlog, longest fresh run %d", last+1-first, backlogIn, maxRun)
}

// LiveFirst needs a queue with a watermark.
func TestLiveFirstNeedsWatermark(t *testing.T) {
	_, err := NewManager(ManagerConfig{Endpoint: Endpoint{URL: "tcp://127.0.0.1:1"}, Queue: newMemQueue(), LiveFirst: true})
	if err == nil || !strings.Contains(err.Error(), "Watermark") {
		t.Fatalf("NewManager = %v, want an error naming the missing Watermark", err)
	}
	m, err := spool.NewMem(spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, err := NewManager(ManagerConfig{Endpoint: Endpoint{URL: "tcp://127.0.0.1:1"}, Queue: m, LiveFirst: true}); err != nil {
		t.Fatal(err)
	}
}

// A model run of the lanes over many connections against spool.Mem, with
// random appends, PUBACKs and connection failures: nothing is lost, the
// messages first taken from backlog lanes and those first taken from
// fresh lanes are each in Seq order, the lanes split at the watermark, and
// a message is counted as resent only if it really was handed to paho
// before (without LiveFirst: exactly then).
func TestLanesModel(t *testing.T) {
	for _, liveFirst := range []bool{false, true} {
		t.Run(fmt.Sprintf("liveFirst=%v", liveFirst), func(t *testing.T) {
			r := rand.New(rand.NewPCG(7, uint64(len(t.Name()))))
			q, err := spool.NewMem(spool.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer q.Close()
			d := secrets.DeviceID{ProductKey: "pk", DeviceName: "dev"}
			other := secrets.DeviceID{ProductKey: "pk", DeviceName: "other"}
			appended := map[uint64]bool{}
			add := func() {
				if r.IntN(3) == 0 { // another device's seqs make gaps
					if _, err := q.Append(context.Background(), other, spool.Message{Topic: "t", QoS: 1}); err != nil {
						t.Fatal(err)
					}
				}
				seq, err := q.Append(context.Background(), d, spool.Message{Topic: "t", QoS: 1})
				if err != nil {
					t.Fatal(err)
				}
				appended[seq] = true
			}
			for range 50 {
				add()
			}
			var (
				maxPub          uint64
				handed          = map[uint64]bool{}
				firstFrom       = map[string][]uint64{}
				undercount      int
				resends, conns  int
				delivered       = map[uint64]bool{}
				freshLaneBefore = map[uint64]bool{}
			)
			for step := 0; len(delivered) < len(appended) || step < 3000; step++ {
				if step > 100000 {
					t.Fatalf("no progress: %d of %d delivered", len(delivered), len(appended))
				}
				conns++
				w, _ := q.Watermark(d)
				ls := &lanes{}
				if liveFirst {
					ls = liveFirstLanes(w)
				}
				var inflight []uint64
				for alive := true; alive; {
					switch op := r.IntN(20); {
					case op < 3 && step < 3000:
						add()
						ls.fresh.exhausted = false // the notify
					case op < 12 && len(inflight) < 16:
						l, err := ls.next(q, d, 16-len(inflight))
						if err != nil {
							t.Fatal(err)
						}
						if l == nil {
							if len(inflight) == 0 {
								alive = false
							}
							continue
						}
						seq := l.buf[0].Seq
						lname := "backlog"
						if liveFirst && l == &ls.fresh {
							lname = "fresh"
							if seq <= w {
								t.Fatalf("fresh lane took seq %d at or below the watermark %d", seq, w)
							}
						} else if liveFirst && seq > w {
							t.Fatalf("backlog lane took seq %d above the watermark %d", seq, w)
						}
						resent := ls.resent(l, seq, &maxPub)
						if resent && !handed[seq] {
							t.Fatalf("seq %d counted as resent but never handed to paho", seq)
						}
						if !resent && handed[seq] {
							if !liveFirst || !freshLaneBefore[seq] {
								t.Fatalf("seq %d handed before but not counted as resent", seq)
							}
							undercount++
						}
						if resent {
							resends++
						}
						if !handed[seq] {
							firstFrom[lname] = append(firstFrom[lname], seq)
							if lname == "fresh" {
								freshLaneBefore[seq] = true
							}
						}
						handed[seq] = true
						l.take()
						inflight = append(inflight, seq)
					case op < 18 && len(inflight) > 0:
						if err := q.Ack(d, inflight[0]); err != nil {
							t.Fatal(err)
						}
						delivered[inflight[0]] = true
						inflight = inflight[1:]
					case op >= 18:
						alive = false // the connection fails; in-flight messages stay queued
					}
				}
			}
			for seq := range appended {
				if !delivered[seq] {
					t.Fatalf("seq %d never delivered", seq)
				}
			}
			for lname, seqs := range firstFrom {
				if !slices.IsSorted(seqs) {
					t.Errorf("messages first taken from %s lanes are out of order", lname)
				}
			}
			if !liveFirst && (len(firstFrom["fresh"]) > 0 || undercount > 0) {
				t.Errorf("without LiveFirst: %d fresh-lane messages, %d uncounted resends", len(firstFrom["fresh"]), undercount)
			}
			if liveFirst && len(firstFrom["fresh"]) == 0 {
				t.Errorf("no message went through a fresh lane")
			}
			t.Logf("%d messages over %d connections: %d first from backlog lanes, %d from fresh lanes; %d resends counted, %d not (fresh messages resent before their backlog finished)",
				len(appended), conns, len(firstFrom["backlog"]), len(firstFrom["fresh"]), resends, undercount)
		})
	}
}
