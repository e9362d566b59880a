package spool

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/secrets"
	bolt "go.etcd.io/bbolt"
)

// seqQueue against a plain sorted slice, with removals anywhere and
// re-insertions (the rollback path).
func TestSeqQueueModel(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var q seqQueue
	var model []uint64
	next := uint64(1)
	for step := range 200000 {
		switch op := r.IntN(10); {
		case op < 4:
			q.push(next)
			model = append(model, next)
			next += 1 + uint64(r.IntN(3))
		case op < 8 && len(model) > 0:
			// Mostly near the front, like acknowledgements.
			i := min(r.IntN(len(model)), r.IntN(8))
			seq := model[i]
			if !q.remove(seq) {
				t.Fatalf("step %d: remove(%d) not found", step, seq)
			}
			model = slices.Delete(model, i, i+1)
			if r.IntN(4) == 0 { // undo
				q.insert(seq)
				model = slices.Insert(model, i, seq)
			}
		case op == 8:
			if q.remove(next + 100) {
				t.Fatalf("step %d: removed a seq never pushed", step)
			}
		case op == 9 && len(model) > 0:
			q.popBack()
			model = model[:len(model)-1]
		}
		if q.len() != len(model) || (len(model) > 0 && q.front() != model[0]) {
			t.Fatalf("step %d: len %d front %v, model len %d", step, q.len(), q.live()[:min(3, q.len())], len(model))
		}
	}
	if !slices.Equal(q.live(), model) {
		t.Fatal("final content differs from the model")
	}
}

type ledgerSnapshot struct {
	t    ledgerTotals
	seq  uint64
	devs map[secrets.DeviceID]string
}

func snapshot(l *ledger) ledgerSnapshot {
	s := ledgerSnapshot{t: l.t, seq: l.seq, devs: map[secrets.DeviceID]string{}}
	for id, d := range l.devs {
		s.devs[id] = fmt.Sprintf("depth %d bytes %d first %d oldest %v dropped %v dl %d/%d q %v heap %v",
			d.depth, d.bytes, d.firstSeq, d.oldest.UnixNano(), d.dropped, d.dlCount, d.dlBytes, d.q.live(), d.heapIdx >= 0)
	}
	return s
}

