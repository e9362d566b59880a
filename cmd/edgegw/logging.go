package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/lmittmann/tint"
)

// newLogger picks the handler once, at startup: tint with colour on a
// terminal; under journald (w is the stream $JOURNAL_STREAM names) JSON
// without time (journald stamps lines), each line prefixed with its syslog
// priority so that `journalctl -p warning` filters by level; JSON with time
// in containers and pipes. format "text" and "json" force plain text or
// JSON (still prefixed under journald).
func newLogger(w *os.File, level slog.Leveler, format string) *slog.Logger {
	var h slog.Handler
	switch {
	case isJournalStream(w):
		h = newJournalHandler(w, level, format)
	case format == "json":
		h = slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level})
	case format == "text":
		h = slog.NewTextHandler(w, &slog.HandlerOptions{Level: level})
	case isTerminal(w):
		h = tint.NewTextHandler(w, &tint.Options{Level: level, TimeFormat: time.DateTime + ".000"})
	default:
		h = slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level})
	}
	return slog.New(h)
}

// isJournalStream reports whether f is the stream systemd connected to
// journald: $JOURNAL_STREAM holds its "device:inode" (systemd.exec(5)). A
// child that inherits the variable but writes elsewhere does not match.
func isJournalStream(f *os.File) bool {
	env := os.Getenv("JOURNAL_STREAM")
	if env == "" || f == nil {
		return false
	}
	var dev, ino uint64
	if n, err := fmt.Sscanf(env, "%d:%d", &dev, &ino); err != nil || n != 2 {
		return false
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		return false
	}
	return uint64(st.Dev) == dev && st.Ino == ino
}

// newJournalHandler returns a handler for journald's stream: JSON (or text
// for format "text") without time, each line prefixed with "<N>", the
// record's syslog priority. systemd's SyslogLevelPrefix= (on by default)
// strips the prefix and stores PRIORITY=N, so `journalctl -p` works while
// the line keeps its structured fields.
func newJournalHandler(w io.Writer, level slog.Leveler, format string) slog.Handler {
	pw := &priorityWriter{w: w}
	opts := &slog.HandlerOptions{Level: level, ReplaceAttr: dropTime}
	var inner slog.Handler
	if format == "text" {
		inner = slog.NewTextHandler(pw, opts)
	} else {
		inner = slog.NewJSONHandler(pw, opts)
	}
	return &journalHandler{inner: inner, pw: pw}
}

// journalHandler wraps a slog handler whose every record is one line (JSON
// and text escape newlines) and sets the priority of that line.
type journalHandler struct {
	inner slog.Handler
	pw    *priorityWriter // shared by the handlers derived with With*
}

func (h *journalHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.inner.Enabled(ctx, l)
}

func (h *journalHandler) Handle(ctx context.Context, r slog.Record) error {
	h.pw.mu.Lock()
	defer h.pw.mu.Unlock()
	h.pw.prio = syslogPriority(r.Level)
	return h.inner.Handle(ctx, r)
}

func (h *journalHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &journalHandler{inner: h.inner.WithAttrs(as), pw: h.pw}
}

func (h *journalHandler) WithGroup(name string) slog.Handler {
	return &journalHandler{inner: h.inner.WithGroup(name), pw: h.pw}
}

// priorityWriter writes each line with the "<N>" prefix of the record being
// handled; mu is held from the choice of the priority to the write.
type priorityWriter struct {
	mu   sync.Mutex
	w    io.Writer
	prio int
	buf  []byte
}

func (p *priorityWriter) Write(b []byte) (int, error) {
	p.buf = append(append(p.buf[:0], '<', byte('0'+p.prio), '>'), b...)
	if _, err := p.w.Write(p.buf); err != nil {
		return 0, err
	}
	return len(b), nil
}

// syslogPriority maps a slog level to a syslog priority: debug 7, info 6,
// info+2 (between info and warn) notice 5, warn 4, error 3, error+4 and
// above crit 2.
func syslogPriority(l slog.Level) int {
	switch {
	case l < slog.LevelInfo:
		return 7
	case l < slog.LevelInfo+2:
		return 6
	case l < slog.LevelWarn:
		return 5
	case l < slog.LevelError:
		return 4
	case l < slog.LevelError+4:
		return 3
	}
	return 2
}

func dropTime(groups []string, a slog.Attr) slog.Attr {
	if len(groups) == 0 && a.Key == slog.TimeKey {
		return slog.Attr{}
	}
	return a
}

func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// parseLevel accepts debug, info, warn and error.
func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("log level %q: want debug, info, warn or error", s)
	}
	return l, nil
}

// stderrFile returns w as *os.File when it is one (for terminal detection),
// else os.Stderr's stand-in for tests.
func stderrFile(w io.Writer) (*os.File, bool) {
	f, ok := w.(*os.File)
	return f, ok
}
