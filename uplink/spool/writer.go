package spool

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/edgegw/edgegw/secrets"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Per-transaction caps on background work, so that one commit stays
// small: the rest follows in the next commits.
// Deletions (acknowledgements, expiry, purge) ride in the same commits as
// appends, and a commit deleting tens of thousands of messages spread over
// the log takes long (measured: 43,000 per commit, 0.9 s), which every
// publisher waiting for its PUBACK would wait too. The number of
// deletions per commit adapts to keep commits near targetCommit.
const (
	maxDeletesPerTx = 50000
	minDeletesPerTx = 256
	targetCommit    = 50 * time.Millisecond
	retryBackoff    = 100 * time.Millisecond
)

// purgeChunk caps the messages Purge and Remove delete per transaction
// (a variable for tests).
var purgeChunk = 20000

// run is the writer goroutine: it gathers requests and background work
// and commits them in groups until Close.
func (s *Spool) run() {
	defer close(s.writerDone)
	tick := time.NewTicker(s.opts.SweepInterval)
	defer tick.Stop()
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	ackTimer := time.NewTimer(time.Hour)
	ackTimer.Stop()
	defer ackTimer.Stop()
	lingerTimer := time.NewTimer(time.Hour)
	lingerTimer.Stop()
	defer lingerTimer.Stop()
	var (
		batch    []*request
		carry    []*request
		closing  = s.closing
		drained  chan struct{} // closed once no Append can still send
		stopping bool
		// Deleting acknowledged messages at shutdown stops here: a large
		// backlog (300,000 deletions take ~5 s) must not hold Close past
		// its bound. What is left is sent again after a restart.
		ackDeadline time.Time
	)
	// ackBudget starts the clock when Close begins, seen even while the
	// writer is never idle (a deletion backlog keeps it busy).
	ackBudget := func() {
		if ackDeadline.IsZero() {
			select {
			case <-s.closing:
				ackDeadline = time.Now().Add(s.ackFlush)
			default:
				return
			}
		}
		if !s.skipAcks && !time.Now().Before(ackDeadline) {
			s.abandonAcks()
		}
	}
	for {
		batch = append(batch[:0], carry...)
		carry = nil
		ackBudget()
		if stopping {
			batch = s.gather(batch, true)
			if len(batch) == 0 && !s.hasWork(true) {
				return
			}

			var err error
			if carry, err = s.commit(batch); err != nil {
				// Do not retry a failing disk at shutdown; unacknowledged
				// work is still in the file (acks lost: duplicates).
				for _, r := range carry {
					r.finish(result{n: r.n, err: fmt.Errorf("%s for %s in spool %s: %w", r.op, r.device, s.path, err)})
				}
				return
			}
			continue
		}
		if len(batch) == 0 && !s.hasWork(false) {
			if !s.retryAt.IsZero() {
				retry.Reset(time.Until(s.retryAt))
			}
			if _, at := s.acksDue(false); !at.IsZero() {
				ackTimer.Reset(time.Until(at))
			}
			select {
			case r := <-s.reqs:
				batch = append(batch, r)
			case <-s.kick:
			case <-ackTimer.C:
			case <-retry.C:
				s.retryAt = time.Time{}
			case <-tick.C:
				s.mu.Lock()
				s.led.drops.maybeFlush(s.opts.Now())
				s.mu.Unlock()
			case <-closing:
				closing = nil
				drained = make(chan struct{})
				go func() {
					s.senders.Wait()
					close(drained)
				}()
			case <-drained:
				stopping = true
			}
			retry.Stop()
			ackTimer.Stop()
		}
		ackBudget()
		batch = s.linger(s.gather(batch, false), lingerTimer)
		if len(batch) > 0 || s.hasWork(false) {
			carry, _ = s.commit(batch)
		}
	}
}

// gather adds the requests already waiting, up to MaxBatch appends.
func (s *Spool) gather(batch []*request, all bool) []*request {
	appends := 0
	for _, r := range batch {
		if r.op == opAppend {
			appends++
		}
	}
	for all || appends < s.opts.MaxBatch {
		select {
		case r := <-s.reqs:
			batch = append(batch, r)
			if r.op == opAppend {
				appends++
			}
		default:
			return batch
		}
	}
	return batch
}

