package config

import (
	"errors"
	"slices"
	"strings"

	"github.com/BurntSushi/toml"
)

// Lines: BurntSushi/toml (v1.6.0) keeps each key's position but exposes it
// only through a ParseError raised while decoding that key. lineFinder uses
// that: it decodes the file into toml.Primitive values, walks down to the
// key and decodes it into a probe that always fails; the ParseError's
// Position is the key's line. The library records one position per dotted
// key name — for arrays of tables, that of the last element holding the
// key — so an earlier element's key is found in the shortest prefix of the
// file, cut before a "[[" line, that holds exactly as many occurrences.

// locator is a key in the file: its path and which occurrence (0-based,
// for keys repeated in arrays of tables).
type locator struct {
	path toml.Key
	occ  int
}

// parentKey strips the last element of a display key: a trailing "[i]" or
// ".name".
func parentKey(key string) string {
	if strings.HasSuffix(key, "]") {
		if i := strings.LastIndexByte(key, '['); i >= 0 {
			return key[:i]
		}
	}
	// The last '.' outside quotes.
	last, inQuote := -1, false
	for i := 0; i < len(key); i++ {
		switch key[i] {
		case '\\':
			if inQuote {
				i++
			}
		case '"':
			inQuote = !inQuote
		case '.':
			if !inQuote {
				last = i
			}
		}
	}
	if last < 0 {
		return ""
	}
	return key[:last]
}

// lineFinder finds the line of a key in a TOML document.
type lineFinder struct {
	data    string
	doc     *primDoc // nil if the document does not parse
	cuts    []int    // offsets of the lines starting with "[[", once computed
	budget  int      // bytes left for parsing prefixes
	hasCuts bool
}

type primDoc struct {
	md     toml.MetaData
	top    map[string]toml.Primitive
	text   string         // the document as the parser saw it (without a BOM)
	counts map[string]int // key → occurrences, once computed
}

func parsePrimDoc(data string) *primDoc {
	var top map[string]toml.Primitive
	md, err := safeDecode(data, &top)
	if err != nil {
		return nil
	}
	return &primDoc{md: md, top: top, text: stripBOM(data)}
}

// stripBOM removes a byte order mark the way the TOML parser does, so that
// byte offsets agree.
func stripBOM(s string) string {
	switch {
	case strings.HasPrefix(s, "\xff\xfe"), strings.HasPrefix(s, "\xfe\xff"):
		return s[2:]
	case strings.HasPrefix(s, "\xef\xbb\xbf"):
		return s[3:]
	}
	return s
}

func newLineFinder(data string) *lineFinder {
	return &lineFinder{data: data, doc: parsePrimDoc(data), budget: prefixParseBudget}
}

// prefixParseBudget bounds the bytes parsed to place earlier occurrences
// of keys in arrays of tables, for one document. Placing one costs about
// log2(elements) parses of a prefix, so the budget is never reached by a
// configuration a person wrote; past it, such errors carry the line of the
// nearest enclosing key found, or none.
const prefixParseBudget = 4 << 20

// line returns the 1-based line of loc, or 0 if it cannot be found.
func (lf *lineFinder) line(loc locator) int {
	if lf.doc == nil || len(loc.path) == 0 {
		return 0
	}
	n := lf.doc.count(loc.path)
	if loc.occ >= n-1 { // the last, or a table implied by dotted keys (n == 0)
		return lf.doc.lastLine(loc.path)
	}
	// An earlier occurrence, in an array of tables. The element after ours
	// starts at a "[[" line, and the document cut there parses and holds
	// exactly occ+1 occurrences, the last being ours. Over the cuts that
	// parse (a "[[" inside a multi-line string or array does not), the
	// count never decreases: binary-search the first cut holding occ+1.
	cuts := lf.arrayTableCuts()
	lo, hi := 0, len(cuts)
	var found *primDoc
	for lo < hi {
		i, doc := lf.parseNear(cuts, (lo+hi)/2, lo, hi)
		if doc == nil {
			break
		}
		if doc.count(loc.path) >= loc.occ+1 {
			found, hi = doc, i
		} else {
			lo = i + 1
		}
	}
	if found == nil || found.count(loc.path) != loc.occ+1 {
		return 0
	}
	return found.lastLine(loc.path)
}

