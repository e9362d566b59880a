package spool_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink/spool"
)

// The contract suite: every test runs against Mem and Spool.

func forEachImpl(t *testing.T, f func(t *testing.T, open func(t testing.TB, o spool.Options) queue)) {
	for _, im := range impls {
		t.Run(im.name, func(t *testing.T) { f(t, im.open) })
	}
}

func TestContractFIFOConcurrentDevices(t *testing.T) {
	forEachImpl(t, func(t *testing.T, open func(testing.TB, spool.Options) queue) {
		q := open(t, spool.Options{})
		const devices, per = 16, 100
		var wg sync.WaitGroup
		errs := make(chan error, devices)
		for d := range devices {
			wg.Go(func() {
				last := uint64(0)
				for i := range per {
					seq, err := q.Append(context.Background(), dev(d), msg(strconv.Itoa(i)))
					if err != nil {
						errs <- err
						return
					}
					if seq <= last {
						errs <- fmt.Errorf("device %d message %d got seq %d after %d", d, i, seq, last)
						return
					}
					last = seq
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		var bytes int64
		seen := map[uint64]bool{}
		for d := range devices {
			ms := readAll(t, q, dev(d))
			if len(ms) != per {
				t.Fatalf("device %d: %d messages, want %d", d, len(ms), per)
			}
			for i, m := range ms {
				if string(m.Payload) != strconv.Itoa(i) || m.Topic != "/pk/dev/user/data" || m.QoS != 1 || m.Received.IsZero() {
					t.Fatalf("device %d position %d: %+v", d, i, m)
				}
				if i > 0 && m.Seq <= ms[i-1].Seq || seen[m.Seq] {
					t.Fatalf("device %d position %d: seq %d not increasing or reused", d, i, m.Seq)
				}
				seen[m.Seq] = true
				bytes += spool.Size(m)
			}
		}
		tot := q.Totals()
		if tot.Depth != devices*per || tot.Appended != devices*per || tot.Bytes != bytes || tot.Devices != devices {
			t.Errorf("totals %+v, want depth/appended %d bytes %d devices %d", tot, devices*per, bytes, devices)
		}
	})
}

// Several goroutines appending for the same device: each one's messages
// keep their order, seqs are unique and gap-free.
func TestContractFIFOSameDeviceManyAppenders(t *testing.T) {
	forEachImpl(t, func(t *testing.T, open func(testing.TB, spool.Options) queue) {
		q := open(t, spool.Options{})
		const writers, per = 6, 80
		var wg sync.WaitGroup
		for w := range writers {
			wg.Go(func() {
				for i := range per {
					if _, err := q.Append(context.Background(), dev(0), msg(fmt.Sprintf("%d:%d", w, i))); err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		ms := readAll(t, q, dev(0))
		if len(ms) != writers*per {
			t.Fatalf("%d messages, want %d", len(ms), writers*per)
		}
		next := make([]int, writers)
		for i, m := range ms {
			if m.Seq != uint64(i+1) {
				t.Fatalf("position %d has seq %d", i, m.Seq)
			}
			var w, n int
			if _, err := fmt.Sscanf(string(m.Payload), "%d:%d", &w, &n); err != nil {
				t.Fatal(err)
			}
			if n != next[w] {
				t.Fatalf("writer %d: message %d at seq %d, want %d", w, n, m.Seq, next[w])
			}
			next[w]++
		}
	})
}

func TestContractReadAck(t *testing.T) {
	forEachImpl(t, func(t *testing.T, open func(testing.TB, spool.Options) queue) {
		clk := newFakeClock()
		q := open(t, spool.Options{Now: clk.Now})
		a, b := dev(1), dev(2)
		received := map[uint64]time.Time{}
		for i := 1; i <= 20; i++ {
			received[mustAppend(t, q, a, msg(fmt.Sprintf("%02d", i)))] = clk.Now()
			clk.Advance(time.Second)
		}
		for i := 1; i <= 5; i++ {
			mustAppend(t, q, b, msg("b"+strconv.Itoa(i)))
		}
		size := spool.Size(msg("01"))

		for _, tc := range []struct {
			after uint64
			max   int
			want  []uint64
		}{
			{0, 5, []uint64{1, 2, 3, 4, 5}},
			{5, 3, []uint64{6, 7, 8}},
			{18, 100, []uint64{19, 20}},
			{20, 10, nil},
			{0, 0, nil},
		} {
			ms, err := q.Read(a, tc.after, tc.max)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(seqs(ms), tc.want) && !(len(ms) == 0 && len(tc.want) == 0) {
				t.Errorf("Read(after %d, max %d) = %v, want %v", tc.after, tc.max, seqs(ms), tc.want)
			}
		}
		if ms, err := q.Read(dev(99), 0, 10); err != nil || len(ms) != 0 {
			t.Errorf("read of unknown device = %v, %v", ms, err)
		}

		acked := []uint64{3, 1, 20, 7, 2, 19, 8}
		for _, seq := range acked {
			if err := q.Ack(a, seq); err != nil {
				t.Fatal(err)
			}
		}
		// Duplicates, unknown seqs, unknown devices are not errors.
		for _, seq := range []uint64{3, 0, 999} {
			if err := q.Ack(a, seq); err != nil {
				t.Errorf("ack %d: %v", seq, err)
			}
		}
		if err := q.Ack(dev(99), 1); err != nil {
			t.Errorf("ack of unknown device: %v", err)
		}
		var want []uint64
		for seq := uint64(1); seq <= 20; seq++ {
			if !slices.Contains(acked, seq) {
				want = append(want, seq)
			}
		}
		// Visible at once, before any commit.
		if got := seqs(readAll(t, q, a)); !slices.Equal(got, want) {
			t.Fatalf("after acks: %v, want %v", got, want)
		}
		syncQ(t, q)
		st := q.Stats(a)
		if st.Depth != len(want) || st.Bytes != int64(len(want))*size || st.PendingAcks != 0 {
			t.Errorf("stats %+v, want depth %d bytes %d", st, len(want), int64(len(want))*size)
		}
		if !st.Oldest.Equal(received[4]) || st.OldestAge != clk.Now().Sub(received[4]) {
			t.Errorf("oldest %v age %v, want %v", st.Oldest, st.OldestAge, received[4])
		}
		if st.LastSeq != 20 || !st.LastAck.Equal(clk.Now()) {
			t.Errorf("last seq %d last ack %v", st.LastSeq, st.LastAck)
		}
		if got := q.Stats(b).Depth; got != 5 {
			t.Errorf("device b depth %d, want 5", got)
		}
		if tot := q.Totals(); tot.Acked != uint64(len(acked)) || tot.Depth != len(want)+5 {
			t.Errorf("totals acked %d depth %d, want %d %d", tot.Acked, tot.Depth, len(acked), len(want)+5)
		}
		for _, seq := range want {
			if err := q.Ack(a, seq); err != nil {
				t.Fatal(err)
			}
		}
		syncQ(t, q)
		if st := q.Stats(a); st.Depth != 0 || st.Bytes != 0 || !st.Oldest.IsZero() || st.OldestAge != 0 {
			t.Errorf("drained stats %+v", st)
		}
		// Seqs are never reused (a single counter: device b took 21-25).
		if seq := mustAppend(t, q, a, msg("next")); seq != 26 {
			t.Errorf("seq after drain %d, want 26", seq)
		}
	})
}

func TestContractNotify(t *testing.T) {
	forEachImpl(t, func(t *testing.T, open func(testing.TB, spool.Options) queue) {
		q := open(t, spool.Options{})
		ch := q.Notify(dev(1))
		if q.Notify(dev(1)) != ch {
			t.Fatal("Notify returns different channels for one device")
		}
		select {
		case <-ch:
			t.Fatal("notified before any append")
		default:
		}
		for range 3 {
			mustAppend(t, q, dev(1), msg("x"))
		}
		mustAppend(t, q, dev(2), msg("other device"))
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			t.Fatal("no notification")
		}
		select {
		case <-ch:
			t.Fatal("capacity is not 1: a second value was queued")
		default:
		}
	})
}

func TestContractDropOldestDeviceBudget(t *testing.T) {
	forEachImpl(t, func(t *testing.T, open func(testing.TB, spool.Options) queue) {
		size := spool.Size(msg("00"))
		q := open(t, spool.Options{Budget: 100 * size, DeviceBudget: 10 * size})
		for i := range 25 {
			mustAppend(t, q, dev(1), msg(fmt.Sprintf("%02d", i)))
			if st := q.Stats(dev(1)); st.Bytes > 10*size || st.Bytes != int64(st.Depth)*size {
				t.Fatalf("after append %d: %d bytes in %d messages, budget %d", i, st.Bytes, st.Depth, 10*size)
			}
		}
		mustAppend(t, q, dev(2), msg("bb"))
		ms := readAll(t, q, dev(1))
		if got, want := seqs(ms), []uint64{16, 17, 18, 19, 20, 21, 22, 23, 24, 25}; !slices.Equal(got, want) {
			t.Fatalf("kept %v, want %v", got, want)
		}
		st := q.Stats(dev(1))
		if st.Dropped[spool.ReasonOverflow] != 15 || st.Rejected != 0 {
			t.Errorf("dropped %v rejected %d", st.Dropped, st.Rejected)
		}
		if tot := q.Totals(); tot.Dropped[spool.ReasonOverflow] != 15 || tot.Bytes != 11*size {
			t.Errorf("totals dropped %v bytes %d", tot.Dropped, tot.Bytes)
		}
		if st := q.Stats(dev(2)); st.Depth != 1 || st.Dropped[spool.ReasonOverflow] != 0 {
			t.Errorf("other device %+v", st)
		}
	})
}

// The gateway-wide budget drops the oldest message of the device holding
// the most bytes: devices appending in turn each keep their newest.
func TestContractDropOldestGlobalBudget(t *testing.T) {
	forEachImpl(t, func(t *testing.T, open func(testing.TB, spool.Options) queue) {
		clk := newFakeClock()
		size := spool.Size(msg("00"))
		q := open(t, spool.Options{Budget: 12 * size, Now: clk.Now})
		for round := range 10 {
			for d := range 4 {
				mustAppend(t, q, dev(d), msg(fmt.Sprintf("%02d", round)))
				clk.Advance(time.Second)
				if tot := q.Totals(); tot.Bytes > 12*size {
					t.Fatalf("round %d device %d: %d bytes, budget %d", round, d, tot.Bytes, 12*size)
				}
			}
		}
		for d := range 4 {
			// Appended in rounds: device d's message of round r has seq 4r+d+1.
			want := []uint64{uint64(4*7 + d + 1), uint64(4*8 + d + 1), uint64(4*9 + d + 1)}
			if got := seqs(readAll(t, q, dev(d))); !slices.Equal(got, want) {
				t.Errorf("device %d kept %v, want %v", d, got, want)
			}
			if got := q.Stats(dev(d)).Dropped[spool.ReasonOverflow]; got != 7 {
				t.Errorf("device %d dropped %d, want 7", d, got)
			}
		}
		if tot := q.Totals(); tot.Bytes != 12*size || tot.Depth != 12 || tot.Dropped[spool.ReasonOverflow] != 28 {
			t.Errorf("totals %+v", tot)
		}
	})
}

func TestContractRejectNew(t *testing.T) {
	forEachImpl(t, func(t *testing.T, open func(testing.TB, spool.Options) queue) {
		size := spool.Size(msg("00"))
		q := open(t, spool.Options{Budget: 8 * size, DeviceBudget: 5 * size, Overflow: spool.RejectNew})
		for i := range 5 {
			mustAppend(t, q, dev(1), msg(fmt.Sprintf("%02d", i)))
		}
		_, err := q.Append(context.Background(), dev(1), msg("xx"))
		if !errors.Is(err, spool.ErrFull) {
			t.Fatalf("append over the device budget: %v, want ErrFull", err)
		}
		for i := range 3 {
			mustAppend(t, q, dev(2), msg(fmt.Sprintf("%02d", i)))
		}
		// The gateway budget is full. Device 2's fourth message is within
		// its fair share (8 units ÷ 2 devices): it takes the oldest message
		// of device 1, which holds more; its fifth is over it and refused.
		mustAppend(t, q, dev(2), msg("03"))
		if _, err := q.Append(context.Background(), dev(2), msg("yy")); !errors.Is(err, spool.ErrFull) {
			t.Fatalf("append over the gateway budget and the fair share: %v, want ErrFull", err)
		}
		if got := seqs(readAll(t, q, dev(1))); !slices.Equal(got, []uint64{2, 3, 4, 5}) {
			t.Errorf("stored %v", got)
		}
		st := q.Stats(dev(1))
		if st.Rejected != 1 || st.Dropped[spool.ReasonOverflow] != 1 {
			t.Errorf("stats %+v", st)
		}
		if tot := q.Totals(); tot.Rejected != 2 || tot.Bytes != 8*size || tot.Dropped[spool.ReasonOverflow] != 1 {
			t.Errorf("totals rejected %d bytes %d dropped %v", tot.Rejected, tot.Bytes, tot.Dropped)
		}
		// Room again after an acknowledgement; the refused messages got no seq.
		if err := q.Ack(dev(1), 2); err != nil {
			t.Fatal(err)
		}
		syncQ(t, q)
		if seq := mustAppend(t, q, dev(1), msg("zz")); seq != 10 {
			t.Errorf("seq %d, want 10", seq)
		}
	})
}

func TestContractTooLarge(t *testing.T) {
	forEachImpl(t, func(t *testing.T, open func(testing.TB, spool.Options) queue) {
		size := spool.Size(msg("00"))
		for _, ov := range []spool.Overflow{spool.DropOldest, spool.RejectNew} {
			q := open(t, spool.Options{Budget: 10 * size, DeviceBudget: 2 * size, Overflow: ov})
			mustAppend(t, q, dev(1), msg("keep"))
			big := msg(strings.Repeat("x", int(3*size)))
			if _, err := q.Append(context.Background(), dev(1), big); !errors.Is(err, spool.ErrTooLarge) {
				t.Fatalf("%s: oversized append: %v, want ErrTooLarge", ov, err)
			}
			st := q.Stats(dev(1))
			if st.Rejected != 1 || st.Depth != 1 {
				t.Errorf("%s: stats %+v", ov, st)
			}
		}
	})
}

func TestContractTTL(t *testing.T) {
	forEachImpl(t, func(t *testing.T, open func(testing.TB, spool.Options) queue) {
		clk := newFakeClock()
		q := open(t, spool.Options{TTL: time.Minute, Now: clk.Now, SweepInterval: 5 * time.Millisecond})
		t0 := clk.Now()
		mustAppend(t, q, dev(1), msg("at 0s"))
		clk.Advance(30 * time.Second)
		mustAppend(t, q, dev(1), msg("at 30s"))
		clk.Advance(20 * time.Second)
		mustAppend(t, q, dev(1), msg("at 50s"))
		// Received in the past: stored, but never delivered.
		old := msg("received long ago")
		old.Received = t0.Add(-time.Hour)
		mustAppend(t, q, dev(2), old)
		if got := payloads(readAll(t, q, dev(2))); len(got) != 0 {
			t.Errorf("expired message delivered: %q", got)
		}
		clk.Advance(11 * time.Second) // 61 s: the first is older than the TTL
		if got := payloads(readAll(t, q, dev(1))); !slices.Equal(got, []string{"at 30s", "at 50s"}) {
			t.Errorf("after 61 s: %q", got)
		}
		testutil.Eventually(t, 10*time.Second, func() bool {
			return q.Stats(dev(1)).Dropped[spool.ReasonTTL] == 1 && q.Stats(dev(2)).Dropped[spool.ReasonTTL] == 1
		}, "ttl drops counted")
		if st := q.Stats(dev(1)); st.Depth != 2 || !st.Oldest.Equal(t0.Add(30*time.Second)) {
			t.Errorf("stats after expiry %+v", st)
		}
		clk.Advance(time.Hour)
		testutil.Eventually(t, 10*time.Second, func() bool {
			tot := q.Totals()
			return tot.Depth == 0 && tot.Bytes == 0 && tot.Dropped[spool.ReasonTTL] == 4
		}, "everything expired")
		if got := readAll(t, q, dev(1)); len(got) != 0 {
			t.Errorf("read after expiry: %v", seqs(got))
		}
	})
}

func TestContractDeadLetter(t *testing.T) {
	forEachImpl(t, func(t *testing.T, open func(testing.TB, spool.Options) queue) {
		clk := newFakeClock()
		q := open(t, spool.Options{DeadLetterMax: 2, Now: clk.Now})
		for i := 1; i <= 5; i++ {
			mustAppend(t, q, dev(1), msg(strconv.Itoa(i)))
		}
		ms := readAll(t, q, dev(1))
		if err := q.DeadLetter(dev(1), ms[1].Seq, "payload exceeds the 256 KiB limit"); err != nil {
			t.Fatal(err)
		}
		if got := seqs(readAll(t, q, dev(1))); !slices.Equal(got, []uint64{1, 3, 4, 5}) {
			t.Errorf("queue after dead-letter: %v", got)
		}
		dls, err := q.DeadLetters(dev(1))
		if err != nil {
			t.Fatal(err)
		}
		if len(dls) != 1 || dls[0].Seq != 2 || string(dls[0].Payload) != "2" || dls[0].Reason != "payload exceeds the 256 KiB limit" || !dls[0].At.Equal(clk.Now()) {
			t.Fatalf("dead letters %+v", dls)
		}
		st := q.Stats(dev(1))
		if st.Dropped[spool.ReasonDeadLetter] != 1 || st.DeadLetters != 1 || st.DeadLetterBytes != spool.Size(ms[1]) || st.Depth != 4 {
			t.Errorf("stats %+v", st)
		}
		// Bounded: the oldest dead letter goes.
		clk.Advance(time.Second)
		for _, m := range []spool.Message{ms[0], ms[2]} {
			if err := q.DeadLetter(dev(1), m.Seq, "refused topic"); err != nil {
				t.Fatal(err)
			}
		}
		// Kept in Seq order; the lowest Seq is evicted.
		dls, _ = q.DeadLetters(dev(1))
		if len(dls) != 2 || dls[0].Seq != 2 || dls[1].Seq != 3 || dls[1].Reason != "refused topic" {
			t.Errorf("dead letters after eviction %+v", dls)
		}
		st = q.Stats(dev(1))
		if st.DeadLettersEvicted != 1 || st.DeadLetters != 2 || st.Dropped[spool.ReasonDeadLetter] != 3 {
			t.Errorf("stats %+v", st)
		}
		// Not queued any more: nothing happens.
		if err := q.DeadLetter(dev(1), ms[1].Seq, "again"); err != nil {
			t.Error(err)
		}
		if st := q.Stats(dev(1)); st.Dropped[spool.ReasonDeadLetter] != 3 {
			t.Errorf("dead-lettering a missing message counted: %+v", st)
		}
		// The queue moves on.
		if got, _ := q.Read(dev(1), 0, 1); len(got) != 1 || got[0].Seq != 4 {
			t.Errorf("head of queue %v", seqs(got))
		}
		if n, err := q.ClearDeadLetters(dev(1)); err != nil || n != 2 {
			t.Errorf("clear dead letters = %d, %v", n, err)
		}
		if tot := q.Totals(); tot.DeadLetters != 0 || tot.DeadLetterBytes != 0 || tot.DeadLettersEvicted != 1 {
			t.Errorf("totals %+v", tot)
		}
	})
}

// DeadLetter is the whole move: once it returns the message has left the
// queue and is a dead letter, and no acknowledgement was involved (none
// is pending, none is counted), so the drain needs no Ack after it.
func TestContractDeadLetterIsNotAnAck(t *testing.T) {
	forEachImpl(t, func(t *testing.T, open func(testing.TB, spool.Options) queue) {
		q := open(t, spool.Options{})
		for i := 1; i <= 3; i++ {
			mustAppend(t, q, dev(1), msg(strconv.Itoa(i)))
		}
		ms := readAll(t, q, dev(1))
		for _, m := range ms[:2] {
			if err := q.DeadLetter(dev(1), m.Seq, "poison"); err != nil {
				t.Fatal(err)
			}
		}
		if got := seqs(readAll(t, q, dev(1))); !slices.Equal(got, []uint64{ms[2].Seq}) {
			t.Errorf("queue after dead-letter: %v", got)
		}
		dls, err := q.DeadLetters(dev(1))
		if err != nil || len(dls) != 2 || dls[0].Seq != ms[0].Seq || dls[1].Seq != ms[1].Seq {
			t.Fatalf("dead letters %+v, %v", dls, err)
		}
		if st := q.Stats(dev(1)); st.PendingAcks != 0 || st.Depth != 1 || st.Dropped[spool.ReasonDeadLetter] != 2 {
			t.Errorf("stats %+v", st)
		}
		if tot := q.Totals(); tot.Acked != 0 || tot.DeadLetters != 2 {
			t.Errorf("totals %+v", tot)
		}
	})
}

func TestContractDeadLetterBudget(t *testing.T) {
	forEachImpl(t, func(t *testing.T, open func(testing.TB, spool.Options) queue) {
		size := spool.Size(msg("0"))
		q := open(t, spool.Options{DeadLetterBudget: 3 * size})
		for d := range 2 {
			for i := range 3 {
				mustAppend(t, q, dev(d), msg(strconv.Itoa(i)))
			}
		}
		for d := range 2 {
			for _, m := range readAll(t, q, dev(d)) {
				if err := q.DeadLetter(dev(d), m.Seq, "poison"); err != nil {
					t.Fatal(err)
				}
				if tot := q.Totals(); tot.DeadLetterBytes > 3*size {
					t.Fatalf("dead letters hold %d bytes, budget %d", tot.DeadLetterBytes, 3*size)
				}
			}
		}
		if tot := q.Totals(); tot.DeadLetters != 3 || tot.DeadLettersEvicted != 3 || tot.Depth != 0 {
			t.Errorf("totals %+v", tot)
		}
	})
}

func TestContractPurgeRemove(t *testing.T) {
	forEachImpl(t, func(t *testing.T, open func(testing.TB, spool.Options) queue) {
		q := open(t, spool.Options{})
		a, b := dev(1), dev(2)
		for i := range 10 {
			mustAppend(t, q, a, msg(strconv.Itoa(i)))
		}
		for i := range 3 {
			mustAppend(t, q, b, msg(strconv.Itoa(i)))
		}
		first, _ := q.Read(a, 0, 1)
		if err := q.DeadLetter(a, first[0].Seq, "poison"); err != nil {
			t.Fatal(err)
		}
		if n, err := q.Purge(a); err != nil || n != 9 {
			t.Fatalf("purge = %d, %v; want 9", n, err)
		}
		if got := readAll(t, q, a); len(got) != 0 {
			t.Errorf("after purge: %v", seqs(got))
		}
		st := q.Stats(a)
		if st.Dropped[spool.ReasonPurge] != 9 || st.DeadLetters != 1 || st.Depth != 0 || st.Bytes != 0 {
			t.Errorf("stats after purge %+v", st)
		}
		if got := len(readAll(t, q, b)); got != 3 {
			t.Errorf("other device has %d messages", got)
		}
		if seq := mustAppend(t, q, a, msg("after purge")); seq != 14 {
			t.Errorf("seq after purge %d, want 14", seq)
		}
		if err := q.Remove(a); err != nil {
			t.Fatal(err)
		}
		for _, d := range q.Devices() {
			if d.Device == a {
				t.Errorf("removed device listed: %+v", d)
			}
		}
		st = q.Stats(a)
		if st.Depth != 0 || st.DeadLetters != 0 || st.Dropped[spool.ReasonPurge] != 0 {
			t.Errorf("stats after remove %+v", st)
		}
		if dls, _ := q.DeadLetters(a); len(dls) != 0 {
			t.Errorf("dead letters after remove %v", dls)
		}
		tot := q.Totals()
		if tot.Devices != 1 || tot.Depth != 3 || tot.DeadLetters != 0 || tot.Dropped[spool.ReasonPurge] != 10 {
			t.Errorf("totals after remove %+v", tot)
		}
		// A removed device that comes back never sees a seq reused.
		if seq := mustAppend(t, q, a, msg("back")); seq != 15 {
			t.Errorf("seq after remove %d, want 15", seq)
		}
		if ds := q.Devices(); len(ds) != 2 || ds[0].Device != a || ds[1].Device != b || ds[0].Depth != 1 || ds[1].Depth != 3 {
			t.Errorf("devices %+v", ds)
		}
		if n, err := q.Purge(dev(99)); err != nil || n != 0 {
			t.Errorf("purge of unknown device = %d, %v", n, err)
		}
		if err := q.Remove(dev(99)); err != nil {
			t.Errorf("remove of unknown device: %v", err)
		}
	})
}

func TestContractClosed(t *testing.T) {
	forEachImpl(t, func(t *testing.T, open func(testing.TB, spool.Options) queue) {
		q := open(t, spool.Options{})
		mustAppend(t, q, dev(1), msg("x"))
		if err := q.Close(); err != nil {
			t.Fatal(err)
		}
		if err := q.Close(); err != nil {
			t.Errorf("second close: %v", err)
		}
		if _, err := q.Append(context.Background(), dev(1), msg("y")); !errors.Is(err, spool.ErrClosed) {
			t.Errorf("append after close: %v", err)
		}
		if _, err := q.Read(dev(1), 0, 10); !errors.Is(err, spool.ErrClosed) {
			t.Errorf("read after close: %v", err)
		}
		if err := q.Ack(dev(1), 1); !errors.Is(err, spool.ErrClosed) {
			t.Errorf("ack after close: %v", err)
		}
		if _, err := q.Purge(dev(1)); !errors.Is(err, spool.ErrClosed) {
			t.Errorf("purge after close: %v", err)
		}
	})
}

func TestContractInvalidInput(t *testing.T) {
	forEachImpl(t, func(t *testing.T, open func(testing.TB, spool.Options) queue) {
		q := open(t, spool.Options{})
		for _, d := range []secrets.DeviceID{
			{ProductKey: "", DeviceName: "x"},
			{ProductKey: "pk", DeviceName: ""},
			{ProductKey: "p/k", DeviceName: "x"},
			{ProductKey: "pk", DeviceName: "a\x00b"},
			{ProductKey: "pk", DeviceName: strings.Repeat("n", 2000)},
		} {
			if _, err := q.Append(context.Background(), d, msg("x")); !errors.Is(err, spool.ErrInvalidDevice) {
				t.Errorf("append for %q: %v, want ErrInvalidDevice", d.String(), err)
			}
		}
		long := msg("x")
		long.Topic = strings.Repeat("t", 70000)
		if _, err := q.Append(context.Background(), dev(1), long); !errors.Is(err, spool.ErrTooLarge) {
			t.Errorf("append with a 70000-byte topic: %v", err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := q.Append(ctx, dev(1), msg("x")); !errors.Is(err, context.Canceled) {
			t.Errorf("append with canceled context: %v", err)
		}
	})
}

func TestOptionsValidation(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    spool.Options
	}{
		{"negative budget", spool.Options{Budget: -1}},
		{"negative device budget", spool.Options{DeviceBudget: -1}},
		{"unknown overflow", spool.Options{Overflow: "drop-newest"}},
		{"negative ttl", spool.Options{TTL: -time.Second}},
		{"negative max file size", spool.Options{MaxFileSize: -1}},
	} {
		if _, err := spool.NewMem(tc.o); err == nil {
			t.Errorf("%s: NewMem accepted %+v", tc.name, tc.o)
		}
		if _, err := spool.Open(t.TempDir()+"/spool.db", tc.o); err == nil {
			t.Errorf("%s: Open accepted %+v", tc.name, tc.o)
		}
	}
	for in, want := range map[string]spool.Overflow{"": spool.DropOldest, "drop-oldest": spool.DropOldest, "reject-new": spool.RejectNew} {
		if got, err := spool.ParseOverflow(in); err != nil || got != want {
			t.Errorf("ParseOverflow(%q) = %q, %v", in, got, err)
		}
	}
}

// logRecorder is a slog.Handler keeping the records.
type logRecorder struct {
	mu      sync.Mutex
	records []slog.Record
}

func (h *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (h *logRecorder) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.records = append(h.records, r.Clone())
	return nil
}
func (h *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *logRecorder) WithGroup(string) slog.Handler      { return h }

// drops returns the "count" of each drop line for reason.
func (h *logRecorder) drops(reason string) []int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []int64
	for _, r := range h.records {
		if r.Message != "spool dropped messages" {
			continue
		}
		var rs string
		var n int64
		r.Attrs(func(a slog.Attr) bool {
			switch a.Key {
			case "reason":
				rs = a.Value.String()
			case "count":
				n = int64(a.Value.Uint64())
			}
			return true
		})
		if rs == reason {
			out = append(out, n)
		}
	}
	return out
}

// Drops are logged at once, then at most once per interval per device and
// reason with the count since the last line.
func TestContractDropLogRateLimited(t *testing.T) {
	forEachImpl(t, func(t *testing.T, open func(testing.TB, spool.Options) queue) {
		clk := newFakeClock()
		rec := &logRecorder{}
		size := spool.Size(msg("00"))
		q := open(t, spool.Options{DeviceBudget: size, DropLogInterval: time.Minute, Now: clk.Now, Logger: slog.New(rec)})
		for i := range 10 {
			mustAppend(t, q, dev(1), msg(fmt.Sprintf("%02d", i)))
			clk.Advance(time.Second)
		}
		if got := rec.drops("overflow"); !slices.Equal(got, []int64{1}) {
			t.Fatalf("after 9 drops in 10 s: lines with counts %v, want [1]", got)
		}
		clk.Advance(time.Minute)
		mustAppend(t, q, dev(1), msg("10"))
		if got := rec.drops("overflow"); !slices.Equal(got, []int64{1, 9}) {
			t.Fatalf("after the interval: lines with counts %v, want [1 9]", got)
		}
		if st := q.Stats(dev(1)); st.Dropped[spool.ReasonOverflow] != 10 {
			t.Errorf("counted %d drops, want 10", st.Dropped[spool.ReasonOverflow])
		}
	})
}

// Clearing many dead letters deletes exactly that device's (bbolt: keys
// collected first, deleted after; deleting under a cursor skips keys).
func TestContractClearManyDeadLetters(t *testing.T) {
	forEachImpl(t, func(t *testing.T, open func(testing.TB, spool.Options) queue) {
		q := open(t, spool.Options{DeadLetterMax: 1000})
		for d, n := range map[int]int{1: 120, 2: 40, 3: 60} {
			for i := range n {
				mustAppend(t, q, dev(d), msg(strconv.Itoa(i)))
			}
		}
		for _, d := range []int{1, 2, 3} {
			for _, m := range readAll(t, q, dev(d)) {
				if err := q.DeadLetter(dev(d), m.Seq, "poison"); err != nil {
					t.Fatal(err)
				}
			}
		}
		if n, err := q.ClearDeadLetters(dev(2)); err != nil || n != 40 {
			t.Fatalf("clear = %d, %v; want 40", n, err)
		}
		for d, want := range map[int]int{1: 120, 2: 0, 3: 60} {
			dls, err := q.DeadLetters(dev(d))
			if err != nil || len(dls) != want {
				t.Errorf("device %d: %d dead letters, %v; want %d", d, len(dls), err, want)
			}
		}
		if tot := q.Totals(); tot.DeadLetters != 180 {
			t.Errorf("totals: %d dead letters, want 180", tot.DeadLetters)
		}
	})
}

// Seqs are spool-wide: acknowledging or dead-lettering another device's
// seq must not touch that device's message.
func TestContractForeignSeq(t *testing.T) {
	forEachImpl(t, func(t *testing.T, open func(testing.TB, spool.Options) queue) {
		q := open(t, spool.Options{})
		sa := mustAppend(t, q, dev(1), msg("a"))
		sb := mustAppend(t, q, dev(2), msg("b"))
		if err := q.Ack(dev(1), sb); err != nil {
			t.Fatal(err)
		}
		if err := q.DeadLetter(dev(1), sb, "wrong device"); err != nil {
			t.Fatal(err)
		}
		if err := q.Ack(dev(2), sa); err != nil {
			t.Fatal(err)
		}
		syncQ(t, q)
		if got := seqs(readAll(t, q, dev(1))); !slices.Equal(got, []uint64{sa}) {
			t.Errorf("device 1: %v", got)
		}
		if got := seqs(readAll(t, q, dev(2))); !slices.Equal(got, []uint64{sb}) {
			t.Errorf("device 2: %v", got)
		}
		if tot := q.Totals(); tot.Depth != 2 || tot.DeadLetters != 0 || tot.Acked != 0 {
			t.Errorf("totals %+v", tot)
		}
	})
}