// linger lets the batch's oldest request wait until it is CommitDelay old
// for others to join the commit, up to MaxBatch appends. Requests that
// already waited that long (the previous commit was slow, or they are
// carried over) commit at once; so does everything once Close began.
func (s *Spool) linger(batch []*request, t *time.Timer) []*request {
	if s.opts.CommitDelay <= 0 || len(batch) == 0 {
		return batch
	}
	appends := 0
	for _, r := range batch {
		if r.op == opAppend {
			appends++
		}
	}
	deadline := batch[0].queued.Add(s.opts.CommitDelay)
	for appends < s.opts.MaxBatch {
		wait := time.Until(deadline)
		if wait <= 0 {
			return batch
		}
		t.Reset(wait)
		select {
		case r := <-s.reqs:
			t.Stop()
			batch = append(batch, r)
			if r.op == opAppend {
				appends++
			}
		case <-t.C:
			return batch
		case <-s.closing:
			t.Stop()
			return batch
		}
	}
	return batch
}

// hasWork reports background work: acknowledgements that are due, damaged
// records, budget enforcement, expired messages.
func (s *Spool) hasWork(stopping bool) bool {
	if !stopping && !s.retryAt.IsZero() && time.Now().Before(s.retryAt) {
		return false
	}
	if due, _ := s.acksDue(stopping); due {
		return true
	}
	return s.hasOtherWork(stopping)
}

// acksDue reports whether the pending acknowledgements need a commit of
// their own now; if they are pending but not yet due, at is when they will
// be (AckDelay after the oldest). They are due at once when stopping, when
// ackBatch of them wait, and while appends are refused for a full disk
// (deleting frees the space).
func (s *Spool) acksDue(stopping bool) (due bool, at time.Time) {
	s.mu.RLock()
	n, since := s.npending, s.ackSince
	s.mu.RUnlock()
	if n == 0 || s.skipAcks {
		return false, time.Time{}
	}
	if stopping || s.opts.AckDelay < 0 || n >= ackBatch || time.Now().Before(s.fullUntil) {
		return true, time.Time{}
	}
	at = since.Add(s.opts.AckDelay)
	if !time.Now().Before(at) {
		return true, time.Time{}
	}
	return false, at
}

// abandonAcks gives up the acknowledgements not yet committed, at
// shutdown: their messages stay in the file and are sent again after a
// restart (duplicates, never a loss).
func (s *Spool) abandonAcks() {
	s.skipAcks = true
	s.mu.RLock()
	n := s.npending
	s.mu.RUnlock()
	if n == 0 {
		return
	}
	s.log.Warn("spool closing with acknowledged messages not yet deleted; they will be sent again after a restart",
		"messages", n, "path", s.path)
}

// hasOtherWork reports work besides deleting acknowledged messages.
func (s *Spool) hasOtherWork(stopping bool) bool {
	s.fixMu.Lock()
	fix := len(s.corrupt) > 0 || len(s.badKeys) > 0 || len(s.badDeadKeys) > 0
	s.fixMu.Unlock()
	return fix || s.enforce || len(s.redirty) > 0 || (!stopping && s.led.expiredDue(s.opts.Now()))
}

type ackSet map[secrets.DeviceID][]uint64

// takeAcks copies up to s.limit pending acknowledgements. They stay
// pending (hidden from Read) until clearAcks after the commit.
func (s *Spool) takeAcks() ackSet {
	if s.skipAcks {
		return nil
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.npending == 0 {
		return nil
	}
	acks := make(ackSet, len(s.pending))
	n := 0
	for dev, p := range s.pending {
		for seq := range p {
			if n == s.limit {
				return acks
			}
			acks[dev] = append(acks[dev], seq)
			n++
		}
	}
	return acks
}

// clearAcks forgets committed acknowledgements; s.mu is held. Read holds
// s.mu shared across its read transaction, so it sees either the pending
// entry or a snapshot without the message, never the message alone.
func (s *Spool) clearAcks(acks ackSet) {
	for dev, seqs := range acks {
		p := s.pending[dev]
		for _, seq := range seqs {
			if _, ok := p[seq]; ok {
				delete(p, seq)
				s.npending--
			}
		}
		if len(p) == 0 {
			delete(s.pending, dev)
		}
	}
}

// acksPending reports whether acknowledgements up to ack number n are
// still pending.
func (s *Spool) acksPending(n uint64) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, p := range s.pending {
		for _, a := range p {
			if a <= n {
				return true
			}
		}
	}
	return false
}