// A transaction that fails leaves the ledger and the device indexes
// exactly as before it: appends, acknowledgements, drops, a purge, a
// dead letter and a removal, all rolled back.
func TestLedgerRollback(t *testing.T) {
	var clockMu sync.Mutex
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tick := func() time.Time {
		clockMu.Lock()
		defer clockMu.Unlock()
		clock = clock.Add(time.Second)
		return clock
	}
	// This test is the writer: no writer goroutine until the end.
	s, err := open(filepath.Join(t.TempDir(), "spool.db"), Options{
		DeviceBudget: 8 * Size(Message{Topic: "t", Payload: []byte("xx")}),
		Now: func() time.Time {
			clockMu.Lock()
			defer clockMu.Unlock()
			return clock
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ids := []secrets.DeviceID{{ProductKey: "pk", DeviceName: "a"}, {ProductKey: "pk", DeviceName: "b"}, {ProductKey: "pk", DeviceName: "c"}}
	var batch []*request
	var dones []chan result
	for i := range 18 {
		m := Message{Topic: "t", Payload: []byte("xx"), Received: tick()}
		r, done := withReply(&request{op: opAppend, device: ids[i%3], val: encodeMessage(ids[i%3].String(), &m), size: Size(m), received: m.Received})
		batch, dones = append(batch, r), append(dones, done)
	}
	if carry, err := s.commit(batch); err != nil || len(carry) != 0 {
		t.Fatalf("commit: %v, carry %d", err, len(carry))
	}
	for _, done := range dones {
		if res := <-done; res.err != nil {
			t.Fatal(res.err)
		}
	}
	before := snapshot(s.led)

	boom := errors.New("boom")
	now := tick()
	err = s.db.Update(func(tx *bolt.Tx) error {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.led.begin()
		st := newTxStore(s.led, tx)
		if _, err := s.applyAcks(st, ackSet{ids[0]: {4, 1}}); err != nil {
			return err
		}
		for range 5 { // overflow drops of device b's oldest
			r := &request{op: opAppend, device: ids[1], val: encodeMessage(ids[1].String(), &Message{Topic: "t", Payload: []byte("xx"), Received: now}), size: Size(Message{Topic: "t", Payload: []byte("xx")}), received: now}
			if err := s.apply(st, r, &outcome{}, now); err != nil {
				return err
			}
		}
		for _, r := range []*request{
			{op: opPurge, device: ids[2]},
			{op: opDeadLetter, device: ids[1], seq: 8, val: []byte("poison")},
			{op: opRemove, device: ids[0]},
			{op: opAppend, device: secrets.DeviceID{ProductKey: "pk", DeviceName: "new"}, val: encodeMessage("pk/new", &Message{Topic: "t", Received: now}), size: Size(Message{Topic: "t"}), received: now},
		} {
			if err := s.apply(st, r, &outcome{}, now); err != nil {
				return err
			}
		}
		if err := s.writeDevices(st); err != nil {
			return err
		}
		if after := snapshot(s.led); fmt.Sprint(after) == fmt.Sprint(before) {
			return errors.New("the transaction changed nothing")
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("update: %v", err)
	}
	s.led.rollback()
	after := snapshot(s.led)
	if fmt.Sprint(after.t, after.seq) != fmt.Sprint(before.t, before.seq) {
		t.Errorf("totals after rollback %+v seq %d, before %+v seq %d", after.t, after.seq, before.t, before.seq)
	}
	for id, want := range before.devs {
		if got := after.devs[id]; got != want {
			t.Errorf("%s after rollback:\n got %s\nwant %s", id, got, want)
		}
	}
	if len(after.devs) != len(before.devs) {
		t.Errorf("devices after rollback %v, before %v", after.devs, before.devs)
	}
	// And the spool still works from there.
	go s.run()
	defer s.Close()
	for _, id := range ids {
		ms, err := s.Read(id, 0, 100)
		if err != nil || len(ms) != 6 {
			t.Fatalf("read %s after rollback: %d messages, %v", id, len(ms), err)
		}
	}
	seq, err := s.Append(context.Background(), ids[0], Message{Topic: "t", Payload: []byte("xx")})
	if err != nil || seq != 19 {
		t.Fatalf("append after rollback: seq %d, %v; want 19", seq, err)
	}
}

// Purge and Remove of a queue longer than purgeChunk take several
// commits, and keep messages appended after the request.
func TestPurgeInChunks(t *testing.T) {
	saved := purgeChunk
	purgeChunk = 7
	t.Cleanup(func() { purgeChunk = saved })
	s, err := Open(filepath.Join(t.TempDir(), "spool.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a, b := secrets.DeviceID{ProductKey: "pk", DeviceName: "a"}, secrets.DeviceID{ProductKey: "pk", DeviceName: "b"}
	for i := range 50 {
		if _, err := s.Append(context.Background(), a, Message{Topic: "t", Payload: []byte{byte(i)}}); err != nil {
			t.Fatal(err)
		}
		if i%10 == 0 {
			if _, err := s.Append(context.Background(), b, Message{Topic: "t"}); err != nil {
				t.Fatal(err)
			}
		}
	}
	commits := s.Totals().Commits
	n, err := s.Purge(a)
	if err != nil || n != 50 {
		t.Fatalf("purge = %d, %v", n, err)
	}
	if c := s.Totals().Commits - commits; c < 8 {
		t.Errorf("purge of 50 in chunks of 7 took %d commits", c)
	}
	if st := s.Stats(a); st.Depth != 0 || st.Dropped[ReasonPurge] != 50 {
		t.Errorf("stats %+v", st)
	}
	for range 20 {
		if _, err := s.Append(context.Background(), b, Message{Topic: "t"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Remove(b); err != nil {
		t.Fatal(err)
	}
	if tot := s.Totals(); tot.Depth != 0 || tot.Devices != 1 || tot.Dropped[ReasonPurge] != 75 {
		t.Errorf("totals %+v", tot)
	}
}

// Dead letters written and cleared in the same transaction: the pages are
// modified before the deleting cursor runs, the case where bbolt's
// Cursor.Delete followed by Next skips keys (reproduced with v1.5.0: 5 of
// 10 visited). purgeDead collects first, so all go.
func TestPurgeDeadInOneTransaction(t *testing.T) {
	s, err := open(filepath.Join(t.TempDir(), "spool.db"), Options{DeadLetterMax: 1000})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		go s.run()
		s.Close()
	}()
	a, b := secrets.DeviceID{ProductKey: "pk", DeviceName: "a"}, secrets.DeviceID{ProductKey: "pk", DeviceName: "b"}
	var batch []*request
	for i := range 300 {
		for _, d := range []secrets.DeviceID{a, b} {
			m := Message{Topic: "t", Payload: []byte{byte(i)}, Received: time.Now()}
			r, _ := withReply(&request{op: opAppend, device: d, val: encodeMessage(d.String(), &m), size: Size(m), received: m.Received})
			batch = append(batch, r)
		}
	}
	if _, err := s.commit(batch); err != nil {
		t.Fatal(err)
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.led.begin()
		st := newTxStore(s.led, tx)
		for _, d := range []secrets.DeviceID{a, b} {
			for _, seq := range slices.Clone(s.led.devs[d].q.live()) {
				if _, err := st.deadLetter(s.led.devs[d], seq, "poison", time.Now()); err != nil {
					return err
				}
			}
		}
		n, err := st.purgeDead(s.led.devs[a])
		if err != nil {
			return err
		}
		if n != 300 {
			return fmt.Errorf("purged %d dead letters, want 300", n)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	s.led.commit(time.Now())
	count := func(d secrets.DeviceID) (n int) {
		s.db.View(func(tx *bolt.Tx) error {
			c := tx.Bucket(bucketDead).Cursor()
			p := devPrefix(d)
			for k, _ := c.Seek(p); k != nil && isDevKey(k, p); k, _ = c.Next() {
				n++
			}
			return nil
		})
		return n
	}
	if na, nb := count(a), count(b); na != 0 || nb != 300 {
		t.Errorf("dead letters left: a %d (want 0), b %d (want 300)", na, nb)
	}
}

// Close does not wait for a large backlog of deletions: past its ack
// budget it leaves the acknowledged messages in the file, to be sent again
// after a restart (duplicates), and returns without error. Within the
// budget it deletes them all.
func TestCloseAbandonsAckBacklog(t *testing.T) {
	for _, tc := range []struct {
		name  string
		flush time.Duration
	}{
		{"within budget", time.Minute},
		{"budget spent", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "spool.db")
			var logs testutil.SyncBuffer
			opts := Options{SweepInterval: time.Hour, CloseTimeout: 10 * time.Second,
				Logger: slog.New(slog.NewTextHandler(&logs, nil))}
			s, err := Open(path, opts)
			if err != nil {
				t.Fatal(err)
			}
			s.ackFlush = tc.flush
			d := secrets.DeviceID{ProductKey: "pk", DeviceName: "dn"}
			var seqs []uint64
			for i := range 50 {
				seq, err := s.Append(context.Background(), d, Message{Topic: "/pk/dn/user/x", QoS: 1, Payload: []byte{byte(i)}})
				if err != nil {
					t.Fatal(err)
				}
				seqs = append(seqs, seq)
			}
			// Acknowledge all but the last two without waking the writer:
			// the deletions are still pending when Close begins.
			for _, seq := range seqs[:48] {
				if _, err := s.stageAck(d, seq); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			s, err = Open(path, opts)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			ms, err := s.Read(d, 0, 100)
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case tc.flush > 0 && len(ms) != 2:
				t.Fatalf("%d messages queued after reopening, want 2 (every acknowledgement applied)", len(ms))
			case tc.flush == 0 && len(ms) > 2:
				// The writer may commit some staged acknowledgements before
				// Close begins (it does not wait to be woken); the rest
				// must be abandoned, kept in the file, and said so.
				if want := fmt.Sprintf("messages=%d ", len(ms)-2); !strings.Contains(logs.String(), want) {
					t.Fatalf("%d messages queued after reopening, but the log does not say %d were abandoned:\n%s", len(ms), len(ms)-2, logs.String())
				}
			case len(ms) < 2:
				t.Fatalf("%d messages queued after reopening: unacknowledged messages were lost", len(ms))
			}
			// Whatever is left is the newest messages, in order: no gap.
			for i, m := range ms {
				if want := seqs[len(seqs)-len(ms)+i]; m.Seq != want {
					t.Fatalf("message %d after reopening has seq %d, want %d", i, m.Seq, want)
				}
			}
		})
	}
}

// withReply gives r a reply channel, as Spool.do does, for tests that call
// commit themselves.
func withReply(r *request) (*request, chan result) {
	done := make(chan result, 1)
	r.reply = func(res result) { done <- res }
	return r, done
}
