package config

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

// maxConfigSize bounds the configuration file.
const maxConfigSize = 1 << 20

// maxReportedErrors bounds the errors one Parse reports.
const maxReportedErrors = 20

// Load reads and validates the configuration file at path.
func Load(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("load config: %w", err)
	}
	defer f.Close()
	return Parse(f, path)
}

// Parse reads a TOML configuration from r over Default and
// validates it. name is the file name used in error messages.
//
// Every problem is an *Error naming the key and, when the key is in
// the file, its line: syntax errors, unknown keys (compared exactly, case
// included), values of the wrong type, malformed durations and sizes, and
// everything Validate rejects. Several problems are joined with
// errors.Join (use errors.As for the first).
func Parse(r io.Reader, name string) (*Config, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxConfigSize+1))
	if err != nil {
		return nil, fmt.Errorf("read config %s: %w", name, err)
	}
	p := &parser{name: name, data: string(data)}
	if len(data) > maxConfigSize {
		return nil, p.finish([]*Error{{Msg: fmt.Sprintf("file is larger than %d bytes", maxConfigSize)}})
	}
	cfg := Default()
	if errs := p.decode(cfg); len(errs) > 0 {
		return nil, p.finish(errs)
	}
	if errs := cfg.validate(); len(errs) > 0 {
		return nil, p.finish(errs)
	}
	return cfg, nil
}

// Error is one problem in a configuration.
type Error struct {
	// File is the name given to Parse (the path, for Load).
	File string
	// Line is the 1-based line of Key in File; 0 when unknown (a default
	// value, or a Config built in code).
	Line int
	// Key is the dotted key, with [i] for array elements, for example
	// "broker.admin[1].user"; empty for a syntax error outside any key.
	Key string
	// Msg says what is wrong. It quotes a bad value where that helps, never
	// the value of an unknown key.
	Msg string
}

// Error formats the error as "file:line: key: msg", leaving out what is
// unknown.
func (e *Error) Error() string {
	var b strings.Builder
	switch {
	case e.File != "" && e.Line > 0:
		fmt.Fprintf(&b, "%s:%d: ", e.File, e.Line)
	case e.File != "":
		b.WriteString(e.File + ": ")
	case e.Line > 0:
		fmt.Fprintf(&b, "line %d: ", e.Line)
	}
	if e.Key != "" {
		b.WriteString(e.Key + ": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

type parser struct {
	name  string
	data  string
	locs  map[string]locator // display key → where it is in the file
	lines *lineFinder
}

// finish fills in file names and lines, orders the errors by line and
// joins them.
//
// Only the first maxReportedErrors (in the order found: document order for
// decoding, schema order for validation) are kept, before lines are looked
// up, so that a file with thousands of errors costs no more than one with
// a few.
func (p *parser) finish(errs []*Error) error {
	more := 0
	if len(errs) > maxReportedErrors {
		more = len(errs) - maxReportedErrors
		errs = errs[:maxReportedErrors]
	}
	for _, e := range errs {
		e.File = p.name
		if e.Line == 0 && e.Key != "" {
			e.Line = p.lineOf(e.Key)
		}
	}
	slices.SortStableFunc(errs, func(a, b *Error) int {
		if (a.Line == 0) != (b.Line == 0) {
			return cmp.Compare(b.Line, a.Line) // known lines first
		}
		return cmp.Compare(a.Line, b.Line)
	})
	out := make([]error, 0, len(errs)+1)
	for _, e := range errs {
		out = append(out, e)
	}
	if more > 0 {
		out = append(out, fmt.Errorf("%s: %d more errors", p.name, more))
	}
	return errors.Join(out...)
}

// lineOf returns the line of a display key, or of its nearest enclosing
// key in the file ("broker.admin[1].user" → "broker.admin[1]" → ...).
func (p *parser) lineOf(key string) int {
	if p.lines == nil {
		p.lines = newLineFinder(p.data)
	}
	for key != "" {
		if loc, ok := p.locs[key]; ok {
			if n := p.lines.line(loc); n > 0 {
				return n
			}
		}
		key = parentKey(key)
	}
	return 0
}

// oneLine makes a library message safe for a one-line log record.
func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
}