type fixups struct {
	corrupt     []corruptRef
	badKeys     [][]byte
	badDeadKeys [][]byte
}

func (s *Spool) takeFixups() fixups {
	s.fixMu.Lock()
	defer s.fixMu.Unlock()
	var f fixups
	for r := range s.corrupt {
		f.corrupt = append(f.corrupt, r)
	}
	f.badKeys = s.badKeys
	f.badDeadKeys = s.badDeadKeys
	return f
}

func (s *Spool) clearFixups(f fixups) {
	s.fixMu.Lock()
	defer s.fixMu.Unlock()
	for _, r := range f.corrupt {
		delete(s.corrupt, r)
	}
	s.badKeys = s.badKeys[len(f.badKeys):]
	s.badDeadKeys = s.badDeadKeys[len(f.badDeadKeys):]
}

// outcome is what one transaction did for one request.
type outcome struct {
	seq      uint64
	n        int
	more     bool  // needs another transaction
	final    error // refused (budget); independent of the commit
	rejected bool  // count a rejection
}

// commit runs the transaction for batch plus background work, replies to
// the requests it finished and returns those that need another one, and
// the commit error if any.
func (s *Spool) commit(batch []*request) (carry []*request, _ error) {
	if s.opts.BeforeCommit != nil {
		s.opts.BeforeCommit()
	}
	wall := time.Now()
	now := s.opts.Now()
	acks := s.takeAcks()
	fix := s.takeFixups()
	outs := make([]outcome, len(batch))
	hasAppends := slices.ContainsFunc(batch, func(r *request) bool { return r.op == opAppend })

	var appendErr error // set when appends were left out of the commit
	withAppends := true
	if hasAppends && wall.Before(s.fullUntil) {
		withAppends = false
		appendErr = fmt.Errorf("%w (refusing appends for %v after: %s)", ErrDiskFull, s.opts.DiskFullBackoff, s.lastErrorText())
	}
	err := s.update(batch, outs, acks, fix, now, withAppends)
	if err != nil && withAppends && hasAppends && isSpaceError(err) {
		s.diskFull(wall, err)
		appendErr = fmt.Errorf("%w: %w", ErrDiskFull, err)
		withAppends = false
		clear(outs)
		// Commit the rest (acknowledgements free space) without them.
		err = s.update(batch, outs, acks, fix, now, false)
	}
	shrink := false
	if err != nil && isSpaceError(err) {
		// Deleting needs free pages too (copy on write): in a full file
		// even acknowledgements may not commit. Give up the reserve (it
		// frees reservePages for the price of one) and retry smaller
		// groups at once; each deletion that commits frees more.
		if s.reserved {
			shrink = s.releaseReserve() == nil
		}
		if s.limit > 1 {
			s.limit = max(s.limit/8, 1)
			shrink = true
		}
	}
	switch {
	case err == nil:
		s.retryAt = time.Time{}
		switch took := s.lastCommit; {
		case took > targetCommit && s.limit > minDeletesPerTx:
			s.limit = max(s.limit/2, minDeletesPerTx)
		case took < targetCommit/2 || s.limit < minDeletesPerTx:
			s.limit = min(s.limit*2, maxDeletesPerTx)
		}
		if !s.reserved && withAppends && hasAppends {
			s.makeReserve(wall)
		}
	case shrink:
	default:
		if !s.retryAt.After(wall) {
			s.retryAt = wall.Add(retryBackoff)
		}
		s.log.Error("spool commit failed", "err", err)
	}

	notified := make(map[secrets.DeviceID]bool)
	for i, r := range batch {
		o := outs[i]
		if o.rejected {
			s.countRejected(r.device)
		}
		var res result
		switch {
		case o.final != nil:
			res.err = o.final
		case r.op == opAppend && !withAppends:
			res.err = fmt.Errorf("append for %s to spool %s: %w", r.device, s.path, appendErr)
		case shrink && r.op != opAppend:
			carry = append(carry, r)
			continue
		case err != nil:
			res.n = r.n
			res.err = fmt.Errorf("%s for %s in spool %s: %w", r.op, r.device, s.path, err)
		case o.more || r.op == opSync && s.acksPending(r.seq):
			r.n += o.n
			carry = append(carry, r)
			continue
		default:
			r.n += o.n
			res.seq, res.n = o.seq, r.n
			if r.op == opAppend && !notified[r.device] {
				notified[r.device] = true
				s.notify.signal(r.device)
			}
			if r.op == opRemove {
				s.mu.Lock()
				delete(s.lastAck, r.device)
				s.mu.Unlock()
			}
		}
		r.finish(res)
	}
	return carry, err
}

