package boltcheck

import (
	"bytes"
	"errors"
	"io"
	"os"
)

// A Salvager reads what it can from a damaged bbolt file with plain,
// bounds-checked reads, never through bbolt. Walk visits the key/value
// pairs still reachable from the meta page bbolt would use and reports
// the subtrees it could not read; Orphans visits the pairs on leaf pages
// the walk did not reach (pages of lost subtrees, and stale copies on free
// pages: the caller decides which to trust).
type Salvager struct {
	c       checker
	pages   int64 // whole pages in the file
	root    uint64
	hasMeta bool
	reached []uint64 // bitset of pages reached by Walk
}

// Lost is a subtree Walk could not read: in bucket (the path of bucket
// names from the root), the keys in [From, To) (nil: unbounded).
type Lost struct {
	Bucket   [][]byte
	From, To []byte
	Err      error
}

// NewSalvager prepares to salvage the file of size bytes read through r.
// It fails only if r cannot be read at all; a file without a usable meta
// page has nothing reachable, and Orphans assumes 4 KiB pages.
func NewSalvager(r io.ReaderAt, size int64) *Salvager {
	s := &Salvager{c: checker{r: r, size: size}}
	m, err := s.c.meta()
	s.c.pageSize = 4096
	if err == nil {
		s.c.pageSize, s.root, s.hasMeta = int64(m.pageSize), m.root, true
	}
	s.pages = size / s.c.pageSize
	// Reads stop at the end of the file, whatever the meta claims.
	s.c.hwm = uint64(s.pages)
	s.c.seen = make([]uint64, (s.pages+63)/64)
	s.reached = s.c.seen
	return s
}

// SalvageFile opens path read-only and returns a Salvager for it, with
// the file to close.
func SalvageFile(path string) (*Salvager, io.Closer, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return NewSalvager(f, fi.Size()), f, nil
}

// Walk visits every key/value pair reachable from the meta page, in key
// order within each bucket, skipping damaged subtrees, which it returns.
// Sub-buckets are visited as a pair with isBucket set (value: the bucket
// header, sequence at offset 8), then their contents with bucket extended.
// The slices passed to visit are only valid during the call.
func (s *Salvager) Walk(visit func(bucket [][]byte, k, v []byte, isBucket bool)) []Lost {
	if !s.hasMeta {
		return []Lost{{Err: errors.New("no valid meta page")}}
	}
	var lost []Lost
	s.walkPage(s.root, 0, nil, nil, nil, visit, &lost)
	return lost
}

func (s *Salvager) walkPage(id uint64, depth int, bucket [][]byte, from, to []byte, visit func([][]byte, []byte, []byte, bool), lost *[]Lost) {
	fail := func(err error) {
		*lost = append(*lost, Lost{Bucket: bucket, From: from, To: to, Err: err})
	}
	if depth > maxTreeDepth {
		fail(errors.New("tree too deep"))
		return
	}
	buf, err := s.c.read(id, nil, func(flags uint16) error {
		if flags != pageBranch && flags != pageLeaf {
			return errors.New("neither branch nor leaf")
		}
		return nil
	})
	if err != nil {
		fail(err)
		return
	}
	s.walkElements(buf, depth, bucket, from, to, true, visit, lost)
}

func (s *Salvager) walkElements(buf []byte, depth int, bucket [][]byte, from, to []byte, onDisk bool, visit func([][]byte, []byte, []byte, bool), lost *[]Lost) {
	fail := func(err error) {
		*lost = append(*lost, Lost{Bucket: bucket, From: from, To: to, Err: err})
	}
	if len(buf) < pageHeaderSize {
		fail(errors.New("page shorter than its header"))
		return
	}
	flags, count := ne.Uint16(buf[8:]), int(ne.Uint16(buf[10:]))
	if pageHeaderSize+count*elemSize > len(buf) || (!onDisk && flags != pageLeaf) {
		fail(errors.New("bad page header"))
		return
	}
	for i := 0; i < count; i++ {
		at := pageHeaderSize + i*elemSize
		e := buf[at : at+elemSize]
		if flags == pageBranch {
			key, err := branchKey(buf, at)
			if err != nil {
				fail(err)
				return
			}
			next := to
			if i < count-1 {
				if k, err := branchKey(buf, at+elemSize); err == nil {
					next = k
				}
			}
			s.walkPage(ne.Uint64(e[8:]), depth+1, bucket, bytes.Clone(key), bytes.Clone(next), visit, lost)
			continue
		}
		eflags, pos, ksize, vsize := ne.Uint32(e[0:]), int64(ne.Uint32(e[4:])), int64(ne.Uint32(e[8:])), int64(ne.Uint32(e[12:]))
		end := int64(at) + pos + ksize + vsize
		if end > int64(len(buf)) || int64(at)+pos+ksize > int64(len(buf)) {
			// Elements after a bad one may still be fine.
			continue
		}
		key := buf[int64(at)+pos : int64(at)+pos+ksize]
		val := buf[int64(at)+pos+ksize : end]
		isBucket := eflags&bucketLeafFlag != 0
		visit(bucket, key, val, isBucket)
		if !isBucket || len(val) < inBucketSize || depth+1 > maxTreeDepth {
			continue
		}
		sub := append(append([][]byte(nil), bucket...), bytes.Clone(key))
		if root := ne.Uint64(val); root != 0 {
			s.walkPage(root, depth+1, sub, nil, nil, visit, lost)
		} else if onDisk {
			s.walkElements(val[inBucketSize:], depth+1, sub, nil, nil, false, visit, lost)
		}
	}
}

// Orphans visits the key/value pairs (not sub-buckets) on leaf pages that
// Walk did not reach, page by page in file order. Call it after Walk. A
// leaf page must identify itself with its own id; its elements are read as
// far as the file holds them.
func (s *Salvager) Orphans(visit func(k, v []byte)) {
	ps := s.c.pageSize
	hdr := make([]byte, pageHeaderSize)
	for p := int64(2); p < s.pages; p++ {
		if s.reached[p/64]&(1<<(p%64)) != 0 {
			continue
		}
		if _, err := s.c.r.ReadAt(hdr, p*ps); err != nil {
			continue
		}
		if int64(ne.Uint64(hdr)) != p || ne.Uint16(hdr[8:]) != pageLeaf {
			continue
		}
		n := min(int64(ne.Uint32(hdr[12:]))+1, s.pages-p)
		buf := make([]byte, n*ps)
		if _, err := s.c.r.ReadAt(buf, p*ps); err != nil && !errors.Is(err, io.EOF) {
			continue
		}
		count := int(ne.Uint16(buf[10:]))
		for i := 0; i < count && pageHeaderSize+(i+1)*elemSize <= len(buf); i++ {
			at := pageHeaderSize + i*elemSize
			e := buf[at : at+elemSize]
			pos, ksize, vsize := int64(ne.Uint32(e[4:])), int64(ne.Uint32(e[8:])), int64(ne.Uint32(e[12:]))
			end := int64(at) + pos + ksize + vsize
			if ne.Uint32(e[0:])&bucketLeafFlag != 0 || end > int64(len(buf)) {
				continue
			}
			visit(buf[int64(at)+pos:int64(at)+pos+ksize], buf[int64(at)+pos+ksize:end])
		}
		p += n - 1
	}
}
