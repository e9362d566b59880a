package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"time"

	"github.com/edgegw/edgegw/internal/boltcheck"
	bolt "go.etcd.io/bbolt"
)

// metaCorruptKey holds, in the meta bucket, the messages lost to damaged
// files that could not be attributed to a device (8 bytes BE). Open adds
// it to Totals().Dropped[ReasonCorrupt].
var metaCorruptKey = []byte("corrupt-lost")

// Salvaged says what Salvage recovered.
type Salvaged struct {
	MovedTo     string // where the damaged file now is
	Recovered   int    // messages recovered, with their seqs
	FromOrphans int    // of which found on pages the damaged tree no longer reached
	DeadLetters int    // dead letters recovered
	Devices     int    // device records (counters) recovered
	Lost        uint64 // messages known to be lost, counted as ReasonCorrupt
	// LostAtLeast is set when the message log's header (its seq
	// counter) could not be read: messages newer than every copy found
	// may be gone without a trace, so Lost is only a lower bound.
	LostAtLeast bool
}

// Salvage moves the damaged spool file at path aside (MoveAside) and
// builds a new spool file at path from what can be read of it, reading the
// damaged file only with bounds-checked reads (internal/boltcheck), never
// through bbolt, never writing to it.
//
// What is recovered: every message record whose checksum holds, with its
// seq (so each device's order is kept and seqs are never reused), found on
// the pages still reachable from the file's root, and on unreachable leaf
// pages (a subtree cut off by the damage) where the tree says the lost
// messages were; dead letters and device counters reachable from the root.
// Nothing is invented: a record that fails its checksum is not recovered.
// A message found only on an unreachable page older than its device's
// oldest reachable one was already delivered or dropped, and is skipped;
// where nothing of the tree is left, every intact record is recovered and
// already delivered ones may be sent again (duplicates, never losses).
//
// What is lost is counted as ReasonCorrupt, gateway-wide (the device of
// a message that cannot be read is unknown): damaged records, and the seqs
// of the damaged part of the message log that were not recovered — from
// the lowest to the highest seq the damaged part can hold (the log's seq
// counter when it survives, else the highest seq found). Seqs are one
// counter in arrival order, so the count is exact when nothing in the
// damaged part had been delivered yet (the cloud down: the case that
// matters), and an upper bound otherwise.
//
// Salvage logs one line with the counts and the moved-aside path. If the
// new file cannot be built, the damaged one stays moved aside and the
// error says so; Open then starts an empty spool.
func Salvage(path string, opts Options, now time.Time) (Salvaged, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return Salvaged{}, fmt.Errorf("salvage spool %s: %w", path, err)
	}
	aside, err := MoveAside(path, now)
	if err != nil {
		return Salvaged{}, err
	}
	rep := Salvaged{MovedTo: aside}
	sv, f, err := boltcheck.SalvageFile(aside)
	if err != nil {
		return rep, fmt.Errorf("salvage spool %s: %w", aside, err)
	}
	defer f.Close()
	r := salvageRead(sv)
	rep.Recovered, rep.FromOrphans, rep.DeadLetters, rep.Devices, rep.Lost, rep.LostAtLeast =
		len(r.msgs), r.fromOrphans, len(r.dead), len(r.devices), r.lost, !r.headerSeen
	if err := r.write(path, o); err != nil {
		o.Logger.Error("spool file is corrupt: moved aside; recovering its messages failed, starting empty",
			"moved_to", aside, "err", err)
		return rep, fmt.Errorf("salvage spool %s into %s: %w", aside, path, err)
	}
	o.Logger.Error("spool file is corrupt: moved aside; readable messages recovered, the rest counted as dropped (corrupt)",
		"moved_to", aside, "recovered", rep.Recovered, "from_unreferenced_pages", rep.FromOrphans,
		"lost", rep.Lost, "lost_is_lower_bound", rep.LostAtLeast, "dead_letters", rep.DeadLetters, "device_records", rep.Devices)
	if rep.LostAtLeast {
		o.Logger.Error("spool salvage: the message log's header was lost, so messages newer than every copy found may be gone without a trace; the lost count is a lower bound",
			"moved_to", aside, "lost_at_least", rep.Lost)
	}
	return rep, nil
}

type kv struct{ k, v []byte }

type salvageResult struct {
	msgs        map[uint64][]byte // seq → message record
	dead        []kv
	devices     []kv
	seqCounter  uint64
	lost        uint64
	fromOrphans int
	headerSeen  bool // the message log's bucket header (seq counter) was read
}

