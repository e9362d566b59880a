package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/edgegw/edgegw/gateway/adminapi"
	"github.com/edgegw/edgegw/internal/consolecsv"
	"github.com/edgegw/edgegw/internal/logsafe"
)

// importRow is one device line of an import file.
type importRow struct {
	line                           int
	productKey, deviceName, secret string
}

// wire is the row as device.import takes it.
func (r importRow) wire() adminapi.ImportRow {
	return adminapi.ImportRow{Line: r.line, ProductKey: r.productKey, DeviceName: r.deviceName, DeviceSecret: r.secret}
}

// Field limits checked before sending: nothing longer is valid, and a
// huge field must not make a request exceed the broker's packet limit.
const (
	importIdentMax  = 128
	importSecretMax = consolecsv.MaxSecretLen
)

// ImportSummary is the outcome of 'edgegw ctl import' (its -json output).
type ImportSummary struct {
	File          string              `json:"file"`
	Rows          int                 `json:"rows"`
	Added         int                 `json:"added"`
	Unchanged     int                 `json:"unchanged"`
	Updated       int                 `json:"updated"`
	Failed        int                 `json:"failed"`
	Errors        []adminapi.RowError `json:"errors,omitempty"`
	ProductsAdded []string            `json:"productsAdded,omitempty"`
	Seconds       float64             `json:"seconds"`
}

// importFailed is the error of an import in which rows failed.
type importFailed struct{ failed, rows int }

func (e *importFailed) Error() string { return fmt.Sprintf("%d of %d rows failed", e.failed, e.rows) }

// importCmd implements 'edgegw ctl import FILE.csv'.
func (c *ctl) importCmd(args []string) error {
	fs := c.flags("import")
	dialect := fs.String("dialect", "", "`dialect` of products the file introduces: aliyun or enos (default: the gateway's)")
	disabled := fs.Bool("disabled", false, "add new devices disabled (staged: no cloud session, no local login until enabled)")
	batch := fs.Int("batch", 500, "rows per request (1-1000)")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return c.usageErr("import: want one CSV file (\"-\" for standard input)")
	}
	if *batch < 1 || *batch > adminapi.ImportMax {
		return c.usageErr("import: -batch %d: want 1-%d", *batch, adminapi.ImportMax)
	}
	name := pos[0]
	var r io.Reader = c.stdin
	if name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return fmt.Errorf("import: %w", err)
		}
		defer f.Close()
		r = f
	} else {
		name = "standard input"
	}
	shownName := logsafe.Clip(name)
	rows, problems, err := readDevicesCSV(r, name)
	if err != nil {
		return fmt.Errorf("import: %w", err)
	}

	start := time.Now()
	sum := ImportSummary{File: name, Rows: len(rows) + len(problems), Errors: problems, Failed: len(problems)}
	var progress func(done int)
	if f, ok := c.stderr.(*os.File); ok && isTerminal(f) && len(rows) > 0 {
		progress = func(done int) {
			fmt.Fprintf(c.stderr, "\rimporting %s: %d/%d rows (%d%%)", shownName, done, len(rows), done*100/len(rows))
		}
		progress(0)
	}
	for i := 0; i < len(rows); {
		chunk := nextBatch(rows[i:], *batch)
		req := make([]adminapi.ImportRow, len(chunk))
		for j, row := range chunk {
			req[j] = row.wire()
		}
		params := adminapi.DeviceImportParams{Rows: req, Dialect: *dialect, Disabled: *disabled}
		var res adminapi.ImportResult
		err := c.callQuiet(adminapi.MethodDeviceImport, params, &res)
		var re *adminapi.Error
		switch {
		case errors.As(err, &re):
			// The whole batch was refused (e.g. a bad -dialect): every row
			// of it failed, the other batches still run.
			for _, row := range chunk {
				sum.Errors = append(sum.Errors, adminapi.RowError{Line: row.line, Device: row.productKey + "/" + row.deviceName,
					Code: re.Code, Message: re.Message})
			}
			sum.Failed += len(chunk)
		case err != nil:
			if progress != nil {
				fmt.Fprintln(c.stderr)
			}
			return fmt.Errorf("import %s: stopped after %d of %d rows (%d added, %d updated so far): %w",
				shownName, i, len(rows), sum.Added, sum.Updated, err)
		default:
			sum.Added += res.Added
			sum.Unchanged += res.Unchanged
			sum.Updated += res.Updated
			sum.Failed += res.Failed
			sum.Errors = append(sum.Errors, res.Errors...)
			sum.ProductsAdded = append(sum.ProductsAdded, res.ProductsAdded...)
		}
		i += len(chunk)
		if progress != nil {
			progress(i)
		}
	}
	if progress != nil {
		fmt.Fprintln(c.stderr)
	}
	sortRowErrors(sum.Errors)
	sum.Seconds = time.Since(start).Round(time.Millisecond).Seconds()

	if c.json {
		if err := c.printJSON(sum); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(c.stdout, "%s: %d rows in %s: %d added, %d unchanged, %d updated, %d failed\n", shownName, sum.Rows,
			time.Since(start).Round(time.Millisecond), sum.Added, sum.Unchanged, sum.Updated, sum.Failed)
		if len(sum.ProductsAdded) > 0 {
			fmt.Fprintf(c.stdout, "products added: %s\n", text(strings.Join(sum.ProductsAdded, ", ")))
		}
		for _, e := range sum.Errors {
			dev := ""
			if e.Device != "" {
				dev = logsafe.Clip(e.Device) + ": "
			}
			fmt.Fprintf(c.stdout, "%s:%d: %s%d %s\n", shownName, e.Line, dev, e.Code, text(e.Message))
		}
	}
	if sum.Failed > 0 {
		return &importFailed{failed: sum.Failed, rows: sum.Rows}
	}
	return nil
}

