package uplink

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink/spool"
)

// The spool's implementations are the queues the gateway wires in.
var (
	_ Queue = (*spool.Spool)(nil)
	_ Queue = (*spool.Mem)(nil)
)

// The drain against the real queues: in order across a kick, nothing left
// behind, dead letters moved to the spool's dead-letter store.
func TestDrainWithSpool(t *testing.T) {
	type queue interface {
		Queue
		Stats(secrets.DeviceID) spool.DeviceStats
		DeadLetters(secrets.DeviceID) ([]spool.DeadLetter, error)
		Close() error
	}
	impls := map[string]func(t *testing.T) queue{
		"mem": func(t *testing.T) queue {
			m, err := spool.NewMem(spool.Options{})
			if err != nil {
				t.Fatal(err)
			}
			return m
		},
		"bbolt": func(t *testing.T) queue {
			s, err := spool.Open(filepath.Join(t.TempDir(), "spool.db"), spool.Options{})
			if err != nil {
				t.Fatal(err)
			}
			return s
		},
	}
	for name, open := range impls {
		t.Run(name, func(t *testing.T) {
			q := open(t)
			t.Cleanup(func() { _ = q.Close() })
			cloud := startMochi(t, secrets.Aliyun)
			kicked := false
			cloud.hook.set(func(h *cloudHook) {
				h.kick = func(_ secrets.DeviceID, seq uint64) bool {
					if seq == 60 && !kicked {
						kicked = true
						return true
					}
					return false
				}
			})
			r := newRig(t, cloud.url, func(c *ManagerConfig) { c.Queue = q })
			dev := testDevice(1)
			cloud.register(dev.ID, dev.Secret)
			const n = 200
			for i := 1; i <= n; i++ {
				topic := userTopic(dev.ID)
				if i == 100 {
					topic = "/elsewhere/x/user/data" // poison: not this device's topic
				}
				m := spool.Message{Topic: topic, QoS: 1, Payload: fmt.Appendf(nil, "%d", i), Received: time.Now()}
				if _, err := q.Append(context.Background(), dev.ID, m); err != nil {
					t.Fatal(err)
				}
			}
			r.add(dev)
			startManager(t, r.m)
			st := r.waitStatus(dev.ID, "drained", func(st SessionStatus) bool { return st.Sent == n-1 && st.DeadLettered == 1 })
			testutil.Eventually(t, 10*time.Second, func() bool { s := q.Stats(dev.ID); return s.Depth == 0 && s.PendingAcks == 0 }, "queue empty")
			got := cloud.hook.receivedBy(dev.ID)
			var firsts []uint64
			seen := map[uint64]bool{}
			for _, s := range got {
				if !seen[s] {
					seen[s] = true
					firsts = append(firsts, s)
				}
			}
			want := uint64(1)
			for _, s := range firsts {
				if want == 100 {
					want++
				}
				if s != want {
					t.Fatalf("cloud order %v…: %d where %d was due", firsts[:min(len(firsts), 30)], s, want)
				}
				want++
			}
			if want != n+1 || st.Connects != 2 {
				t.Fatalf("delivered up to %d, connects %d", want-1, st.Connects)
			}
			dl, err := q.DeadLetters(dev.ID)
			if err != nil || len(dl) != 1 {
				t.Fatalf("dead letters %v, %v", dl, err)
			}
		})
	}
}