func salvageRead(sv *boltcheck.Salvager) *salvageResult {
	r := &salvageResult{msgs: make(map[uint64][]byte)}
	in := func(bucket [][]byte, name []byte) bool {
		return len(bucket) == 1 && string(bucket[0]) == string(name)
	}
	msgsSeen := false // the messages bucket header was reached
	var bad, prior uint64
	lowest := map[string]uint64{} // device → lowest reachable seq
	deadSeqs := map[uint64]bool{}
	lost := sv.Walk(func(bucket [][]byte, k, v []byte, isBucket bool) {
		switch {
		case len(bucket) == 0 && isBucket && string(k) == string(bucketMessages) && len(v) >= 16:
			msgsSeen = true
			r.seqCounter = max(r.seqCounter, binary.NativeEndian.Uint64(v[8:]))
		case in(bucket, bucketMessages) && !isBucket:
			m, err := parseMessage(v)
			if len(k) != 8 || err != nil {
				bad++
				return
			}
			seq := keySeq(k)
			r.msgs[seq] = clone(v)
			if l, ok := lowest[string(m.device)]; !ok || seq < l {
				lowest[string(m.device)] = seq
			}
		case in(bucket, bucketDead) && !isBucket:
			if _, seq, err := parseDeadKey(k); err == nil {
				if _, err := decodeDeadLetter(seq, v); err == nil {
					r.dead = append(r.dead, kv{clone(k), clone(v)})
					deadSeqs[seq] = true
				}
			}
		case in(bucket, bucketDevices) && !isBucket:
			var d devState
			if decodeDevice(v, &d) == nil {
				r.devices = append(r.devices, kv{clone(k), clone(v)})
			}
		case in(bucket, bucketMeta) && string(k) == string(metaCorruptKey) && len(v) == 8:
			prior = binary.BigEndian.Uint64(v)
		}
	})
	// The message log's lost ranges; the whole log if the walk never got
	// to its bucket.
	type span struct{ from, to []byte }
	var spans []span
	for _, l := range lost {
		switch {
		case in(l.Bucket, bucketMessages):
			spans = append(spans, span{l.From, l.To})
		case len(l.Bucket) == 0 && !msgsSeen:
			spans = append(spans, span{})
		}
	}
	if !msgsSeen && len(spans) == 0 {
		spans = append(spans, span{})
	}
	inSpan := func(seq uint64) bool {
		k := seqKey(seq)
		for _, s := range spans {
			if (s.from == nil || string(k) >= string(s.from)) && (s.to == nil || string(k) < string(s.to)) {
				return true
			}
		}
		return false
	}
	seen := map[uint64]bool{}
	maxSeen := r.seqCounter
	minOrphan := uint64(0)
	sv.Orphans(func(k, v []byte) {
		if len(k) != 8 {
			return
		}
		m, err := parseMessage(v)
		if err != nil {
			return
		}
		seq := keySeq(k)
		maxSeen = max(maxSeen, seq)
		if _, ok := r.msgs[seq]; ok || seen[seq] || !inSpan(seq) {
			return
		}
		if l, ok := lowest[string(m.device)]; ok && seq < l {
			return // an older copy: delivered or dropped since
		}
		seen[seq] = true
		if minOrphan == 0 || seq < minOrphan {
			minOrphan = seq
		}
		r.msgs[seq] = clone(v)
		r.fromOrphans++
	})
	for seq := range r.msgs {
		maxSeen = max(maxSeen, seq)
	}
	r.seqCounter = max(r.seqCounter, maxSeen)
	// Count the seqs of the damaged part that were not recovered.
	var missing uint64
	for _, s := range spans {
		lo := uint64(1)
		if s.from != nil && len(s.from) == 8 {
			lo = keySeq(s.from)
		} else if s.from == nil && !msgsSeen && minOrphan > 0 {
			lo = minOrphan
		}
		hi := r.seqCounter + 1
		if s.to != nil && len(s.to) == 8 {
			hi = min(hi, keySeq(s.to))
		}
		for seq := lo; seq < hi; seq++ {
			if _, ok := r.msgs[seq]; !ok && !deadSeqs[seq] {
				missing++
			}
		}
	}
	r.lost = prior + bad + missing
	r.headerSeen = msgsSeen
	return r
}

// write builds the recovered spool in a temporary file and links it to
// path, as create does.
func (r *salvageResult) write(path string, o Options) error {
	seqs := make([]uint64, 0, len(r.msgs))
	for seq := range r.msgs {
		seqs = append(seqs, seq)
	}
	slices.Sort(seqs)
	setup := func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketMessages).SetSequence(r.seqCounter); err != nil {
			return err
		}
		for _, x := range r.devices {
			if err := tx.Bucket(bucketDevices).Put(x.k, x.v); err != nil {
				return err
			}
		}
		for _, x := range r.dead {
			if err := tx.Bucket(bucketDead).Put(x.k, x.v); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketMeta).Put(metaCorruptKey, binary.BigEndian.AppendUint64(nil, r.lost))
	}
	const perTx = 10000
	var more []func(tx *bolt.Tx) error
	for i := 0; i < len(seqs); i += perTx {
		chunk := seqs[i:min(i+perTx, len(seqs))]
		more = append(more, func(tx *bolt.Tx) error {
			b := tx.Bucket(bucketMessages)
			b.FillPercent = 1
			for _, seq := range chunk {
				if err := b.Put(seqKey(seq), r.msgs[seq]); err != nil {
					return err
				}
			}
			return nil
		})
	}
	err := buildFile(path, o, setup, more)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%s was created meanwhile: %w", path, err)
	}
	return err
}
