package spool_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/edgegw/edgegw/uplink/spool"
)

// unitMsg is a message of exactly one "unit" for the fairness tests.
func unitMsg(i int) spool.Message { return msg(fmt.Sprintf("%04d", i)) }

// checkSuffix fails unless ms are the device's last messages in order:
// its own oldest ones were dropped, never a newer one.
func checkSuffix(t *testing.T, name string, ms []spool.Message, appended []uint64) {
	t.Helper()
	if len(ms) > len(appended) {
		t.Fatalf("%s holds %d messages, appended %d", name, len(ms), len(appended))
	}
	want := appended[len(appended)-len(ms):]
	for i, m := range ms {
		if m.Seq != want[i] {
			t.Fatalf("%s kept %v, want the newest %d of %v", name, seqs(ms), len(ms), appended)
		}
	}
}

// Under the gateway-wide budget, a device within its fair share (budget ÷
// devices holding data, the appending one included) never loses data to
// another device's flood: drop-oldest takes the oldest messages of the
// device holding the most bytes.
func TestContractFairOverflowDropOldest(t *testing.T) {
	forEachImpl(t, func(t *testing.T, open func(testing.TB, spool.Options) queue) {
		size := spool.Size(unitMsg(0))
		q := open(t, spool.Options{Budget: 12 * size, DeviceBudget: 8 * size})
		quiet, flooders := dev(0), []int{1, 2, 3}
		var quietSeqs []uint64
		for i := range 2 {
			quietSeqs = append(quietSeqs, mustAppend(t, q, quiet, unitMsg(i)))
		}
		appended := map[int][]uint64{}
		for i := range 30 {
			for _, f := range flooders {
				appended[f] = append(appended[f], mustAppend(t, q, dev(f), unitMsg(i)))
				if tot := q.Totals(); tot.Bytes > 12*size {
					t.Fatalf("%d bytes, budget %d", tot.Bytes, 12*size)
				}
			}
		}
		// Fair share now: 12 units ÷ 4 devices = 3; the quiet device holds 2
		// and a third message still fits without losing anything.
		quietSeqs = append(quietSeqs, mustAppend(t, q, quiet, unitMsg(2)))
		if got := seqs(readAll(t, q, quiet)); fmt.Sprint(got) != fmt.Sprint(quietSeqs) {
			t.Fatalf("quiet device kept %v, want all of %v", got, quietSeqs)
		}
		if st := q.Stats(quiet); st.Dropped[spool.ReasonOverflow] != 0 || st.Rejected != 0 {
			t.Errorf("quiet device lost data: %+v", st)
		}
		var dropped uint64
		for _, f := range flooders {
			ms := readAll(t, q, dev(f))
			checkSuffix(t, dev(f).String(), ms, appended[f])
			st := q.Stats(dev(f))
			if got, want := st.Dropped[spool.ReasonOverflow], uint64(30-len(ms)); got != want {
				t.Errorf("%s: %d overflow drops counted, lost %d", dev(f), got, want)
			}
			if len(ms) < 2 {
				t.Errorf("%s kept only %d messages: flooders should share the rest evenly", dev(f), len(ms))
			}
			dropped += st.Dropped[spool.ReasonOverflow]
		}
		if tot := q.Totals(); tot.Dropped[spool.ReasonOverflow] != dropped || tot.Bytes > 12*size {
			t.Errorf("totals %+v, want %d overflow drops", tot, dropped)
		}
	})
}