// arrayTableCuts returns the offsets of the lines that start with "[[".
func (lf *lineFinder) arrayTableCuts() []int {
	if lf.hasCuts {
		return lf.cuts
	}
	lf.hasCuts = true
	for off := 0; off < len(lf.data); {
		next := strings.IndexByte(lf.data[off:], '\n')
		if next < 0 {
			break
		}
		off += next + 1
		if strings.HasPrefix(strings.TrimLeft(lf.data[off:], " \t"), "[[") {
			lf.cuts = append(lf.cuts, off)
		}
	}
	return lf.cuts
}

// parseNear parses the document cut at cuts[mid] or, if that does not
// parse, at the nearest cut in [lo, hi) that does, looking forward first.
// It returns nil when none does or the parse budget is spent.
func (lf *lineFinder) parseNear(cuts []int, mid, lo, hi int) (int, *primDoc) {
	try := func(i int) *primDoc {
		if lf.budget < cuts[i] {
			lf.budget = 0
			return nil
		}
		lf.budget -= cuts[i]
		return parsePrimDoc(lf.data[:cuts[i]])
	}
	for i := mid; i < hi && lf.budget > 0; i++ {
		if doc := try(i); doc != nil {
			return i, doc
		}
	}
	for i := mid - 1; i >= lo && lf.budget > 0; i-- {
		if doc := try(i); doc != nil {
			return i, doc
		}
	}
	return 0, nil
}

// count returns how often key appears in the document.
func (d *primDoc) count(key toml.Key) int {
	if d.counts == nil {
		d.counts = make(map[string]int)
		for _, k := range d.md.Keys() {
			d.counts[k.String()]++
		}
	}
	return d.counts[key.String()]
}

// lastLine returns the line the parser recorded for key or, for a table
// implied by dotted keys (which has none), for its first key that occurs
// once (the parser keeps only the last position of a repeated key).
func (d *primDoc) lastLine(key toml.Key) int {
	if n := d.probe(key); n > 0 {
		return n
	}
	for _, k := range d.md.Keys() {
		if len(k) > len(key) && slices.Equal(k[:len(key)], key) && d.count(k) == 1 {
			if n := d.probe(k); n > 0 {
				return n
			}
		}
	}
	return 0
}

// errLineProbe is returned by lineProbe to make the decoder report where it
// is.
var errLineProbe = errors.New("line probe")

type lineProbe struct{}

func (*lineProbe) UnmarshalTOML(any) error { return errLineProbe }

// probe decodes the value at key into a lineProbe and returns the line of
// the resulting ParseError.
func (d *primDoc) probe(key toml.Key) (line int) {
	defer func() {
		if recover() != nil {
			line = 0
		}
	}()
	if len(key) == 0 {
		return 0
	}
	prim, ok := d.top[key[0]]
	for _, part := range key[1:] {
		if !ok {
			return 0
		}
		prim, ok = d.child(prim, part)
	}
	if !ok {
		return 0
	}
	var pe toml.ParseError
	if err := d.md.PrimitiveDecode(prim, &lineProbe{}); !errors.As(err, &pe) || pe.Position.Line == 0 {
		return 0
	}
	// Position.Line is where the parser was when it recorded the key: for
	// a multi-line string value, the string's last line. Position.Start is
	// the byte offset of the value (or table header), on the key's line.
	start := min(pe.Position.Start, len(d.text))
	return 1 + strings.Count(d.text[:start], "\n")
}

// child returns part of a table, or of the last element of an array of
// tables that has it.
func (d *primDoc) child(prim toml.Primitive, part string) (toml.Primitive, bool) {
	var m map[string]toml.Primitive
	// toml leaves m nil (and returns no error) for a non-table value.
	if err := d.md.PrimitiveDecode(prim, &m); err == nil && m != nil {
		c, ok := m[part]
		return c, ok
	}
	var arr []map[string]toml.Primitive
	if err := d.md.PrimitiveDecode(prim, &arr); err == nil {
		for i := len(arr) - 1; i >= 0; i-- {
			if c, ok := arr[i][part]; ok {
				return c, true
			}
		}
	}
	return toml.Primitive{}, false
}
