package bench

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sync"
	"time"
)

// tap is a subscriber on the cloud broker that sees every device message:
// it measures device-to-cloud latency from the send time in the payload,
// counts deliveries per device and checks their order.
type tap struct {
	c    *mqttConn
	dead chan struct{}
	err  error

	mu        sync.Mutex
	devs      map[string]*tapDevice
	total     int64 // device messages received, duplicates included
	dups      int64
	reordered int64
	foreign   int64 // messages that are not simulated device posts
	winFrom   int64 // measurement window (Unix nanos of arrival); 0 = off
	winTo     int64
	winCount  int64     // arrivals within the window
	lat       []int64   // latencies of arrivals from winFrom on (no upper bound), ns
	lastNew   time.Time // arrival of the latest new (not duplicate) message
}

// tapDevice is what the tap knows of one device.
type tapDevice struct {
	seen   []uint64 // bitset of seqs received
	maxSeq int64
	unique int64
	last   time.Time // arrival of the latest new seq
}

// startTap connects to addr, subscribes to filter at QoS 0 and starts
// reading.
func startTap(ctx context.Context, addr string, p connectParams, filter string) (*tap, error) {
	c, err := dialMQTT(ctx, addr, p)
	if err != nil {
		return nil, fmt.Errorf("start tap: %w", err)
	}
	if err := c.subscribe(ctx, filter, 0); err != nil {
		c.close()
		return nil, fmt.Errorf("start tap: %w", err)
	}
	t := &tap{c: c, dead: make(chan struct{}), devs: map[string]*tapDevice{}}
	go t.readLoop()
	return t, nil
}

func (t *tap) close() {
	t.c.close()
	<-t.dead
}

func (t *tap) readLoop() {
	defer close(t.dead)
	for {
		first, body, err := t.c.readPacket()
		if err != nil {
			t.err = err
			return
		}
		if first>>4 != pktPublish {
			continue
		}
		topic, payload, qos, pid, err := parsePublish(first, body)
		if err != nil {
			t.err = err
			return
		}
		if qos == 1 {
			_ = t.c.write(appendPuback(nil, pid))
		}
		t.observe(time.Now(), topic, payload)
	}
}

// deviceOf returns the device name of a /sys/{pk}/{dn}/… topic.
func deviceOf(topic []byte) []byte {
	if !bytes.HasPrefix(topic, []byte("/sys/")) {
		return nil
	}
	rest := topic[5:]
	i := bytes.IndexByte(rest, '/')
	if i < 0 {
		return nil
	}
	rest = rest[i+1:]
	if j := bytes.IndexByte(rest, '/'); j > 0 {
		return rest[:j]
	}
	return nil
}

// observe records one arrival.
func (t *tap) observe(now time.Time, topic, payload []byte) {
	name := deviceOf(topic)
	seq, sentAt, ok := parsePayload(payload)
	t.mu.Lock()
	defer t.mu.Unlock()
	if name == nil || !ok || seq <= 0 {
		t.foreign++
		return
	}
	d := t.devs[string(name)]
	if d == nil {
		d = &tapDevice{}
		t.devs[string(name)] = d
	}
	t.total++
	w, bit := seq/64, uint64(1)<<(seq%64)
	for int(w) >= len(d.seen) {
		d.seen = append(d.seen, 0)
	}
	switch {
	case d.seen[w]&bit != 0:
		t.dups++
		return
	case seq < d.maxSeq:
		t.reordered++
	}
	d.seen[w] |= bit
	d.unique++
	d.maxSeq = max(d.maxSeq, seq)
	d.last = now
	t.lastNew = now
	ns := now.UnixNano()
	if t.winFrom != 0 && ns >= t.winFrom {
		t.lat = append(t.lat, ns-sentAt)
		if ns <= t.winTo {
			t.winCount++
		}
	}
}

// window starts counting arrivals between from and to, and recording the
// latency of every new arrival from then on.
func (t *tap) window(from, to time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.winFrom, t.winTo = from.UnixNano(), to.UnixNano()
	t.winCount = 0
	t.lat = t.lat[:0]
}

// tapStats is a snapshot of a tap's counters.
type tapStats struct {
	Total, Unique, Dups, Reordered, Foreign int64
	Devices                                 int
	WindowCount                             int64
}

func (t *tap) stats() tapStats {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := tapStats{Total: t.total, Dups: t.dups, Reordered: t.reordered, Foreign: t.foreign, Devices: len(t.devs), WindowCount: t.winCount}
	for _, d := range t.devs {
		s.Unique += d.unique
	}
	return s
}

// uniqueOf returns how many distinct seqs of a device arrived.
func (t *tap) uniqueOf(name string) int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	if d := t.devs[name]; d != nil {
		return d.unique
	}
	return 0
}

// lastArrival returns when the latest new message arrived.
func (t *tap) lastArrival() time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.lastNew
}

// latencies returns a sorted copy of the window's latencies.
func (t *tap) latencies() []int64 {
	t.mu.Lock()
	out := slices.Clone(t.lat)
	t.mu.Unlock()
	slices.Sort(out)
	return out
}

// waitUntil polls cond every 20 ms until it holds, the tap dies, or ctx
// ends.
func (t *tap) waitUntil(ctx context.Context, what string, cond func(tapStats) bool) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if cond(t.stats()) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s: %w (tap saw %+v)", what, context.Cause(ctx), t.stats())
		case <-t.dead:
			return fmt.Errorf("wait for %s: tap connection lost: %w", what, t.err)
		case <-tick.C:
		}
	}
}
