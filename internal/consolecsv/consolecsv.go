// Package consolecsv reads the device and product lists that the cloud
// consoles (Alibaba Cloud IoT Platform, EnOS) export in batch: a header
// naming the columns, then one record per line. Both `edgegw ctl import`
// and the cloud simulator read them through this package, so they accept
// exactly the same files.
//
// What is accepted: the required columns in any order and any letter case,
// surrounded by spaces or not; other columns, which are ignored; a UTF-8
// byte order mark; CRLF or LF line ends; blank lines and lines whose fields
// are all blank, which are skipped; quoted fields as RFC 4180 has them.
// Every error is an *Error naming the input and the line, and the column
// when one field is at fault. Errors never quote field values, so a secret
// in a malformed line is never echoed.
package consolecsv

import (
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Column names as the consoles write them in the header.
const (
	ProductKey    = "ProductKey"
	DeviceName    = "DeviceName" // EnOS: deviceKey
	DeviceSecret  = "DeviceSecret"
	ProductSecret = "ProductSecret"
)

// The columns of a device list and of a product list.
var (
	DeviceColumns  = []string{ProductKey, DeviceName, DeviceSecret}
	ProductColumns = []string{ProductKey, ProductSecret}
)

// MaxSecretLen bounds a DeviceSecret or ProductSecret; real ones are 20-64
// characters.
const MaxSecretLen = 512

// ErrUnreadable is wrapped by the error Read returns when the input cannot
// be read any further (the CSV reader stopped making progress); Read
// returns io.EOF after it.
var ErrUnreadable = errors.New("unreadable CSV; stopped reading here")

// Error is a problem at a place in the input.
type Error struct {
	Name   string // the input's name (a path, "standard input")
	Line   int    // 1-based line; the first line of a multi-line record
	Column string // the column at fault (e.g. DeviceSecret), or ""
	Err    error
}

// Error returns "name:line: column: problem" (no column part when Column
// is empty).
func (e *Error) Error() string { return fmt.Sprintf("%s:%d: %s", e.Name, e.Line, e.Detail()) }

// Detail returns the problem without the input's name and line (for
// reports that show those separately).
func (e *Error) Detail() string {
	if e.Column != "" {
		return e.Column + ": " + e.Err.Error()
	}
	return e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// FieldError is a problem with one field of a record, as a row function
// passed to Parse returns it; Parse turns it into an *Error naming the
// column.
type FieldError struct {
	Column string
	Err    error
}

// Error returns "column: problem".
func (e *FieldError) Error() string { return e.Column + ": " + e.Err.Error() }

func (e *FieldError) Unwrap() error { return e.Err }

// Row is one record of the input that is not blank.
type Row struct {
	Line   int      // 1-based line of the record's start
	Fields []string // the required columns' values in the order given to NewReader, as written
}

// Reader reads the records of a console CSV file.
type Reader struct {
	name        string
	columns     []string
	cr          *csv.Reader
	index       []int // record index of each required column
	lastErrLine int
	done        bool
}

// NewReader reads the header of r and checks that it names every one of
// columns exactly once. name identifies r in errors.
func NewReader(r io.Reader, name string, columns []string) (*Reader, error) {
	cr := csv.NewReader(r)
	cr.FieldsPerRecord = 0 // every record must have as many fields as the header
	header, err := cr.Read()
	if errors.Is(err, io.EOF) {
		return nil, &Error{Name: name, Line: 1, Err: fmt.Errorf("missing header (want %s)", strings.Join(columns, ","))}
	}
	if err != nil {
		line, cause := syntaxError(err)
		return nil, &Error{Name: name, Line: line, Err: fmt.Errorf("header: %w", cause)}
	}
	line, _ := cr.FieldPos(0)
	header[0] = strings.TrimPrefix(header[0], "\uFEFF")
	col := make(map[string]int, len(header))
	for i, h := range header {
		key := strings.ToLower(strings.TrimSpace(h))
		if key == "" {
			continue
		}
		if _, dup := col[key]; dup {
			return nil, &Error{Name: name, Line: line, Err: fmt.Errorf("header names column %q twice", strings.TrimSpace(h))}
		}
		col[key] = i
	}
	rd := &Reader{name: name, columns: columns, cr: cr, index: make([]int, len(columns)), lastErrLine: -1}
	for i, want := range columns {
		j, ok := col[strings.ToLower(want)]
		if !ok {
			return nil, &Error{Name: name, Line: line, Err: fmt.Errorf("header lacks column %s (want %s)", want, strings.Join(columns, ","))}
		}
		rd.index[i] = j
	}
	return rd, nil
}

// Read returns the next record that is not blank, or io.EOF at the end. A
// record that cannot be parsed (a stray quote, a wrong number of fields)
// yields an *Error for its line, and reading can go on with the next one;
// when the input cannot be read further, the error wraps ErrUnreadable
// and the next Read returns io.EOF.
func (r *Reader) Read() (Row, error) {
	for {
		if r.done {
			return Row{}, io.EOF
		}
		rec, err := r.cr.Read()
		if errors.Is(err, io.EOF) {
			r.done = true
			return Row{}, io.EOF
		}
		if err != nil {
			line, cause := syntaxError(err)
			if line == r.lastErrLine {
				// The reader did not move on: give up on the rest.
				r.done = true
				return Row{}, &Error{Name: r.name, Line: line, Err: ErrUnreadable}
			}
			r.lastErrLine = line
			return Row{}, &Error{Name: r.name, Line: line, Err: cause}
		}
		if allBlank(rec) {
			continue
		}
		line, _ := r.cr.FieldPos(0)
		fields := make([]string, len(r.index))
		for i, j := range r.index {
			fields[i] = rec[j]
		}
		return Row{Line: line, Fields: fields}, nil
	}
}

// Parse reads a whole file strictly: it calls row for every record and
// stops at the first problem, in the file or returned by row. An error
// from row is returned as an *Error for the record's line, naming the
// column if it is a *FieldError.
func Parse(r io.Reader, name string, columns []string, row func(Row) error) error {
	rd, err := NewReader(r, name, columns)
	if err != nil {
		return err
	}
	for {
		rec, err := rd.Read()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := row(rec); err != nil {
			e := &Error{Name: name, Line: rec.Line, Err: err}
			var fe *FieldError
			if errors.As(err, &fe) && fe == err {
				e.Column, e.Err = fe.Column, fe.Err
			}
			return e
		}
	}
}

// CheckSecret checks the shape of a secret read from column without
// showing it: not empty, at most MaxSecretLen bytes, printable ASCII
// without spaces.
func CheckSecret(column, v string) error {
	if v == "" {
		return fmt.Errorf("%s is empty", column)
	}
	if len(v) > MaxSecretLen {
		return fmt.Errorf("%s is %d bytes, at most %d allowed", column, len(v), MaxSecretLen)
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; c <= ' ' || c >= 0x7f {
			return &FieldError{Column: column, Err: fmt.Errorf("byte %d is whitespace, a control character or not ASCII", i+1)}
		}
	}
	return nil
}

// syntaxError returns the line a csv.ParseError starts on and its cause,
// without the position (reported separately) and never quoting the
// input.
func syntaxError(err error) (line int, cause error) {
	var pe *csv.ParseError
	if !errors.As(err, &pe) {
		return 0, err
	}
	switch {
	case errors.Is(pe.Err, csv.ErrFieldCount):
		return pe.StartLine, errors.New("wrong number of fields (the header has a different count)")
	case errors.Is(pe.Err, csv.ErrQuote), errors.Is(pe.Err, csv.ErrBareQuote):
		return pe.StartLine, fmt.Errorf("%w (line %d, byte %d)", pe.Err, pe.Line, pe.Column)
	}
	return pe.StartLine, pe.Err
}

func allBlank(rec []string) bool {
	for _, f := range rec {
		if strings.TrimSpace(f) != "" {
			return false
		}
	}
	return true
}
