package spool

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
)

// verifyFile walks the B+tree of a bbolt file with plain reads and bounds
// checks, before bbolt maps it. bbolt trusts the page pointers it reads:
// a damaged page id makes it read outside the mapping, a fault the Go
// runtime cannot recover from, and with NoFreelistSync its Open walks the
// whole tree in a goroutine of its own where even an ordinary panic kills
// the process. A gateway must not crash-loop on a damaged spool; this walk
// proves that every page pointer is in range, every page is a branch or a
// leaf that identifies itself correctly and is referenced once, and every
// element lies within its page, so bbolt's own walk (and tx.Check, which
// also checks key order) can run safely afterwards.
//
// It understands bbolt's file format version 2 (bbolt 1.3 and 1.4/1.5),
// native byte order, as bbolt writes it.
func verifyFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	v := &verifier{f: f, size: fi.Size()}
	return v.run()
}

const (
	boltMagic      = 0xED0CDAED
	boltVersion    = 2
	pageHeaderSize = 16
	elemSize       = 16 // branch and leaf elements
	inBucketSize   = 16
	pageBranch     = 0x01
	pageLeaf       = 0x02
	pageMeta       = 0x04
	noFreelist     = ^uint64(0)
	maxTreeDepth   = 64
	maxPageSize    = 1 << 24
	minPageSize    = 1 << 9
)

var ne = binary.NativeEndian

type boltMeta struct {
	pageSize uint32
	root     uint64
	freelist uint64
	pgid     uint64
	txid     uint64
}

type verifier struct {
	f        *os.File
	size     int64
	pageSize int64
	hwm      uint64   // meta pgid: pages [0, hwm) exist
	seen     []uint64 // bitset of referenced pages
	pages    int
}

func (v *verifier) run() error {
	m, err := v.meta()
	if err != nil {
		return err
	}
	v.pageSize = int64(m.pageSize)
	v.hwm = m.pgid
	if v.hwm < 3 {
		return fmt.Errorf("meta: high-water mark %d too small", v.hwm)
	}
	if need := int64(v.hwm) * v.pageSize; need > v.size || int64(v.hwm) > v.size/v.pageSize {
		return fmt.Errorf("file is %d bytes, meta needs %d pages of %d bytes (truncated?)", v.size, v.hwm, v.pageSize)
	}
	if m.freelist != noFreelist && (m.freelist < 2 || m.freelist >= v.hwm) {
		return fmt.Errorf("meta: freelist page %d out of range [2, %d)", m.freelist, v.hwm)
	}
	v.seen = make([]uint64, (v.hwm+63)/64)
	_, err = v.page(m.root, 0, nil, nil, nil)
	return err
}

// meta picks the meta page bbolt would use: of the two meta pages, the
// valid one with the higher transaction id.
func (v *verifier) meta() (boltMeta, error) {
	read := func(off int64) (boltMeta, error) {
		buf := make([]byte, pageHeaderSize+64)
		if off+int64(len(buf)) > v.size {
			return boltMeta{}, fmt.Errorf("meta page at offset %d: beyond the end of the file", off)
		}
		if _, err := v.f.ReadAt(buf, off); err != nil {
			return boltMeta{}, err
		}
		m, err := parseMeta(buf)
		if err != nil {
			return m, fmt.Errorf("meta page at offset %d: %w", off, err)
		}
		return m, nil
	}
	m0, err0 := read(0)
	var m1 boltMeta
	err1 := errors.New("meta page 1 not found")
	if err0 == nil {
		if m1, err1 = read(int64(m0.pageSize)); err1 == nil && m1.pageSize != m0.pageSize {
			err1 = fmt.Errorf("meta page 1 has page size %d, meta 0 %d", m1.pageSize, m0.pageSize)
		}
	} else {
		// Meta 0 is damaged: meta 1 is one page in, at a page size bbolt
		// would try.
		for i := 0; i <= 14; i++ {
			off := int64(1024) << i
			if m, err := read(off); err == nil && int64(m.pageSize) == off {
				m1, err1 = m, nil
				break
			}
		}
	}
	switch {
	case err0 != nil && err1 != nil:
		return boltMeta{}, err0
	case err0 != nil:
		return m1, nil
	case err1 != nil || m0.txid >= m1.txid:
		return m0, nil
	}
	return m1, nil
}