// update runs one write transaction. The ledger follows the transaction:
// changed while it is built, kept if it commits, rolled back if not.
func (s *Spool) update(batch []*request, outs []outcome, acks ackSet, fix fixups, now time.Time, withAppends bool) error {
	start := time.Now()
	freed := false
	err := s.db.Update(func(tx *bolt.Tx) error {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.led.begin()
		st := newTxStore(s.led, tx)
		if err := s.applyFixups(st, fix); err != nil {
			return err
		}
		n, err := s.applyAcks(st, acks)
		if err != nil {
			return err
		}
		freed = n > 0
		if s.enforce {
			if err := s.led.enforce(st); err != nil {
				return fmt.Errorf("enforce budget: %w", err)
			}
		}
		for i, r := range batch {
			if r.op == opAppend && !withAppends {
				continue
			}
			if err := s.apply(st, r, &outs[i], now); err != nil {
				return fmt.Errorf("%s for %s: %w", r.op, r.device, err)
			}
			freed = freed || (r.op != opAppend && r.op != opSync)
		}
		if _, err := s.led.expire(now, s.limit, st); err != nil {
			return fmt.Errorf("expire: %w", err)
		}
		return s.writeDevices(st)
	})
	took := time.Since(start)
	s.lastCommit = took
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hist.observe(took)
	if err != nil {
		s.led.rollback()
		s.commitErrs++
		s.lastErr = err.Error()
		return err
	}
	s.commits++
	s.led.commit(now)
	s.clearAcks(acks)
	s.clearFixups(fix)
	s.enforce = false
	s.redirty = s.redirty[:0]
	if withAppends && slices.ContainsFunc(batch, func(r *request) bool { return r.op == opAppend }) {
		s.full = false
	}
	if freed || withAppends && !s.fullUntil.IsZero() {
		if !s.fullUntil.IsZero() && withAppends {
			s.log.Info("spool accepts appends again")
		}
		s.fullUntil = time.Time{}
	}
	return nil
}

// The reserve is a bucket holding reservePages pages of ballast, created
// with the file. When the disk (or MaxFileSize) is full, deleting it is a
// one-page commit that frees reservePages pages, so that acknowledged
// messages can still be deleted and the spool recovers instead of
// staying full forever. It is made again once appends succeed.
const (
	reservePages = 64
	reserveRetry = 10 * time.Second
)

var (
	bucketReserve = []byte("reserve")
	reserveKey    = []byte("ballast")
)

func putReserve(tx *bolt.Tx, pageSize int) error {
	b, err := tx.CreateBucketIfNotExists(bucketReserve)
	if err != nil {
		return err
	}
	return b.Put(reserveKey, make([]byte, reservePages*pageSize-64))
}

func (s *Spool) releaseReserve() error {
	err := s.db.Update(func(tx *bolt.Tx) error { return tx.DeleteBucket(bucketReserve) })
	if err != nil && !errors.Is(err, berrors.ErrBucketNotFound) {
		s.log.Error("spool full: cannot release its reserve", "err", err)
		return err
	}
	s.mu.Lock()
	s.reserved = false
	s.mu.Unlock()
	s.log.Warn("spool full: released its reserve so that acknowledged messages can be deleted")
	return nil
}

func (s *Spool) makeReserve(wall time.Time) {
	if wall.Sub(s.reserveTried) < reserveRetry {
		return
	}
	s.reserveTried = wall
	if err := s.db.Update(func(tx *bolt.Tx) error { return putReserve(tx, s.db.Info().PageSize) }); err != nil {
		s.log.Warn("spool: cannot make its reserve yet", "err", err)
		return
	}
	s.mu.Lock()
	s.reserved = true
	s.mu.Unlock()
	s.log.Info("spool reserve made again")
}

