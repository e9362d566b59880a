// Package boltcheck proves that a bbolt file is safe to hand to bbolt.
//
// bbolt trusts the page pointers it reads: a damaged page id makes it read
// outside its memory map, a fault the Go runtime cannot recover from, and
// with NoFreelistSync its Open walks the whole tree in a goroutine of its
// own where even an ordinary panic (a key-order violation, say) kills the
// process. A gateway must not crash-loop on a damaged spool or registry
// (docs/architecture.md: bad input is answered, not fatal), so both the
// spool and the registry run File before bbolt maps a file, and bbolt's
// own tx.Check (Tx) after.
//
// File understands bbolt's file format version 2 (bbolt 1.3 to 1.5), in
// native byte order as bbolt writes it (go.etcd.io/bbolt/internal/common):
// a page starts with a 16-byte header {id u64, flags u16, count u16,
// overflow u32}, followed by count 16-byte elements. A branch element is
// {pos u32, ksize u32, pgid u64}, a leaf element {flags u32, pos u32,
// ksize u32, vsize u32}; pos is relative to the element. A bucket value is
// {root pgid u64, sequence u64}, followed by an inline leaf page when root
// is 0. Meta pages (0 and 1) hold {magic, version, pageSize, flags u32;
// root bucket (16 bytes); freelist, pgid (high-water mark), txid u64;
// checksum u64 = FNV-64a of the preceding 56 bytes}.
package boltcheck

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"

	bolt "go.etcd.io/bbolt"
)

const (
	boltMagic      = 0xED0CDAED
	boltVersion    = 2
	pageHeaderSize = 16
	elemSize       = 16 // branch and leaf elements
	inBucketSize   = 16 // bucket header in a leaf value
	metaSize       = 64
	pageBranch     = 0x01
	pageLeaf       = 0x02
	pageMeta       = 0x04
	pageFreelist   = 0x10
	bucketLeafFlag = 0x01
	noFreelist     = ^uint64(0)
	maxTreeDepth   = 64
	maxPageSize    = 1 << 24
	minPageSize    = 1 << 9
)

var ne = binary.NativeEndian

// File checks the bbolt file at path with plain bounds-checked reads (see
// Check). It opens the file read-only and never writes to it.
func File(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	return Check(f, fi.Size())
}

// Check verifies, trusting nothing in the data, that everything bbolt will
// reach from the meta page it would use is sound: the page size is sane
// and the file holds every page up to the meta's high-water mark; every
// page reachable from the root (bucket trees, nested and inline buckets,
// the freelist page if the file has one) lies in range, identifies itself
// with its own id, has the type its parent expects and is referenced once;
// every element, key and value lies inside its page; and keys ascend
// within their parents' bounds, exactly as bbolt's own check demands.
// When Check passes, bbolt can open and walk the file without faulting;
// free-page accounting is left to bbolt's tx.Check (see Tx).
//
// Errors name the page, and for tree pages the stack of page ids that led
// to it; they show keys in hex, never values.
func Check(r io.ReaderAt, size int64) error {
	c := &checker{r: r, size: size}
	return c.run()
}

// Tx runs bbolt's own consistency check in tx and returns its first max
// findings (all of them if max <= 0). It is safe in a read transaction
// only while no writer can commit, for instance on a file opened
// read-only. Pass bolt.WithKVStringer to control how keys and values
// appear in the findings.
func Tx(tx *bolt.Tx, max int, opts ...bolt.CheckOption) []error {
	var problems []error
	for err := range tx.Check(opts...) {
		if max <= 0 || len(problems) < max {
			problems = append(problems, err)
		}
	}
	return problems
}

type meta struct {
	pageSize uint32
	root     uint64
	freelist uint64
	pgid     uint64
	txid     uint64
}

type checker struct {
	r        io.ReaderAt
	size     int64
	pageSize int64
	hwm      uint64   // meta pgid: pages [0, hwm) exist
	seen     []uint64 // bitset of referenced pages
}

func (c *checker) run() error {
	m, err := c.meta()
	if err != nil {
		return err
	}
	c.pageSize = int64(m.pageSize)
	c.hwm = m.pgid
	if c.hwm < 3 {
		return fmt.Errorf("meta: high-water mark %d too small", c.hwm)
	}
	if need := int64(c.hwm) * c.pageSize; need > c.size || int64(c.hwm) > c.size/c.pageSize {
		return fmt.Errorf("file is %d bytes, meta needs %d pages of %d bytes (truncated?)", c.size, c.hwm, c.pageSize)
	}
	c.seen = make([]uint64, (c.hwm+63)/64)
	if m.freelist != noFreelist {
		if err := c.freelist(m.freelist); err != nil {
			return err
		}
	}
	_, err = c.page(m.root, 0, nil, nil, nil)
	return err
}