func parseMeta(b []byte) (boltMeta, error) {
	if ne.Uint16(b[8:]) != pageMeta {
		return boltMeta{}, errors.New("not a meta page")
	}
	m := b[pageHeaderSize:]
	if ne.Uint32(m[0:]) != boltMagic {
		return boltMeta{}, errors.New("bad magic (not a bbolt file)")
	}
	if ne.Uint32(m[4:]) != boltVersion {
		return boltMeta{}, fmt.Errorf("unsupported bbolt format version %d", ne.Uint32(m[4:]))
	}
	h := fnv.New64a()
	h.Write(m[:56])
	if h.Sum64() != ne.Uint64(m[56:]) {
		return boltMeta{}, errors.New("checksum mismatch")
	}
	out := boltMeta{
		pageSize: ne.Uint32(m[8:]),
		root:     ne.Uint64(m[16:]),
		freelist: ne.Uint64(m[32:]),
		pgid:     ne.Uint64(m[40:]),
		txid:     ne.Uint64(m[48:]),
	}
	if out.pageSize < minPageSize || out.pageSize > maxPageSize || out.pageSize&(out.pageSize-1) != 0 {
		return boltMeta{}, fmt.Errorf("page size %d invalid", out.pageSize)
	}
	return out, nil
}

// page verifies the page id (a bucket's root or a branch child) and its
// subtree, whose keys must lie in [minKey, maxKey) (nil: unbounded), and
// returns the largest key in the subtree. The key-order rules are
// bbolt's own (tx_check.go), which its Open enforces by panicking.
func (v *verifier) page(id uint64, depth int, stack []uint64, minKey, maxKey []byte) ([]byte, error) {
	stack = append(stack, id)
	if depth > maxTreeDepth {
		return nil, fmt.Errorf("page %d: tree deeper than %d (stack %v)", id, maxTreeDepth, stack)
	}
	if id < 2 || id >= v.hwm {
		return nil, fmt.Errorf("page %d: out of range [2, %d) (stack %v)", id, v.hwm, stack)
	}
	hdr := make([]byte, pageHeaderSize)
	if _, err := v.f.ReadAt(hdr, int64(id)*v.pageSize); err != nil {
		return nil, fmt.Errorf("page %d: %w", id, err)
	}
	if got := ne.Uint64(hdr); got != id {
		return nil, fmt.Errorf("page %d: identifies as %d (stack %v)", id, got, stack)
	}
	flags := ne.Uint16(hdr[8:])
	if flags != pageBranch && flags != pageLeaf {
		return nil, fmt.Errorf("page %d: type %#x is neither branch nor leaf (stack %v)", id, flags, stack)
	}
	overflow := uint64(ne.Uint32(hdr[12:]))
	if id+overflow >= v.hwm {
		return nil, fmt.Errorf("page %d: %d overflow pages run past the end %d (stack %v)", id, overflow, v.hwm, stack)
	}
	for p := id; p <= id+overflow; p++ {
		if v.seen[p/64]&(1<<(p%64)) != 0 {
			return nil, fmt.Errorf("page %d: referenced twice (stack %v)", p, stack)
		}
		v.seen[p/64] |= 1 << (p % 64)
	}
	v.pages++
	buf := make([]byte, int64(overflow+1)*v.pageSize)
	if _, err := v.f.ReadAt(buf, int64(id)*v.pageSize); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("page %d: %w", id, err)
	}
	return v.elements(buf, depth, stack, true, minKey, maxKey)
}

