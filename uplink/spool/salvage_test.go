package spool_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/uplink/spool"
)

// The scenario of issue #13: 449 acknowledged messages queued (the cloud
// down), spool.db truncated to half. The file is moved aside, what can be
// read is recovered in order with its seqs, and the rest is counted as
// dropped for ReasonCorrupt and logged with the moved-aside path.
func TestSpoolSalvageTruncated(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spool.db")
	s, err := spool.Open(path, spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	const total = 449
	want := map[uint64][]byte{}
	for i := range total {
		p := bytes.Repeat([]byte{byte(i)}, 700+i%300)
		copy(p, fmt.Sprintf("message %d of %d", i, total))
		seq := mustAppend(t, s, dev(i%3), spool.Message{Topic: "/pk/dev/user/data", Payload: p, QoS: 1})
		want[seq] = p
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, fi.Size()/2); err != nil {
		t.Fatal(err)
	}
	if _, err := spool.Open(path, spool.Options{}); !errors.Is(err, spool.ErrCorrupt) {
		t.Fatalf("open truncated: %v, want ErrCorrupt", err)
	}

	var logs testutil.SyncBuffer
	o := spool.Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))}
	rep, err := spool.Salvage(path, o, time.Now())
	if err != nil {
		t.Fatalf("salvage: %v", err)
	}
	if _, err := os.Stat(rep.MovedTo); err != nil || !strings.HasPrefix(rep.MovedTo, path+".corrupt-") {
		t.Errorf("moved aside to %q: %v", rep.MovedTo, err)
	}
	t.Logf("salvage of %d messages: %+v", total, rep)
	q := mustOpen(t, path, o)
	got := 0
	for d := range 3 {
		ms := readAll(t, q, dev(d))
		for i, m := range ms {
			if !bytes.Equal(m.Payload, want[m.Seq]) {
				t.Fatalf("device %d: seq %d recovered with a different payload", d, m.Seq)
			}
			if i > 0 && m.Seq <= ms[i-1].Seq {
				t.Fatalf("device %d: seqs out of order: %v", d, seqs(ms))
			}
			if (m.Seq-1)%3 != uint64(d) {
				t.Fatalf("device %d got seq %d of another device", d, m.Seq)
			}
		}
		got += len(ms)
	}
	if got == 0 || got != rep.Recovered {
		t.Errorf("recovered %d messages, report says %d", got, rep.Recovered)
	}
	tot := q.Totals()
	if uint64(got)+tot.Dropped[spool.ReasonCorrupt] != total || rep.Lost != tot.Dropped[spool.ReasonCorrupt] {
		t.Errorf("recovered %d + counted corrupt %d (report %d) != %d", got, tot.Dropped[spool.ReasonCorrupt], rep.Lost, total)
	}
	if !strings.Contains(logs.String(), rep.MovedTo) || !strings.Contains(logs.String(), fmt.Sprintf("lost=%d", rep.Lost)) {
		t.Errorf("no log line naming %s and the count:\n%s", rep.MovedTo, logs.String())
	}
	// A new message continues the seq counter, never reusing one.
	if seq := mustAppend(t, q, dev(0), msg("new")); seq <= total {
		t.Errorf("new seq %d reuses the damaged file's", seq)
	}
}

// A damaged page inside the message log: the rest of the tree is read
// through the root, the damaged part's messages are counted, and each
// device keeps its order.
func TestSpoolSalvageDamagedLeaf(t *testing.T) {
	golden, pageSize := buildSpoolFile(t) // 8 devices × 300 messages
	path := copyFile(t, golden)
	_, child := messagesRoot(t, path, pageSize)
	patch(t, path, int64(child)*int64(pageSize), make([]byte, pageSize))
	if _, err := spool.Open(path, spool.Options{}); !errors.Is(err, spool.ErrCorrupt) {
		t.Fatalf("open damaged: %v, want ErrCorrupt", err)
	}
	rep, err := spool.Salvage(path, spool.Options{}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", rep)
	q := mustOpen(t, path, spool.Options{})
	got := 0
	for d := range 8 {
		ms := readAll(t, q, dev(d))
		for i := range ms {
			if i > 0 && ms[i].Seq <= ms[i-1].Seq {
				t.Fatalf("device %d out of order: %v", d, seqs(ms))
			}
		}
		got += len(ms)
	}
	lost := q.Totals().Dropped[spool.ReasonCorrupt]
	if got != rep.Recovered || got == 0 || lost == 0 || uint64(got)+lost != 8*300 {
		t.Errorf("recovered %d (report %d) + lost %d != %d", got, rep.Recovered, lost, 8*300)
	}
}

// When the page holding the message log's header (its seq counter) is
// gone, messages newer than every copy found can vanish without a trace:
// the salvage says its count is only a lower bound, loudly, rather than
// reporting a small number as if it were exact.
func TestSpoolSalvageHeaderLostIsLowerBound(t *testing.T) {
	golden, pageSize := buildSpoolFile(t)
	path := copyFile(t, golden)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// Both meta pages name the root of the bucket tree (at offset 32 of a
	// meta page: page header 16 bytes, magic, version, page size, flags);
	// zero what they point at.
	for _, meta := range []int{0, 1} {
		root := binary.LittleEndian.Uint64(b[meta*pageSize+32:])
		patch(t, path, int64(root)*int64(pageSize), make([]byte, pageSize))
	}
	var logs testutil.SyncBuffer
	rep, err := spool.Salvage(path, spool.Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", rep)
	if !rep.LostAtLeast {
		t.Fatalf("the log's header was destroyed, but the report claims an exact count: %+v", rep)
	}
	if !strings.Contains(logs.String(), "lost count is a lower bound") {
		t.Errorf("no log line saying the count is a lower bound:\n%s", logs.String())
	}
}
