package spool

import "sort"

// seqQueue is the in-memory index of one device's queued seqs in the
// spool, ascending. Removals happen mostly at or near the front (acks of
// an in-flight window, drops of the oldest), so a removal shifts the part
// before it.
type seqQueue struct {
	s    []uint64
	head int
}

func (q *seqQueue) len() int        { return len(q.s) - q.head }
func (q *seqQueue) live() []uint64  { return q.s[q.head:] }
func (q *seqQueue) front() uint64   { return q.s[q.head] }
func (q *seqQueue) push(seq uint64) { q.s = append(q.s, seq) }

func (q *seqQueue) popBack() {
	q.s = q.s[:len(q.s)-1]
	q.reset()
}

// search returns the index in live() of the first seq >= seq.
func (q *seqQueue) search(seq uint64) int {
	live := q.live()
	return sort.Search(len(live), func(i int) bool { return live[i] >= seq })
}

// contains reports whether seq is queued.
func (q *seqQueue) contains(seq uint64) bool {
	i := q.search(seq)
	return i < q.len() && q.live()[i] == seq
}

// remove deletes seq and reports whether it was present.
func (q *seqQueue) remove(seq uint64) bool {
	i := q.search(seq)
	live := q.live()
	if i == len(live) || live[i] != seq {
		return false
	}
	copy(live[1:i+1], live[:i])
	q.s[q.head] = 0
	q.head++
	q.reset()
	return true
}

// insert puts seq back (undo of remove).
func (q *seqQueue) insert(seq uint64) {
	i := q.search(seq)
	if q.head > 0 {
		q.head--
		live := q.live()
		copy(live[:i], live[1:i+1])
		live[i] = seq
		return
	}
	q.s = append(q.s, 0)
	copy(q.s[i+1:], q.s[i:])
	q.s[i] = seq
}

// reset reclaims the consumed front, and the memory of a large backlog
// once it is drained.
func (q *seqQueue) reset() {
	switch {
	case q.head == len(q.s) && cap(q.s) > 1024:
		q.s, q.head = nil, 0
	case q.head == len(q.s):
		q.s, q.head = q.s[:0], 0
	case q.head >= 64 && q.head*2 >= len(q.s):
		n := copy(q.s, q.s[q.head:])
		q.s, q.head = q.s[:n], 0
	}
}