func (s *Spool) lastErrorText() string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.lastErr
}

func (s *Spool) diskFull(wall time.Time, err error) {
	s.mu.Lock()
	s.fullUntil = wall.Add(s.opts.DiskFullBackoff)
	s.full = true
	s.mu.Unlock()
	if wall.Sub(s.lastFullLog) >= s.opts.DropLogInterval {
		s.lastFullLog = wall
		s.log.Error("spool disk full: refusing appends, stored messages are intact", "err", err)
	}
}

func (s *Spool) countRejected(dev secrets.DeviceID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.led.device(dev, true)
	s.led.reject(d)
	s.redirty = append(s.redirty, d)
	s.led.flushEvents(s.opts.Now())
}

func isSpaceError(err error) bool {
	if errors.Is(err, berrors.ErrMaxSizeReached) || errors.Is(err, syscall.ENOSPC) ||
		errors.Is(err, syscall.EDQUOT) || errors.Is(err, syscall.EFBIG) {
		return true
	}
	// bbolt formats some I/O errors with %s.
	msg := err.Error()
	return strings.Contains(msg, syscall.ENOSPC.Error()) || strings.Contains(msg, syscall.EDQUOT.Error()) ||
		strings.Contains(msg, syscall.EFBIG.Error())
}

// apply performs r inside the transaction.
func (s *Spool) apply(st *txStore, r *request, o *outcome, now time.Time) error {
	l := s.led
	switch r.op {
	case opAppend:
		d := l.device(r.device, true)
		if err := l.admit(d, r.size, st); err != nil {
			if errors.Is(err, ErrFull) || errors.Is(err, ErrTooLarge) {
				o.final, o.rejected = err, true
				return nil
			}
			return err
		}
		seq := l.seq + 1
		if err := st.msgs.Put(seqKey(seq), r.val); err != nil {
			return err
		}
		st.index(d, seq)
		l.added(d, seq, r.size, r.received)
		o.seq = seq
	case opPurge, opRemove:
		d := l.devs[r.device]
		if d == nil {
			return nil
		}
		if !r.started {
			// Messages appended after the request stay.
			r.started, r.seq = true, d.lastSeq
		}
		chunk := min(purgeChunk, s.limit)
		n, err := st.purge(d, chunk, r.seq)
		if err != nil {
			return err
		}
		o.n, o.more = n, n == chunk
		if r.op == opRemove && !o.more {
			if _, err := st.purgeDead(d); err != nil {
				return err
			}
			if d.depth == 0 {
				l.forget(d)
			} else {
				// Appended after the request: the device stays, its
				// counters restart.
				l.touch(d)
				d.dropped, d.rejected, d.dlEvicted, d.dirty = [numReasons]uint64{}, 0, 0, true
			}
		}
	case opDeadLetter:
		d := l.devs[r.device]
		if d == nil {
			return nil
		}
		moved, err := st.deadLetter(d, r.seq, string(r.val), now)
		if err != nil {
			return err
		}
		if moved {
			o.n = 1
		}
	case opClearDeadLetters:
		d := l.devs[r.device]
		if d == nil {
			return nil
		}
		n, err := st.purgeDead(d)
		if err != nil {
			return err
		}
		o.n = n
	case opSync:
	}
	return nil
}

