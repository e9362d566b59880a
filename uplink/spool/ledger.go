package spool

import (
	"container/heap"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/edgegw/edgegw/secrets"
)

// devState is the in-memory account of one device's queue: what the
// budgets, overflow policy, TTL and statistics need without touching
// storage. Both Mem and Spool keep one per device in a ledger.
type devState struct {
	id     secrets.DeviceID
	prefix []byte    // dead-letter key prefix (spool)
	q      *seqQueue // queued seqs (spool; Mem keeps the messages)

	lastSeq  uint64 // highest seq assigned to the device (since Open, or stored)
	depth    int
	bytes    int64
	firstSeq uint64    // oldest queued seq, valid when depth > 0
	oldest   time.Time // its Received

	dropped   [numReasons]uint64
	rejected  uint64
	dlCount   int
	dlBytes   int64
	dlEvicted uint64
	lastAck   time.Time

	dirty   bool // the persisted counters must be rewritten (spool)
	heapIdx int  // index in ledger.byAge, -1 when not queued
}

// store is the storage side of a ledger operation: Mem's slices or the
// open bbolt write transaction.
type store interface {
	// popOldest removes d's oldest queued message and returns its Size.
	popOldest(d *devState) (int64, error)
	// first returns d's oldest queued message (d.depth > 0).
	first(d *devState) (seq uint64, received time.Time, err error)
	// count returns the messages and bytes actually queued for d.
	count(d *devState) (depth int, bytes int64, err error)
	// popOldestDeadLetter removes d's oldest dead letter and returns its
	// size (d.dlCount > 0).
	popOldestDeadLetter(d *devState) (int64, error)
}

type ledgerTotals struct {
	depth     int
	bytes     int64
	dlCount   int
	dlBytes   int64
	dropped   [numReasons]uint64
	rejected  uint64
	dlEvicted uint64
	appended  uint64
	acked     uint64
}

type ledgerEvent struct {
	dev    secrets.DeviceID
	reason string
	n      uint64
}

// ledger accounts for all queues of one Mem or Spool. It is not
// synchronized: its owner locks.
type ledger struct {
	opts  Options
	devs  map[secrets.DeviceID]*devState
	byAge devHeap // devices with depth > 0, oldest message first
	t     ledgerTotals
	seq   uint64 // last Seq assigned

	undo   *undoLog      // non-nil inside a spool transaction
	events []ledgerEvent // drops and rejections to log once committed
	drops  *dropLog
}

type undoLog struct {
	devs    map[*devState]devState
	created []*devState
	deleted []*devState
	t       ledgerTotals
	seq     uint64
	inv     []func() // index changes to reverse, in reverse order
}

func newLedger(o Options) *ledger {
	return &ledger{
		opts:  o,
		devs:  make(map[secrets.DeviceID]*devState),
		drops: newDropLog(o.Logger, o.DropLogInterval),
	}
}

// begin starts recording changes so that rollback can undo them.
func (l *ledger) begin() {
	l.undo = &undoLog{devs: make(map[*devState]devState), t: l.t, seq: l.seq}
}

// commit keeps the changes since begin and logs their drops.
func (l *ledger) commit(now time.Time) {
	l.undo = nil
	l.flushEvents(now)
}

// rollback restores the state at begin.
func (l *ledger) rollback() {
	u := l.undo
	l.undo = nil
	l.events = l.events[:0]
	if u == nil {
		return
	}
	for i := len(u.inv) - 1; i >= 0; i-- {
		u.inv[i]()
	}
	for _, d := range u.deleted {
		l.devs[d.id] = d
	}
	for _, d := range u.created {
		delete(l.devs, d.id)
	}
	for d, saved := range u.devs {
		*d = saved
	}
	l.t = u.t
	l.seq = u.seq
	l.rebuildHeap()
}

// onRollback registers f to run if the transaction rolls back.
func (l *ledger) onRollback(f func()) {
	if l.undo != nil {
		l.undo.inv = append(l.undo.inv, f)
	}
}

func (l *ledger) flushEvents(now time.Time) {
	for _, e := range l.events {
		l.drops.add(now, e.dev, e.reason, e.n)
	}
	l.events = l.events[:0]
	l.drops.maybeFlush(now)
}

func (l *ledger) touch(d *devState) {
	if l.undo == nil {
		return
	}
	if _, ok := l.undo.devs[d]; !ok {
		l.undo.devs[d] = *d
	}
}

