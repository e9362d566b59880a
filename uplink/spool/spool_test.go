package spool_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink/spool"
)

// appendConcurrently appends n messages for device d from several
// goroutines (order between them unspecified) and returns the seqs.
func appendConcurrently(t testing.TB, s *spool.Spool, d secrets.DeviceID, n, workers int, payload func(i int) []byte) []uint64 {
	t.Helper()
	var next atomic.Int64
	var mu sync.Mutex
	var out []uint64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				m := msg("")
				m.Payload = payload(i)
				seq, err := s.Append(context.Background(), d, m)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				out = append(out, seq)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	slices.Sort(out)
	return out
}

func TestSpoolRestartKeepsMessagesAndSeqs(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", "spool.db")
	clk := newFakeClock()
	o := spool.Options{Now: clk.Now}
	s, err := spool.Open(path, o)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 30 {
		m := msg(fmt.Sprintf("m%02d", i))
		m.QoS = byte(i % 2)
		mustAppend(t, s, dev(i%3), m)
		clk.Advance(time.Second)
	}
	for _, seq := range []uint64{1, 4, 13, 7} { // device 0: 1,4,7,13 acked
		if err := s.Ack(dev(0), seq); err != nil {
			t.Fatal(err)
		}
	}
	ms := readAll(t, s, dev(1))
	if err := s.DeadLetter(dev(1), ms[2].Seq, "refused topic"); err != nil {
		t.Fatal(err)
	}
	before := map[secrets.DeviceID][]spool.Message{}
	for d := range 3 {
		before[dev(d)] = readAll(t, s, dev(d))
	}
	wantTotals := s.Totals()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = mustOpen(t, path, o)
	for d := range 3 {
		got := readAll(t, s, dev(d))
		want := before[dev(d)]
		if len(got) != len(want) {
			t.Fatalf("device %d after restart: %v, want %v", d, seqs(got), seqs(want))
		}
		for i := range got {
			g, w := got[i], want[i]
			if g.Seq != w.Seq || g.Topic != w.Topic || !bytes.Equal(g.Payload, w.Payload) || g.QoS != w.QoS || !g.Received.Equal(w.Received) {
				t.Errorf("device %d message %d: got %+v, want %+v", d, i, g, w)
			}
		}
	}
	tot := s.Totals()
	if tot.Depth != wantTotals.Depth || tot.Bytes != wantTotals.Bytes || tot.DeadLetters != wantTotals.DeadLetters ||
		tot.DeadLetterBytes != wantTotals.DeadLetterBytes || tot.Dropped[spool.ReasonDeadLetter] != 1 || tot.Devices != 3 {
		t.Errorf("totals after restart %+v, before %+v", tot, wantTotals)
	}
	if st := s.Stats(dev(0)); st.Depth != 6 || !st.Oldest.Equal(before[dev(0)][0].Received) {
		t.Errorf("device 0 stats after restart %+v", st)
	}
	if dls, err := s.DeadLetters(dev(1)); err != nil || len(dls) != 1 || dls[0].Seq != ms[2].Seq || dls[0].Reason != "refused topic" {
		t.Errorf("dead letters after restart %+v, %v", dls, err)
	}
	if seq := mustAppend(t, s, dev(0), msg("after restart")); seq != 31 {
		t.Errorf("first seq after restart %d, want 31", seq)
	}

	// Empty the spool entirely: seqs are still never reused.
	for d := range 3 {
		if err := s.Remove(dev(d)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := mustOpen(t, path, o)
	if tot := s2.Totals(); tot.Depth != 0 || tot.Devices != 0 || tot.DeadLetters != 0 {
		t.Errorf("totals after removing everything %+v", tot)
	}
	if seq := mustAppend(t, s2, dev(0), msg("x")); seq != 32 {
		t.Errorf("seq after emptying the spool and restarting %d, want 32", seq)
	}
}

// Thousands of deletes per transaction (acks in arbitrary order, a purge)
// delete exactly the right keys.
func TestSpoolManyDeletes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spool.db")
	s := mustOpen(t, path, spool.Options{})
	a, b, c := dev(1), dev(2), dev(3)
	var wg sync.WaitGroup
	var seqA, seqB, seqC []uint64
	wg.Go(func() { seqA = appendConcurrently(t, s, a, 3000, 48, payload200) })
	wg.Go(func() { seqB = appendConcurrently(t, s, b, 2000, 48, payload200) })
	wg.Go(func() { seqC = appendConcurrently(t, s, c, 100, 4, payload200) })
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	// Ack all of a except every 7th, in random order, then one commit.
	var keep, ack []uint64
	for i, seq := range seqA {
		if i%7 == 0 {
			keep = append(keep, seq)
		} else {
			ack = append(ack, seq)
		}
	}
	rand.Shuffle(len(ack), func(i, j int) { ack[i], ack[j] = ack[j], ack[i] })
	commits := s.Totals().Commits
	for _, seq := range ack {
		if err := s.Ack(a, seq); err != nil {
			t.Fatal(err)
		}
	}
	if got := seqs(readAll(t, s, a)); !slices.Equal(got, keep) {
		t.Fatalf("device a after acks: %d messages, want %d", len(got), len(keep))
	}
	syncQ(t, s)
	t.Logf("%d acks committed in %d transactions", len(ack), s.Totals().Commits-commits)
	if n, err := s.Purge(b); err != nil || n != len(seqB) {
		t.Fatalf("purge = %d, %v, want %d", n, err, len(seqB))
	}
	check := func(s *spool.Spool) {
		t.Helper()
		if got := seqs(readAll(t, s, a)); !slices.Equal(got, keep) {
			t.Errorf("device a: %d messages, want %d", len(got), len(keep))
		}
		if got := readAll(t, s, b); len(got) != 0 {
			t.Errorf("device b after purge: %d messages", len(got))
		}
		if got := seqs(readAll(t, s, c)); !slices.Equal(got, seqC) {
			t.Errorf("device c: %d messages, want %d", len(got), len(seqC))
		}
		size := spool.Size(spool.Message{Topic: "/pk/dev/user/data", Payload: payload200(0)})
		if tot := s.Totals(); tot.Depth != len(keep)+len(seqC) || tot.Bytes != int64(len(keep)+len(seqC))*size {
			t.Errorf("totals depth %d bytes %d, want %d %d", tot.Depth, tot.Bytes, len(keep)+len(seqC), int64(len(keep)+len(seqC))*size)
		}
	}
	check(s)
	tot := s.Totals()
	var inHist uint64
	for _, b := range tot.Commit.Buckets {
		inHist += b.Count
	}
	if tot.Commits == 0 || inHist != tot.Commits+tot.CommitErrors || tot.Commit.Max < tot.Commit.Avg || tot.Commit.Avg <= 0 {
		t.Errorf("commit statistics %+v", tot.Commit)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	check(mustOpen(t, path, spool.Options{}))
}

// fillUntilFull appends from several goroutines until appends fail with
// ErrDiskFull, and returns the acknowledged messages by seq.
func fillUntilFull(t *testing.T, s *spool.Spool) map[uint64]spool.Message {
	t.Helper()
	var mu sync.Mutex
	stored := map[uint64]spool.Message{}
	var full atomic.Bool
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Go(func() {
			for i := 0; !full.Load(); i++ {
				m := msg(fmt.Sprintf("w%d-%d-%s", w, i, strings.Repeat("p", 200)))
				seq, err := s.Append(context.Background(), dev(w), m)
				switch {
				case errors.Is(err, spool.ErrDiskFull):
					full.Store(true)
				case err != nil:
					t.Errorf("append: %v", err)
					full.Store(true)
				default:
					mu.Lock()
					stored[seq] = m
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	return stored
}

func checkStored(t *testing.T, s *spool.Spool, want map[uint64]spool.Message) {
	t.Helper()
	got := 0
	for w := range 16 {
		for _, m := range readAll(t, s, dev(w)) {
			exp, ok := want[m.Seq]
			if !ok {
				continue // committed, but its Append failed or was not counted
			}
			if !bytes.Equal(m.Payload, exp.Payload) {
				t.Fatalf("seq %d payload %q, want %q", m.Seq, m.Payload, exp.Payload)
			}
			got++
		}
	}
	if got != len(want) {
		t.Fatalf("%d of %d acknowledged messages readable", got, len(want))
	}
}

// A full disk, simulated by bbolt's MaxSize: appends are refused with
// ErrDiskFull, everything stored stays intact and readable (also after a
// restart), and appends work again once acknowledgements free space.
func TestSpoolDiskFullMaxFileSize(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spool.db")
	o := spool.Options{MaxFileSize: 1 << 20, DiskFullBackoff: time.Hour}
	s, err := spool.Open(path, o)
	if err != nil {
		t.Fatal(err)
	}
	stored := fillUntilFull(t, s)
	if len(stored) < 1000 {
		t.Fatalf("only %d messages fit in 1 MiB", len(stored))
	}
	tot := s.Totals()
	if !tot.DiskFull || tot.FileSize > 1<<20 || tot.CommitErrors == 0 || !strings.Contains(tot.LastError, "maximum") {
		t.Errorf("totals after disk full: %+v", tot)
	}
	// Fail fast while full, naming the cause.
	_, err = s.Append(context.Background(), dev(0), msg("refused"))
	if !errors.Is(err, spool.ErrDiskFull) || !strings.Contains(err.Error(), path) {
		t.Errorf("append while full: %v", err)
	}
	checkStored(t, s, stored)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = mustOpen(t, path, o)
	checkStored(t, s, stored)
	if tot := s.Totals(); tot.Depth < len(stored) {
		t.Errorf("after restart: depth %d, want at least %d", tot.Depth, len(stored))
	}
	// Acknowledge half: the freed pages take new messages.
	acked := 0
	for w := range 16 {
		ms := readAll(t, s, dev(w))
		for _, m := range ms[:len(ms)/2] {
			if err := s.Ack(dev(w), m.Seq); err != nil {
				t.Fatal(err)
			}
			delete(stored, m.Seq)
			acked++
		}
	}
	syncQ(t, s)
	for i := range 100 {
		m := msg(fmt.Sprintf("after space returned %d", i))
		seq, err := s.Append(context.Background(), dev(0), m)
		if err != nil {
			t.Fatalf("append %d after acknowledging %d messages: %v", i, acked, err)
		}
		stored[seq] = m
	}
	checkStored(t, s, stored)
	if s.Totals().DiskFull {
		t.Error("still reported full")
	}
}

func TestSpoolLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spool.db")
	mustOpen(t, path, spool.Options{})
	start := time.Now()
	_, err := spool.Open(path, spool.Options{LockTimeout: 50 * time.Millisecond})
	if !errors.Is(err, spool.ErrLocked) {
		t.Fatalf("second open: %v, want ErrLocked", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("second open took %v", time.Since(start))
	}
}

func TestSpoolNotASpool(t *testing.T) {
	dir := t.TempDir()
	// A bbolt file of someone else (e.g. the registry path by mistake).
	other := filepath.Join(dir, "other.db")
	db, err := bolt.Open(other, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket([]byte("meta"))
		if err != nil {
			return err
		}
		return b.Put([]byte("magic"), []byte("edgegw-registry"))
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	empty := filepath.Join(dir, "empty.db")
	text := filepath.Join(dir, "text.db")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(text, bytes.Repeat([]byte("not a database\n"), 1000), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path string
		want error
	}{
		{other, spool.ErrNotSpool},
		{empty, spool.ErrNotSpool},
		{text, spool.ErrCorrupt},
		{dir, spool.ErrNotSpool},
	} {
		before, _ := os.ReadFile(tc.path)
		_, err := spool.Open(tc.path, spool.Options{})
		if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.path) {
			t.Errorf("open %s: %v, want %v naming the file", filepath.Base(tc.path), err, tc.want)
		}
		if after, _ := os.ReadFile(tc.path); !bytes.Equal(before, after) {
			t.Errorf("open %s modified the file", filepath.Base(tc.path))
		}
	}
}

// Close lets the writer finish what it accepted: every Append that
// returned a seq is in the file, the others failed with ErrClosed.
func TestSpoolCloseFinishesInflight(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spool.db")
	s, err := spool.Open(path, spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	stored := map[uint64]bool{}
	var wg sync.WaitGroup
	var started atomic.Int64
	for w := range 32 {
		wg.Go(func() {
			for {
				seq, err := s.Append(context.Background(), dev(w), msg("x"))
				if errors.Is(err, spool.ErrClosed) {
					return
				}
				if err != nil {
					t.Errorf("append: %v", err)
					return
				}
				started.Add(1)
				mu.Lock()
				stored[seq] = true
				mu.Unlock()
			}
		})
	}
	testutil.Eventually(t, 10*time.Second, func() bool { return started.Load() > 200 }, "appends running")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	s = mustOpen(t, path, spool.Options{})
	found := 0
	for w := range 32 {
		for _, m := range readAll(t, s, dev(w)) {
			if stored[m.Seq] {
				found++
			}
		}
	}
	if found != len(stored) {
		t.Errorf("%d of %d acknowledged appends found after close", found, len(stored))
	}
}

// Reopening with a smaller budget drops the oldest down to it.
func TestSpoolShrunkBudget(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spool.db")
	s, err := spool.Open(path, spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		mustAppend(t, s, dev(i%4), msg(fmt.Sprintf("%03d", i)))
	}
	s.Close()
	size := spool.Size(msg("000"))
	s = mustOpen(t, path, spool.Options{Budget: 10 * size})
	testutil.Eventually(t, 10*time.Second, func() bool { return s.Totals().Bytes <= 10*size }, "budget enforced")
	tot := s.Totals()
	if tot.Depth != 10 || tot.Dropped[spool.ReasonOverflow] != 90 {
		t.Errorf("totals %+v", tot)
	}
	var kept []string
	for d := range 4 {
		kept = append(kept, payloads(readAll(t, s, dev(d)))...)
	}
	slices.Sort(kept)
	if want := []string{"090", "091", "092", "093", "094", "095", "096", "097", "098", "099"}; !slices.Equal(kept, want) {
		t.Errorf("kept %v, want the newest %v", kept, want)
	}
}

// A drained file is compacted on Open when most of it is free; a full one
// is not. Seqs continue across compaction.
func TestSpoolCompaction(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spool.db")
	s, err := spool.Open(path, spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	big := func(i int) []byte { return bytes.Repeat([]byte{byte(i)}, 1000) }
	last := appendConcurrently(t, s, dev(1), 12000, 128, big)
	mustAppend(t, s, dev(2), msg("survivor"))
	s.Close()
	fi, _ := os.Stat(path)
	full := fi.Size()

	// Full: nothing to gain.
	s, err = spool.Open(path, spool.Options{CompactMinSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if c := s.Totals().Compaction; c != nil {
		t.Errorf("full file compacted: %+v", c)
	}
	for _, m := range readAll(t, s, dev(1)) {
		if err := s.Ack(dev(1), m.Seq); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()

	s = mustOpen(t, path, spool.Options{CompactMinSize: 1 << 20})
	c := s.Totals().Compaction
	if c == nil {
		t.Fatalf("drained file of %d bytes not compacted", full)
	}
	fi, _ = os.Stat(path)
	t.Logf("compaction: %d KiB -> %d KiB in %v", c.Before>>10, c.After>>10, c.Took)
	if c.Before != full || c.After != fi.Size() || c.After > c.Before/4 {
		t.Errorf("compaction %+v, file now %d bytes", c, fi.Size())
	}
	if got := payloads(readAll(t, s, dev(2))); !slices.Equal(got, []string{"survivor"}) {
		t.Errorf("after compaction: %q", got)
	}
	if seq := mustAppend(t, s, dev(1), msg("next")); seq <= last[len(last)-1]+1 {
		t.Errorf("seq after compaction %d, want above %d", seq, last[len(last)-1]+1)
	}
	if _, err := os.Stat(path + ".compact"); !os.IsNotExist(err) {
		t.Errorf("temporary compaction file left: %v", err)
	}
}