// applyAcks deletes acknowledged messages and returns how many it found.
func (s *Spool) applyAcks(st *txStore, acks ackSet) (int, error) {
	n := 0
	for dev, seqs := range acks {
		d := s.led.devs[dev]
		if d == nil {
			continue
		}
		slices.Sort(seqs)
		first := false
		for _, seq := range seqs {
			size, ok, err := st.remove(d, seq)
			if err != nil {
				return n, err
			}
			if !ok {
				continue
			}
			s.led.removed(d, size, "")
			first = first || seq == d.firstSeq
			n++
		}
		if first {
			if err := s.led.refreshFirst(d, st); err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

// applyFixups deletes damaged records found by Read or Open.
func (s *Spool) applyFixups(st *txStore, f fixups) error {
	for _, k := range f.badDeadKeys {
		if err := st.dead.Delete(k); err != nil {
			return err
		}
	}
	for _, k := range f.badKeys {
		if st.msgs.Get(k) == nil {
			continue
		}
		if err := st.msgs.Delete(k); err != nil {
			return err
		}
		// Not attributable to a device: counted in the totals only.
		s.led.t.dropped[ReasonCorrupt.index()]++
	}
	for _, r := range f.corrupt {
		d := s.led.devs[r.dev]
		if d == nil {
			continue
		}
		v := st.msgs.Get(seqKey(r.seq))
		if v == nil || !d.q.contains(r.seq) {
			continue
		}
		if _, err := parseMessage(v); err == nil {
			continue
		}
		size, ok, err := st.remove(d, r.seq)
		if err != nil || !ok {
			return err
		}
		first := r.seq == d.firstSeq
		s.led.removed(d, size, ReasonCorrupt)
		if first {
			if err := s.led.refreshFirst(d, st); err != nil {
				return err
			}
		}
	}
	return nil
}

// writeDevices persists the counters of the devices changed in this
// transaction and deletes the records of removed ones.
func (s *Spool) writeDevices(st *txStore) error {
	for _, d := range s.led.undo.deleted {
		if err := st.devs.Delete([]byte(d.id.String())); err != nil {
			return err
		}
	}
	write := func(d *devState) error {
		if !d.dirty || s.led.devs[d.id] != d {
			return nil
		}
		if err := st.devs.Put([]byte(d.id.String()), encodeDevice(d)); err != nil {
			return err
		}
		d.dirty = false
		return nil
	}
	for d := range s.led.undo.devs {
		if err := write(d); err != nil {
			return err
		}
	}
	for _, d := range s.redirty {
		s.led.touch(d)
		if err := write(d); err != nil {
			return err
		}
	}
	if st.msgs.Sequence() != s.led.seq {
		return st.msgs.SetSequence(s.led.seq)
	}
	return nil
}

// txStore is the store of the ledger operations inside a write
// transaction. It keeps the device indexes in step with the messages
// bucket, and registers the inverse of each index change with the ledger
// in case the transaction rolls back.
type txStore struct {
	l                *ledger
	msgs, dead, devs *bolt.Bucket
}

func newTxStore(l *ledger, tx *bolt.Tx) *txStore {
	st := &txStore{
		l:    l,
		msgs: tx.Bucket(bucketMessages),
		dead: tx.Bucket(bucketDead),
		devs: tx.Bucket(bucketDevices),
	}
	// Keys only grow (seqs) or cluster per device (dead letters): full
	// pages on split.
	st.msgs.FillPercent = 0.95
	st.dead.FillPercent = 0.9
	return st
}

func (st *txStore) index(d *devState, seq uint64) {
	d.q.push(seq)
	st.l.onRollback(func() { d.q.popBack() })
}

func (st *txStore) unindex(d *devState, seq uint64) {
	if d.q.remove(seq) {
		st.l.onRollback(func() { d.q.insert(seq) })
	}
}

// remove deletes message seq of d, if stored, and returns its size. A seq
// not in d's index is not d's (seqs are spool-wide) and is left alone.
func (st *txStore) remove(d *devState, seq uint64) (int64, bool, error) {
	if !d.q.contains(seq) {
		return 0, false, nil
	}
	k := seqKey(seq)
	v := st.msgs.Get(k)
	if v == nil {
		st.unindex(d, seq)
		return 0, false, nil
	}
	size := rawSize(v)
	if err := st.msgs.Delete(k); err != nil {
		return 0, false, err
	}
	st.unindex(d, seq)
	return size, true, nil
}

func (st *txStore) popOldest(d *devState) (int64, error) {
	if d.q.len() == 0 {
		return 0, fmt.Errorf("drop oldest of %s: %w: index empty, accounted %d", d.id, errMismatch, d.depth)
	}
	seq := d.q.front()
	size, ok, err := st.remove(d, seq)
	if err != nil {
		return 0, err
	}
	if !ok {
		return 0, fmt.Errorf("drop oldest of %s: %w: seq %d indexed but not stored", d.id, errMismatch, seq)
	}
	return size, nil
}

func (st *txStore) first(d *devState) (uint64, time.Time, error) {
	if d.q.len() == 0 {
		return 0, time.Time{}, fmt.Errorf("oldest of %s: %w: index empty, accounted %d", d.id, errMismatch, d.depth)
	}
	seq := d.q.front()
	v := st.msgs.Get(seqKey(seq))
	if v == nil {
		return 0, time.Time{}, fmt.Errorf("oldest of %s: %w: seq %d indexed but not stored", d.id, errMismatch, seq)
	}
	return seq, rawReceived(v), nil
}

// count recounts d from its index, dropping index entries that are not
// stored.
func (st *txStore) count(d *devState) (int, int64, error) {
	var missing []uint64
	var size int64
	for _, seq := range d.q.live() {
		v := st.msgs.Get(seqKey(seq))
		if v == nil {
			missing = append(missing, seq)
			continue
		}
		size += rawSize(v)
	}
	for _, seq := range missing {
		st.unindex(d, seq)
	}
	return d.q.len(), size, nil
}

func (st *txStore) popOldestDeadLetter(d *devState) (int64, error) {
	k, v := st.dead.Cursor().Seek(d.prefix)
	if k == nil || !isDevKey(k, d.prefix) {
		return 0, fmt.Errorf("evict dead letter of %s: %w: none stored, accounted %d", d.id, errMismatch, d.dlCount)
	}
	size := deadLetterSize(v)
	return size, st.dead.Delete(clone(k))
}

// purge deletes up to limit of d's oldest messages with seq <= upTo
// (ReasonPurge).
func (st *txStore) purge(d *devState, limit int, upTo uint64) (int, error) {
	var batch []uint64
	for _, seq := range d.q.live() {
		if seq > upTo || len(batch) == limit {
			break
		}
		batch = append(batch, seq)
	}
	n := 0
	for _, seq := range batch {
		size, ok, err := st.remove(d, seq)
		if err != nil {
			return n, err
		}
		if ok {
			st.l.removed(d, size, ReasonPurge)
			n++
		}
	}
	if len(batch) == 0 {
		return 0, nil
	}
	if d.depth != d.q.len() {
		return n, st.l.repair(d, st, fmt.Errorf("purge %s: %w: depth %d, index %d", d.id, errMismatch, d.depth, d.q.len()))
	}
	return n, st.l.refreshFirst(d, st)
}

// purgeDead deletes all of d's dead letters. The keys are collected first
// and deleted after: deleting under a cursor and then calling Next skips
// keys (bbolt README, #146).
func (st *txStore) purgeDead(d *devState) (int, error) {
	var keys [][]byte
	var sizes []int64
	c := st.dead.Cursor()
	for k, v := c.Seek(d.prefix); k != nil && isDevKey(k, d.prefix); k, v = c.Next() {
		keys = append(keys, clone(k))
		sizes = append(sizes, deadLetterSize(v))
	}
	l := st.l
	for i, k := range keys {
		if err := st.dead.Delete(k); err != nil {
			return i, err
		}
		l.deadLetterRemoved(d, sizes[i])
	}
	if d.dlCount != 0 || d.dlBytes != 0 {
		l.opts.Logger.Error("spool dead-letter accounting mismatch repaired", "device", d.id.String(), "count", d.dlCount, "bytes", d.dlBytes)
		l.touch(d)
		l.t.dlCount -= d.dlCount
		l.t.dlBytes -= d.dlBytes
		d.dlCount, d.dlBytes = 0, 0
	}
	return len(keys), nil
}

// deadLetter moves message seq of d to the dead letters.
func (st *txStore) deadLetter(d *devState, seq uint64, reason string, now time.Time) (bool, error) {
	l := st.l
	if !d.q.contains(seq) {
		return false, nil
	}
	v := st.msgs.Get(seqKey(seq))
	if v == nil {
		return false, nil
	}
	rec := clone(v)
	size, ok, err := st.remove(d, seq)
	if err != nil || !ok {
		return false, err
	}
	first := seq == d.firstSeq
	l.removed(d, size, ReasonDeadLetter)
	if first {
		if err := l.refreshFirst(d, st); err != nil {
			return false, err
		}
	}
	ok, err = l.admitDeadLetter(d, size, st)
	if err != nil || !ok {
		return true, err
	}
	if err := st.dead.Put(deadKey(d.prefix, seq), encodeDeadLetter(now, reason, rec)); err != nil {
		return false, err
	}
	l.deadLetterAdded(d, size)
	return true, nil
}