// device returns the state of id, creating it if create is set (else nil
// when unknown).
func (l *ledger) device(id secrets.DeviceID, create bool) *devState {
	d := l.devs[id]
	if d == nil && create {
		d = &devState{id: id, prefix: devPrefix(id), q: &seqQueue{}, heapIdx: -1}
		l.devs[id] = d
		if l.undo != nil {
			l.undo.created = append(l.undo.created, d)
		}
	}
	return d
}

// forget deletes d (Remove), whose messages and dead letters are gone.
func (l *ledger) forget(d *devState) {
	l.touch(d)
	if d.heapIdx >= 0 {
		heap.Remove(&l.byAge, d.heapIdx)
	}
	delete(l.devs, d.id)
	if l.undo != nil {
		l.undo.deleted = append(l.undo.deleted, d)
	}
}

// admit makes room for a message of size bytes for d according to the
// budgets and the overflow policy, or refuses it with ErrTooLarge or
// ErrFull (the caller counts the rejection with reject).
//
// The device budget is d's own: drop-oldest drops d's oldest messages,
// reject-new refuses. The gateway-wide budget is shared fairly: when it is
// full, room is taken from the device holding the most bytes (the
// appending device counted with the new message), its oldest message
// first, so that a device within its fair share — Budget divided by the
// number of devices holding messages, the appending one included — never
// loses data to another device's flood. Under reject-new a device over its
// fair share is refused, and one within it still gets its message in,
// taken from the largest holder (counted as overflow).
func (l *ledger) admit(d *devState, size int64, st store) error {
	o := l.opts
	if size > o.DeviceBudget {
		return fmt.Errorf("append for %s: %w: %d bytes, device budget %d", d.id, ErrTooLarge, size, o.DeviceBudget)
	}
	if d.bytes+size <= o.DeviceBudget && l.t.bytes+size <= o.Budget {
		return nil
	}
	if o.Overflow == RejectNew {
		if d.bytes+size > o.DeviceBudget {
			return fmt.Errorf("append for %s: %w: device holds %d of %d bytes, message %d", d.id, ErrFull, d.bytes, o.DeviceBudget, size)
		}
		if share := l.fairShare(d); d.bytes+size > share {
			return fmt.Errorf("append for %s: %w: spool holds %d of %d bytes, device %d of its fair share %d, message %d",
				d.id, ErrFull, l.t.bytes, o.Budget, d.bytes, share, size)
		}
	}
	for d.bytes+size > o.DeviceBudget && d.depth > 0 {
		if err := l.dropOldest(d, ReasonOverflow, st); err != nil {
			return err
		}
	}
	for l.t.bytes+size > o.Budget {
		v := l.largest(d, size)
		if v == nil {
			break
		}
		if err := l.dropOldest(v, ReasonOverflow, st); err != nil {
			return err
		}
	}
	if d.bytes+size > o.DeviceBudget || l.t.bytes+size > o.Budget {
		// Only reachable if the accounting disagrees with storage.
		return fmt.Errorf("append for %s: no room after dropping: device %d bytes, spool %d bytes", d.id, d.bytes, l.t.bytes)
	}
	return nil
}

// fairShare is d's fair share of the gateway-wide budget: Budget divided
// by the number of devices holding messages, d included.
func (l *ledger) fairShare(d *devState) int64 {
	n := int64(len(l.byAge)) // the devices with depth > 0
	if d == nil || d.depth == 0 {
		n++
	}
	return l.opts.Budget / n
}

// largest returns the device with queued messages holding the most bytes,
// counting extra for d (the device about to append; nil when none), or
// nil if no device holds any. Ties go to d, then to the device with the
// oldest message. It scans every device: it runs only while the
// gateway-wide budget overflows, once per dropped message.
func (l *ledger) largest(d *devState, extra int64) *devState {
	var best *devState
	var bestBytes int64
	for _, x := range l.byAge {
		b := x.bytes
		if x == d {
			b += extra
		}
		if best == nil || b > bestBytes || b == bestBytes && best != d && (x == d || l.byAge.older(x, best)) {
			best, bestBytes = x, b
		}
	}
	return best
}

func (l *ledger) reject(d *devState) {
	l.touch(d)
	d.rejected++
	d.dirty = true
	l.t.rejected++
	l.events = append(l.events, ledgerEvent{d.id, "rejected", 1})
}