// meta picks the meta page bbolt would use: of the two meta pages, the
// valid one with the higher transaction id.
func (c *checker) meta() (meta, error) {
	read := func(off int64) (meta, error) {
		buf := make([]byte, pageHeaderSize+metaSize)
		if off+int64(len(buf)) > c.size {
			return meta{}, fmt.Errorf("meta page at offset %d: beyond the end of the file", off)
		}
		if _, err := c.r.ReadAt(buf, off); err != nil {
			return meta{}, fmt.Errorf("meta page at offset %d: %w", off, err)
		}
		m, err := parseMeta(buf)
		if err != nil {
			return m, fmt.Errorf("meta page at offset %d: %w", off, err)
		}
		return m, nil
	}
	m0, err0 := read(0)
	var m1 meta
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
		return meta{}, err0
	case err0 != nil:
		return m1, nil
	case err1 != nil || m0.txid >= m1.txid:
		return m0, nil
	}
	return m1, nil
}

func parseMeta(b []byte) (meta, error) {
	if ne.Uint16(b[8:]) != pageMeta {
		return meta{}, errors.New("not a meta page")
	}
	m := b[pageHeaderSize:]
	if ne.Uint32(m[0:]) != boltMagic {
		return meta{}, errors.New("bad magic (not a bbolt file)")
	}
	if ne.Uint32(m[4:]) != boltVersion {
		return meta{}, fmt.Errorf("unsupported bbolt format version %d", ne.Uint32(m[4:]))
	}
	h := fnv.New64a()
	h.Write(m[:56])
	if h.Sum64() != ne.Uint64(m[56:]) {
		return meta{}, errors.New("checksum mismatch")
	}
	out := meta{
		pageSize: ne.Uint32(m[8:]),
		root:     ne.Uint64(m[16:]),
		freelist: ne.Uint64(m[32:]),
		pgid:     ne.Uint64(m[40:]),
		txid:     ne.Uint64(m[48:]),
	}
	if out.pageSize < minPageSize || out.pageSize > maxPageSize || out.pageSize&(out.pageSize-1) != 0 {
		return meta{}, fmt.Errorf("page size %d invalid", out.pageSize)
	}
	return out, nil
}

// read reads page id with its overflow pages after checking that they lie
// below the high-water mark, that the page identifies as id, that typeOK
// accepts its type, and that none of them was reached before.
func (c *checker) read(id uint64, stack []uint64, typeOK func(flags uint16) error) ([]byte, error) {
	if id < 2 || id >= c.hwm {
		return nil, fmt.Errorf("page %d: out of range [2, %d) (stack %v)", id, c.hwm, stack)
	}
	hdr := make([]byte, pageHeaderSize)
	if _, err := c.r.ReadAt(hdr, int64(id)*c.pageSize); err != nil {
		return nil, fmt.Errorf("page %d: %w", id, err)
	}
	if got := ne.Uint64(hdr); got != id {
		return nil, fmt.Errorf("page %d: identifies as %d (stack %v)", id, got, stack)
	}
	if err := typeOK(ne.Uint16(hdr[8:])); err != nil {
		return nil, err
	}
	overflow := uint64(ne.Uint32(hdr[12:]))
	if id+overflow >= c.hwm {
		return nil, fmt.Errorf("page %d: %d overflow pages run past the end %d (stack %v)", id, overflow, c.hwm, stack)
	}
	for p := id; p <= id+overflow; p++ {
		if c.seen[p/64]&(1<<(p%64)) != 0 {
			return nil, fmt.Errorf("page %d: referenced twice (stack %v)", p, stack)
		}
		c.seen[p/64] |= 1 << (p % 64)
	}
	buf := make([]byte, int64(overflow+1)*c.pageSize)
	if _, err := c.r.ReadAt(buf, int64(id)*c.pageSize); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("page %d: %w", id, err)
	}
	return buf, nil
}