// Reject-new: a device over its fair share has its new message rejected;
// a device within its fair share still gets its message in, taken from the
// device holding the most bytes (counted as overflow).
func TestContractFairOverflowRejectNew(t *testing.T) {
	forEachImpl(t, func(t *testing.T, open func(testing.TB, spool.Options) queue) {
		size := spool.Size(unitMsg(0))
		q := open(t, spool.Options{Budget: 12 * size, DeviceBudget: 8 * size, Overflow: spool.RejectNew})
		quiet, flooders := dev(0), []int{1, 2, 3}
		var quietSeqs []uint64
		for i := range 2 {
			quietSeqs = append(quietSeqs, mustAppend(t, q, quiet, unitMsg(i)))
		}
		rejected := map[int]uint64{}
		for i := range 30 {
			for _, f := range flooders {
				_, err := q.Append(context.Background(), dev(f), unitMsg(i))
				switch {
				case errors.Is(err, spool.ErrFull):
					rejected[f]++
				case err != nil:
					t.Fatal(err)
				}
				if tot := q.Totals(); tot.Bytes > 12*size {
					t.Fatalf("%d bytes, budget %d", tot.Bytes, 12*size)
				}
			}
		}
		for _, f := range flooders {
			if rejected[f] == 0 {
				t.Errorf("%s was never rejected", dev(f))
			}
			if st := q.Stats(dev(f)); st.Rejected != rejected[f] {
				t.Errorf("%s: %d rejections counted, got %d", dev(f), st.Rejected, rejected[f])
			}
		}
		// The spool is full of flooders' messages; the quiet device's third
		// message is within its fair share (3 of 12 units, 4 devices).
		seq, err := q.Append(context.Background(), quiet, unitMsg(2))
		if err != nil {
			t.Fatalf("quiet device within its fair share refused: %v", err)
		}
		quietSeqs = append(quietSeqs, seq)
		if got := seqs(readAll(t, q, quiet)); fmt.Sprint(got) != fmt.Sprint(quietSeqs) {
			t.Fatalf("quiet device kept %v, want all of %v", got, quietSeqs)
		}
		// Its fourth is over the fair share: rejected, nothing dropped for it.
		before := q.Totals()
		if _, err := q.Append(context.Background(), quiet, unitMsg(3)); !errors.Is(err, spool.ErrFull) {
			t.Fatalf("quiet device over its fair share: %v, want ErrFull", err)
		}
		after := q.Totals()
		if after.Dropped[spool.ReasonOverflow] != before.Dropped[spool.ReasonOverflow] || after.Rejected != before.Rejected+1 {
			t.Errorf("rejection over the fair share: before %+v after %+v", before, after)
		}
		var dropped uint64
		for _, f := range flooders {
			dropped += q.Stats(dev(f)).Dropped[spool.ReasonOverflow]
		}
		if dropped != 1 || after.Dropped[spool.ReasonOverflow] != 1 {
			t.Errorf("flooders lost %d messages (totals %d), want 1 to make room for the quiet device", dropped, after.Dropped[spool.ReasonOverflow])
		}
		if st := q.Stats(quiet); st.Dropped[spool.ReasonOverflow] != 0 || st.Rejected != 1 {
			t.Errorf("quiet device %+v", st)
		}
	})
}

// The scenario of issue #13 with its numbers: budget 2 MiB, device budget
// 1 MiB, the cloud down; a quiet device has 85 messages acknowledged, then
// three devices send 464 messages of 200 kB between them. The quiet device
// (≈ 93 kB, far within 2 MiB ÷ 4) keeps all 85. Before the fix it kept 0.
func TestContractIssue13Flood(t *testing.T) {
	forEachImpl(t, func(t *testing.T, open func(testing.TB, spool.Options) queue) {
		q := open(t, spool.Options{Budget: 2 << 20, DeviceBudget: 1 << 20})
		quiet := dev(0)
		for range 85 {
			mustAppend(t, q, quiet, spool.Message{Topic: "/pk/dev0000/user/data", Payload: make([]byte, 1000), QoS: 1})
		}
		big := make([]byte, 200_000)
		for i := range 464 {
			mustAppend(t, q, dev(1+i%3), spool.Message{Topic: "/pk/flood/user/data", Payload: big, QoS: 1})
			if tot := q.Totals(); tot.Bytes > 2<<20 {
				t.Fatalf("%d bytes, budget %d", tot.Bytes, 2<<20)
			}
		}
		kept := len(readAll(t, q, quiet))
		tot := q.Totals()
		t.Logf("quiet device kept %d of 85; flooders kept %d; overflow drops %d", kept, tot.Depth-kept, tot.Dropped[spool.ReasonOverflow])
		if kept != 85 || q.Stats(quiet).Dropped[spool.ReasonOverflow] != 0 {
			t.Errorf("quiet device kept %d of 85 (dropped %d)", kept, q.Stats(quiet).Dropped[spool.ReasonOverflow])
		}
		if got, want := tot.Dropped[spool.ReasonOverflow], uint64(464+85-tot.Depth); got != want {
			t.Errorf("%d overflow drops counted, %d messages gone", got, want)
		}
	})
}