// enforce drops the oldest messages until every budget holds (after Open
// with a smaller budget than the file holds): each device's own first,
// then those of the largest holders.
func (l *ledger) enforce(st store) error {
	for _, d := range l.devs {
		for d.bytes > l.opts.DeviceBudget && d.depth > 0 {
			if err := l.dropOldest(d, ReasonOverflow, st); err != nil {
				return err
			}
		}
	}
	for l.t.bytes > l.opts.Budget && len(l.byAge) > 0 {
		if err := l.dropOldest(l.largest(nil, 0), ReasonOverflow, st); err != nil {
			return err
		}
	}
	return nil
}

// overBudget reports whether the stored bytes exceed a budget.
func (l *ledger) overBudget() bool {
	if l.t.bytes > l.opts.Budget {
		return true
	}
	for _, d := range l.devs {
		if d.bytes > l.opts.DeviceBudget {
			return true
		}
	}
	return false
}

// dropOldest removes d's oldest message for reason.
func (l *ledger) dropOldest(d *devState, r Reason, st store) error {
	size, err := st.popOldest(d)
	if errors.Is(err, errMismatch) {
		return l.repair(d, st, err)
	}
	if err != nil {
		return err
	}
	l.removed(d, size, r)
	return l.refreshFirst(d, st)
}

// errMismatch: storage does not hold what the ledger accounts for.
var errMismatch = errors.New("accounting does not match storage")

// repair recounts d from storage after a mismatch, so that one bad
// account cannot wedge every later commit.
func (l *ledger) repair(d *devState, st store, cause error) error {
	depth, bytes, err := st.count(d)
	if err != nil {
		return err
	}
	l.opts.Logger.Error("spool accounting mismatch repaired", "device", d.id.String(),
		"depth", d.depth, "actual_depth", depth, "bytes", d.bytes, "actual_bytes", bytes, "cause", cause)
	l.touch(d)
	l.t.depth += depth - d.depth
	l.t.bytes += bytes - d.bytes
	d.depth, d.bytes = depth, bytes
	return l.refreshFirst(d, st)
}

// added accounts for a stored message.
func (l *ledger) added(d *devState, seq uint64, size int64, received time.Time) {
	l.touch(d)
	l.seq = max(l.seq, seq)
	d.lastSeq = seq
	d.depth++
	d.bytes += size
	l.t.depth++
	l.t.bytes += size
	l.t.appended++
	if d.depth == 1 {
		d.firstSeq, d.oldest = seq, received
		heap.Push(&l.byAge, d)
	}
}

// removed accounts for a message that left d's queue: acknowledged when r
// is "", else dropped for r. The caller refreshes the oldest message if
// it removed it.
func (l *ledger) removed(d *devState, size int64, r Reason) {
	l.touch(d)
	d.depth--
	d.bytes -= size
	l.t.depth--
	l.t.bytes -= size
	if r == "" {
		l.t.acked++
		return
	}
	d.dropped[r.index()]++
	d.dirty = true
	l.t.dropped[r.index()]++
	l.events = append(l.events, ledgerEvent{d.id, string(r), 1})
}

// refreshFirst re-reads d's oldest message after removals.
func (l *ledger) refreshFirst(d *devState, st store) error {
	l.touch(d)
	if d.depth <= 0 {
		if d.heapIdx >= 0 {
			heap.Remove(&l.byAge, d.heapIdx)
		}
		d.firstSeq, d.oldest = 0, time.Time{}
		return nil
	}
	seq, rec, err := st.first(d)
	if errors.Is(err, errMismatch) {
		return l.repair(d, st, err)
	}
	if err != nil {
		return err
	}
	d.firstSeq, d.oldest = seq, rec
	if d.heapIdx >= 0 {
		heap.Fix(&l.byAge, d.heapIdx)
	} else {
		heap.Push(&l.byAge, d)
	}
	return nil
}

// expire drops up to limit messages older than the TTL, oldest first, and
// reports whether expired messages remain.
func (l *ledger) expire(now time.Time, limit int, st store) (more bool, err error) {
	if l.opts.TTL <= 0 {
		return false, nil
	}
	for n := 0; len(l.byAge) > 0 && l.expired(l.byAge[0].oldest, now); n++ {
		if n == limit {
			return true, nil
		}
		if err := l.dropOldest(l.byAge[0], ReasonTTL, st); err != nil {
			return false, err
		}
	}
	return false, nil
}