// elements verifies the elements of a branch or leaf page held in buf
// (a page of the file, or an inline bucket's page).
func (v *verifier) elements(buf []byte, depth int, stack []uint64, onDisk bool, minKey, maxKey []byte) ([]byte, error) {
	id := stack[len(stack)-1]
	if len(buf) < pageHeaderSize {
		return nil, fmt.Errorf("page %d: inline page shorter than its header (stack %v)", id, stack)
	}
	flags := ne.Uint16(buf[8:])
	count := int(ne.Uint16(buf[10:]))
	if !onDisk && flags != pageLeaf {
		return nil, fmt.Errorf("page %d: inline bucket page type %#x is not a leaf (stack %v)", id, flags, stack)
	}
	if pageHeaderSize+count*elemSize > len(buf) {
		return nil, fmt.Errorf("page %d: %d elements do not fit in %d bytes (stack %v)", id, count, len(buf), stack)
	}
	// bbolt checks key order on pages of the file, not in inline buckets.
	order := func(i int, key, prev []byte) error {
		if !onDisk {
			return nil
		}
		switch {
		case i == 0 && prev != nil && bytes.Compare(prev, key) > 0,
			i > 0 && bytes.Compare(prev, key) >= 0:
			return fmt.Errorf("page %d: key %d %x out of order after %x (stack %v)", id, i, key, prev, stack)
		case maxKey != nil && bytes.Compare(key, maxKey) >= 0:
			return fmt.Errorf("page %d: key %d %x not below its parent's next key %x (stack %v)", id, i, key, maxKey, stack)
		}
		return nil
	}
	running := minKey
	var maxInSubtree []byte
	for i := 0; i < count; i++ {
		at := pageHeaderSize + i*elemSize
		e := buf[at : at+elemSize]
		if flags == pageBranch {
			pos, ksize, child := int64(ne.Uint32(e[0:])), int64(ne.Uint32(e[4:])), ne.Uint64(e[8:])
			if int64(at)+pos+ksize > int64(len(buf)) {
				return nil, fmt.Errorf("page %d: branch element %d key outside the page (stack %v)", id, i, stack)
			}
			key := buf[int64(at)+pos : int64(at)+pos+ksize]
			if err := order(i, key, running); err != nil {
				return nil, err
			}
			next := maxKey
			if i < count-1 {
				ne2 := buf[at+elemSize : at+2*elemSize]
				p2, k2 := int64(ne.Uint32(ne2[0:])), int64(ne.Uint32(ne2[4:]))
				if int64(at+elemSize)+p2+k2 > int64(len(buf)) {
					return nil, fmt.Errorf("page %d: branch element %d key outside the page (stack %v)", id, i+1, stack)
				}
				next = buf[int64(at+elemSize)+p2 : int64(at+elemSize)+p2+k2]
			}
			sub, err := v.page(child, depth+1, stack, key, next)
			if err != nil {
				return nil, err
			}
			running, maxInSubtree = sub, sub
			continue
		}
		eflags, pos, ksize, vsize := ne.Uint32(e[0:]), int64(ne.Uint32(e[4:])), int64(ne.Uint32(e[8:])), int64(ne.Uint32(e[12:]))
		end := int64(at) + pos + ksize + vsize
		if end > int64(len(buf)) {
			return nil, fmt.Errorf("page %d: leaf element %d outside the page (stack %v)", id, i, stack)
		}
		key := buf[int64(at)+pos : int64(at)+pos+ksize]
		if err := order(i, key, running); err != nil {
			return nil, err
		}
		running, maxInSubtree = key, key
		if eflags&1 == 0 {
			continue
		}
		val := buf[int64(at)+pos+ksize : end]
		if len(val) < inBucketSize {
			return nil, fmt.Errorf("page %d: bucket element %d header truncated (stack %v)", id, i, stack)
		}
		if root := ne.Uint64(val); root != 0 {
			// A sub-bucket: its keys are checked on their own.
			if _, err := v.page(root, depth+1, stack, nil, nil); err != nil {
				return nil, err
			}
			continue
		}
		if depth+1 > maxTreeDepth {
			return nil, fmt.Errorf("page %d: inline buckets nested deeper than %d (stack %v)", id, maxTreeDepth, stack)
		}
		if _, err := v.elements(val[inBucketSize:], depth+1, stack, false, nil, nil); err != nil {
			return nil, err
		}
	}
	return maxInSubtree, nil
}
