package spool

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/edgegw/edgegw/secrets"
)

// A transaction that is built (its seqs indexed) but not committed does
// not raise the watermark: Read cannot see its messages yet, and a drain
// that took them for queued would skip them. After a rollback the next
// append reuses the seq, which is still above the watermark.
func TestWatermarkIgnoresUncommittedTransaction(t *testing.T) {
	// This test is the writer: no writer goroutine until the end.
	s, err := open(filepath.Join(t.TempDir(), "spool.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	d := secrets.DeviceID{ProductKey: "pk", DeviceName: "dev"}
	m1 := Message{Topic: "t", Payload: []byte("1"), Received: time.Now()}
	r1, done := withReply(&request{op: opAppend, device: d, val: encodeMessage(d.String(), &m1), size: Size(m1), received: m1.Received})
	if carry, err := s.commit([]*request{r1}); err != nil || len(carry) != 0 {
		t.Fatalf("commit: %v, carry %d", err, len(carry))
	}
	res := <-done
	if res.err != nil {
		t.Fatal(res.err)
	}
	committed := res.seq

	tx, err := s.db.Begin(true)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	m := Message{Topic: "t", Payload: []byte("2"), Received: now}
	var o outcome
	s.mu.Lock()
	s.led.begin()
	err = s.apply(newTxStore(s.led, tx), &request{op: opAppend, device: d, val: encodeMessage(d.String(), &m), size: Size(m), received: now}, &o, now)
	s.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if o.seq <= committed {
		t.Fatalf("building seq %d, committed %d", o.seq, committed)
	}
	w, err := s.Watermark(d)
	if err != nil {
		t.Fatal(err)
	}
	if w != committed {
		t.Errorf("watermark %d during an uncommitted transaction, want the committed %d", w, committed)
	}
	if ms, err := s.Read(d, committed, 10); err != nil || len(ms) != 0 {
		t.Errorf("read of the uncommitted message: %v, %v", ms, err)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	s.led.rollback()
	s.mu.Unlock()

	go s.run()
	defer s.Close()

	seq, err := s.Append(t.Context(), d, Message{Topic: "t", Payload: []byte("3"), QoS: 1})
	if err != nil {
		t.Fatal(err)
	}
	if seq <= w {
		t.Fatalf("append after the rollback got seq %d, not above the watermark %d", seq, w)
	}
	if w2, _ := s.Watermark(d); w2 != seq {
		t.Fatalf("watermark %d after committing seq %d", w2, seq)
	}
}