func (l *ledger) expired(received, now time.Time) bool {
	return l.opts.TTL > 0 && !received.Add(l.opts.TTL).After(now)
}

// expiredDue reports whether expire has work.
func (l *ledger) expiredDue(now time.Time) bool {
	return len(l.byAge) > 0 && l.expired(l.byAge[0].oldest, now)
}

// admitDeadLetter makes room for a dead letter of size bytes for d. It
// returns false if the dead letter can never fit (it is then counted as
// evicted right away).
func (l *ledger) admitDeadLetter(d *devState, size int64, st store) (bool, error) {
	if size > l.opts.DeadLetterBudget {
		l.touch(d)
		d.dlEvicted++
		d.dirty = true
		l.t.dlEvicted++
		l.events = append(l.events, ledgerEvent{d.id, "dead-letter-evicted", 1})
		return false, nil
	}
	for d.dlCount >= l.opts.DeadLetterMax {
		if err := l.evictDeadLetter(d, st); err != nil {
			return false, err
		}
	}
	for l.t.dlBytes+size > l.opts.DeadLetterBudget {
		// Evict from the device holding the most dead-letter bytes.
		var victim *devState
		for _, x := range l.devs {
			if x.dlCount > 0 && (victim == nil || x.dlBytes > victim.dlBytes) {
				victim = x
			}
		}
		if victim == nil {
			return false, fmt.Errorf("dead letters of %s: accounting says %d bytes but no device holds any", d.id, l.t.dlBytes)
		}
		if err := l.evictDeadLetter(victim, st); err != nil {
			return false, err
		}
	}
	return true, nil
}

func (l *ledger) evictDeadLetter(d *devState, st store) error {
	size, err := st.popOldestDeadLetter(d)
	if errors.Is(err, errMismatch) {
		// Nothing stored: forget the accounted dead letters.
		l.opts.Logger.Error("spool dead-letter accounting mismatch repaired", "device", d.id.String(), "count", d.dlCount, "cause", err)
		l.touch(d)
		l.t.dlCount -= d.dlCount
		l.t.dlBytes -= d.dlBytes
		d.dlCount, d.dlBytes = 0, 0
		return nil
	}
	if err != nil {
		return err
	}
	l.deadLetterRemoved(d, size)
	d.dlEvicted++
	d.dirty = true
	l.t.dlEvicted++
	l.events = append(l.events, ledgerEvent{d.id, "dead-letter-evicted", 1})
	return nil
}

func (l *ledger) deadLetterAdded(d *devState, size int64) {
	l.touch(d)
	d.dlCount++
	d.dlBytes += size
	l.t.dlCount++
	l.t.dlBytes += size
}

func (l *ledger) deadLetterRemoved(d *devState, size int64) {
	l.touch(d)
	d.dlCount--
	d.dlBytes -= size
	l.t.dlCount--
	l.t.dlBytes -= size
}

func (l *ledger) rebuildHeap() {
	l.byAge = l.byAge[:0]
	for _, d := range l.devs {
		d.heapIdx = -1
		if d.depth > 0 {
			d.heapIdx = len(l.byAge)
			l.byAge = append(l.byAge, d)
		}
	}
	heap.Init(&l.byAge)
}

func (l *ledger) deviceStats(d *devState, now time.Time) DeviceStats {
	s := DeviceStats{
		Device:             d.id,
		Depth:              d.depth,
		Bytes:              d.bytes,
		LastSeq:            d.lastSeq,
		LastAck:            d.lastAck,
		Dropped:            reasonMap(d.dropped),
		Rejected:           d.rejected,
		DeadLetters:        d.dlCount,
		DeadLetterBytes:    d.dlBytes,
		DeadLettersEvicted: d.dlEvicted,
	}
	if d.depth > 0 {
		s.Oldest = d.oldest
		s.OldestAge = max(now.Sub(d.oldest), 0)
	}
	return s
}