// freelist checks the freelist page: in range, of the freelist type, its
// entries inside it.
func (c *checker) freelist(id uint64) error {
	buf, err := c.read(id, nil, func(flags uint16) error {
		if flags != pageFreelist {
			return fmt.Errorf("page %d: type %#x is not a freelist", id, flags)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("freelist: %w", err)
	}
	idx, count := uint64(0), uint64(ne.Uint16(buf[10:]))
	if count == 0xFFFF {
		idx, count = 1, ne.Uint64(buf[pageHeaderSize:])
	}
	if max := uint64(len(buf)-pageHeaderSize) / 8; count > max || idx+count > max {
		return fmt.Errorf("freelist page %d: %d entries do not fit", id, count)
	}
	return nil
}

// page verifies the page id (a bucket's root or a branch child) and its
// subtree, whose keys must lie in [minKey, maxKey) (nil: unbounded), and
// returns the largest key in the subtree. The key-order rules are bbolt's
// own (tx_check.go), which its Open enforces by panicking.
func (c *checker) page(id uint64, depth int, stack []uint64, minKey, maxKey []byte) ([]byte, error) {
	stack = append(stack, id)
	if depth > maxTreeDepth {
		return nil, fmt.Errorf("page %d: tree deeper than %d (stack %v)", id, maxTreeDepth, stack)
	}
	buf, err := c.read(id, stack, func(flags uint16) error {
		if flags != pageBranch && flags != pageLeaf {
			return fmt.Errorf("page %d: type %#x is neither branch nor leaf (stack %v)", id, flags, stack)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return c.elements(buf, depth, stack, true, minKey, maxKey)
}

// elements verifies the elements of a branch or leaf page held in buf (a
// page of the file, or an inline bucket's page).
func (c *checker) elements(buf []byte, depth int, stack []uint64, onDisk bool, minKey, maxKey []byte) ([]byte, error) {
	id := stack[len(stack)-1]
	if len(buf) < pageHeaderSize {
		return nil, fmt.Errorf("page %d: inline page shorter than its header (stack %v)", id, stack)
	}
	flags := ne.Uint16(buf[8:])
	count := int(ne.Uint16(buf[10:]))
	if !onDisk && flags != pageLeaf {
		return nil, fmt.Errorf("page %d: inline bucket page type %#x is not a leaf (stack %v)", id, flags, stack)
	}
	if flags == pageBranch && count == 0 {
		return nil, fmt.Errorf("page %d: empty branch page (stack %v)", id, stack)
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
			key, err := branchKey(buf, at)
			if err != nil {
				return nil, fmt.Errorf("page %d: branch element %d %w (stack %v)", id, i, err, stack)
			}
			if err := order(i, key, running); err != nil {
				return nil, err
			}
			next := maxKey
			if i < count-1 {
				if next, err = branchKey(buf, at+elemSize); err != nil {
					return nil, fmt.Errorf("page %d: branch element %d %w (stack %v)", id, i+1, err, stack)
				}
			}
			sub, err := c.page(ne.Uint64(e[8:]), depth+1, stack, key, next)
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
		if eflags&bucketLeafFlag == 0 {
			continue
		}
		if !onDisk {
			// bbolt inlines only buckets without sub-buckets.
			return nil, fmt.Errorf("page %d: leaf element %d: nested bucket inside an inline bucket (stack %v)", id, i, stack)
		}
		val := buf[int64(at)+pos+ksize : end]
		if len(val) < inBucketSize {
			return nil, fmt.Errorf("page %d: bucket element %d header truncated (stack %v)", id, i, stack)
		}
		if root := ne.Uint64(val); root != 0 {
			// A sub-bucket: its keys are checked on their own.
			if _, err := c.page(root, depth+1, stack, nil, nil); err != nil {
				return nil, err
			}
			continue
		}
		if depth+1 > maxTreeDepth {
			return nil, fmt.Errorf("page %d: inline buckets nested deeper than %d (stack %v)", id, maxTreeDepth, stack)
		}
		if _, err := c.elements(val[inBucketSize:], depth+1, stack, false, nil, nil); err != nil {
			return nil, err
		}
	}
	return maxInSubtree, nil
}

// branchKey returns the key of the branch element at offset at of buf.
func branchKey(buf []byte, at int) ([]byte, error) {
	pos, ksize := int64(ne.Uint32(buf[at:])), int64(ne.Uint32(buf[at+4:]))
	if int64(at)+pos+ksize > int64(len(buf)) {
		return nil, errors.New("key outside the page")
	}
	return buf[int64(at)+pos : int64(at)+pos+ksize], nil
}
