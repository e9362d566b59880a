package spool

import (
	"time"

	"github.com/edgegw/edgegw/secrets"
)

// DeviceStats is the visible state of one device's queue.
type DeviceStats struct {
	Device secrets.DeviceID
	// Depth and Bytes are the queued messages and their Size total.
	Depth int
	Bytes int64
	// Oldest is the Received time of the oldest queued message (zero when
	// the queue is empty); OldestAge is Now minus Oldest.
	Oldest    time.Time
	OldestAge time.Duration
	// LastSeq is the highest Seq assigned to the device since Open, or of
	// its stored messages.
	LastSeq uint64
	// PendingAcks are acknowledgements accepted but not yet committed.
	// While a commit is being written, a message it deletes has already
	// left Depth but is still counted here, so Depth-PendingAcks is not
	// the number of unacknowledged messages (it can be too low).
	PendingAcks int
	// LastAck is when Ack was last called for the device (this process).
	LastAck time.Time
	// Dropped counts messages that left the queue unacknowledged, by
	// reason. All reasons are present.
	Dropped map[Reason]uint64
	// Rejected counts appends refused (ErrFull, ErrTooLarge).
	Rejected uint64
	// DeadLetters and DeadLetterBytes describe the device's dead letters;
	// DeadLettersEvicted counts those removed to respect the dead-letter
	// bounds.
	DeadLetters        int
	DeadLetterBytes    int64
	DeadLettersEvicted uint64
}

// Totals is the visible state of a whole queue.
type Totals struct {
	Devices      int // devices known (not removed)
	Depth        int
	Bytes        int64
	Budget       int64
	DeviceBudget int64
	Overflow     Overflow
	// Dropped sums DeviceStats.Dropped over all devices, by reason.
	Dropped            map[Reason]uint64
	Rejected           uint64
	DeadLetters        int
	DeadLetterBytes    int64
	DeadLettersEvicted uint64
	// Appended and Acked count messages stored and acknowledged since
	// the queue was opened.
	Appended uint64
	Acked    uint64

	// The fields below are zero for Mem.

	// Commits counts bbolt write transactions (each one fsync);
	// CommitErrors the failed ones. Commit describes their latency.
	Commits      uint64
	CommitErrors uint64
	Commit       Latency
	// LastError is the last commit error ("" if none). DiskFull is true
	// from a commit that failed for lack of space until appends commit
	// again: it does not blink off between retries while the disk is full.
	LastError string
	DiskFull  bool
	// FileSize is the size of the spool file in bytes.
	FileSize int64
	// Reserve is false while the spool's reserve of free pages is used up
	// (after a full disk; see Totals.DiskFull).
	Reserve bool
	// Compaction describes the compaction done by Open, if any.
	Compaction *Compaction
}

// Compaction reports what Open's compaction did.
type Compaction struct {
	Before, After int64 // file sizes in bytes
	Took          time.Duration
}

// Latency summarizes commit (write+fsync) durations.
type Latency struct {
	Last, Avg, Max time.Duration
	// Buckets is a histogram: Buckets[i].Count commits took at most
	// Buckets[i].UpTo and more than Buckets[i-1].UpTo; the last bucket
	// has UpTo 0 and holds everything slower.
	Buckets []LatencyBucket
}

// LatencyBucket is one histogram bucket of Latency.
type LatencyBucket struct {
	UpTo  time.Duration
	Count uint64
}

var latencyBounds = []time.Duration{
	500 * time.Microsecond, time.Millisecond, 2 * time.Millisecond, 5 * time.Millisecond,
	10 * time.Millisecond, 20 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond,
	250 * time.Millisecond, 500 * time.Millisecond, time.Second,
}

type latencyHist struct {
	n      uint64
	sum    time.Duration
	last   time.Duration
	max    time.Duration
	counts [12]uint64 // len(latencyBounds)+1
}

func (h *latencyHist) observe(d time.Duration) {
	h.n++
	h.sum += d
	h.last = d
	h.max = max(h.max, d)
	i := 0
	for i < len(latencyBounds) && d > latencyBounds[i] {
		i++
	}
	h.counts[i]++
}

func (h *latencyHist) snapshot() Latency {
	l := Latency{Last: h.last, Max: h.max, Buckets: make([]LatencyBucket, len(h.counts))}
	if h.n > 0 {
		l.Avg = h.sum / time.Duration(h.n)
	}
	for i := range h.counts {
		if i < len(latencyBounds) {
			l.Buckets[i].UpTo = latencyBounds[i]
		}
		l.Buckets[i].Count = h.counts[i]
	}
	return l
}

func reasonMap(c [numReasons]uint64) map[Reason]uint64 {
	m := make(map[Reason]uint64, numReasons)
	for i, r := range Reasons {
		m[r] = c[i]
	}
	return m
}