func (l *ledger) totals() Totals {
	return Totals{
		Devices:            len(l.devs),
		Depth:              l.t.depth,
		Bytes:              l.t.bytes,
		Budget:             l.opts.Budget,
		DeviceBudget:       l.opts.DeviceBudget,
		Overflow:           l.opts.Overflow,
		Dropped:            reasonMap(l.t.dropped),
		Rejected:           l.t.rejected,
		DeadLetters:        l.t.dlCount,
		DeadLetterBytes:    l.t.dlBytes,
		DeadLettersEvicted: l.t.dlEvicted,
		Appended:           l.t.appended,
		Acked:              l.t.acked,
	}
}

// sorted lists the devices sorted by id.
func (l *ledger) sorted() []*devState {
	out := make([]*devState, 0, len(l.devs))
	for _, d := range l.devs {
		out = append(out, d)
	}
	sortDevices(out)
	return out
}

func compareIDs(a, b secrets.DeviceID) int {
	if c := strings.Compare(a.ProductKey, b.ProductKey); c != 0 {
		return c
	}
	return strings.Compare(a.DeviceName, b.DeviceName)
}

func sortDevices(ds []*devState) {
	slices.SortFunc(ds, func(a, b *devState) int { return compareIDs(a.id, b.id) })
}

// devHeap orders devices by their oldest queued message (Received), ties
// by id, so that TTL finds the spool's oldest message. It holds exactly
// the devices with queued messages.
type devHeap []*devState

func (h devHeap) Len() int           { return len(h) }
func (h devHeap) Less(i, j int) bool { return h.older(h[i], h[j]) }

// older reports whether a's oldest message sorts before b's.
func (devHeap) older(a, b *devState) bool {
	if !a.oldest.Equal(b.oldest) {
		return a.oldest.Before(b.oldest)
	}
	return compareIDs(a.id, b.id) < 0
}
func (h devHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapIdx = i
	h[j].heapIdx = j
}
func (h *devHeap) Push(x any) {
	d := x.(*devState)
	d.heapIdx = len(*h)
	*h = append(*h, d)
}
func (h *devHeap) Pop() any {
	old := *h
	d := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	d.heapIdx = -1
	return d
}

// dropLog logs drops and rejections per device and reason, at most once
// per interval, with the count accumulated since the previous line.
type dropLog struct {
	log      *slog.Logger
	interval time.Duration
	entries  map[dropKey]*dropEntry
	due      time.Time // earliest time a held-back count is due, zero if none
}

type dropKey struct {
	dev    secrets.DeviceID
	reason string
}

type dropEntry struct {
	last    time.Time
	pending uint64
}

func newDropLog(log *slog.Logger, interval time.Duration) *dropLog {
	return &dropLog{log: log, interval: interval, entries: make(map[dropKey]*dropEntry)}
}

func (dl *dropLog) add(now time.Time, dev secrets.DeviceID, reason string, n uint64) {
	k := dropKey{dev, reason}
	e := dl.entries[k]
	if e == nil {
		e = &dropEntry{last: now}
		dl.entries[k] = e
		dl.emit(k, n)
		return
	}
	e.pending += n
	if now.Sub(e.last) >= dl.interval {
		dl.emit(k, e.pending)
		e.pending, e.last = 0, now
		return
	}
	if at := e.last.Add(dl.interval); dl.due.IsZero() || at.Before(dl.due) {
		dl.due = at
	}
}

// maybeFlush logs held-back counts that are due.
func (dl *dropLog) maybeFlush(now time.Time) {
	if !dl.due.IsZero() && !now.Before(dl.due) {
		dl.flush(now, false)
	}
}

// flush logs counts held back for at least an interval (all of them if
// force) and forgets idle entries.
func (dl *dropLog) flush(now time.Time, force bool) {
	dl.due = time.Time{}
	for k, e := range dl.entries {
		switch {
		case e.pending > 0 && (force || now.Sub(e.last) >= dl.interval):
			dl.emit(k, e.pending)
			e.pending, e.last = 0, now
		case e.pending > 0:
			if at := e.last.Add(dl.interval); dl.due.IsZero() || at.Before(dl.due) {
				dl.due = at
			}
		case now.Sub(e.last) >= dl.interval:
			delete(dl.entries, k)
		}
	}
}

func (dl *dropLog) emit(k dropKey, n uint64) {
	msg := "spool dropped messages"
	switch k.reason {
	case "rejected":
		msg = "spool rejected messages"
	case "dead-letter-evicted":
		msg = "spool evicted dead letters"
	}
	dl.log.Warn(msg, "device", k.dev.String(), "reason", k.reason, "count", n)
}