// importBatchBytes bounds the JSON of one device.import request well below
// the local broker's default packet limit (256 KiB).
const importBatchBytes = 128 << 10

// nextBatch returns the first rows of rows: at most n, and no more than fit
// in importBatchBytes (at least one).
func nextBatch(rows []importRow, n int) []importRow {
	size := 0
	for i, r := range rows {
		b, _ := json.Marshal(r.wire()) // strings and an int: cannot fail
		size += len(b) + 1
		if i == n || (i > 0 && size > importBatchBytes) {
			return rows[:i]
		}
	}
	return rows
}

func sortRowErrors(es []adminapi.RowError) {
	for i := 1; i < len(es); i++ {
		for j := i; j > 0 && es[j].Line < es[j-1].Line; j-- {
			es[j], es[j-1] = es[j-1], es[j]
		}
	}
}

// readDevicesCSV reads a device list in the consoles' batch-export form
// (see internal/consolecsv): a required header naming ProductKey,
// DeviceName and DeviceSecret (any order, case-insensitive, other columns
// ignored), then one device per line. A UTF-8 byte order mark and CRLF
// line ends are tolerated and blank lines skipped. An empty DeviceSecret
// means the device is to obtain one by dynamic activation. A line that
// cannot be read (wrong number of fields, a stray quote) or that repeats a
// device is returned as a problem and the others are still read; only a
// missing or incomplete header is an error. Problems never quote a secret.
func readDevicesCSV(r io.Reader, name string) ([]importRow, []adminapi.RowError, error) {
	cr, err := consolecsv.NewReader(r, name, consolecsv.DeviceColumns)
	if err != nil {
		return nil, nil, err
	}
	var rows []importRow
	var problems []adminapi.RowError
	seen := map[string]int{}
	for {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		var ce *consolecsv.Error
		if errors.As(err, &ce) {
			problems = append(problems, adminapi.RowError{Line: ce.Line, Code: 400, Message: ce.Detail()})
			continue
		}
		if err != nil {
			return nil, nil, err
		}
		line := rec.Line
		row := importRow{line: line, productKey: strings.TrimSpace(rec.Fields[0]), deviceName: strings.TrimSpace(rec.Fields[1]),
			secret: strings.TrimSpace(rec.Fields[2])}
		id := row.productKey + "/" + row.deviceName
		if tooLong := fieldTooLong(row); tooLong != "" {
			problems = append(problems, adminapi.RowError{Line: line, Code: 400, Message: tooLong})
			continue
		}
		if first, dup := seen[id]; dup {
			problems = append(problems, adminapi.RowError{Line: line, Device: id, Code: 400,
				Message: fmt.Sprintf("device listed twice (first on line %d)", first)})
			continue
		}
		seen[id] = line
		rows = append(rows, row)
	}
	return rows, problems, nil
}

// fieldTooLong names a field longer than any valid value ("" if none).
func fieldTooLong(r importRow) string {
	switch {
	case len(r.productKey) > importIdentMax:
		return fmt.Sprintf("ProductKey: is %d bytes, at most %d allowed", len(r.productKey), importIdentMax)
	case len(r.deviceName) > importIdentMax:
		return fmt.Sprintf("DeviceName: is %d bytes, at most %d allowed", len(r.deviceName), importIdentMax)
	case len(r.secret) > importSecretMax:
		return fmt.Sprintf("DeviceSecret: is %d bytes, at most %d allowed", len(r.secret), importSecretMax)
	}
	return ""
}
