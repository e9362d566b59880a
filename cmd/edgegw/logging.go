package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/coreos/go-systemd/v22/journal"
	"github.com/lmittmann/tint"
)

// newLogger picks the handler once, at startup: tint with colour on a
// terminal; plain JSON (no colour, no time: journald stamps lines) under
// journald; JSON with time in containers and pipes. format "text" and
// "json" force plain text or JSON.
func newLogger(w *os.File, level slog.Leveler, format string) *slog.Logger {
	var h slog.Handler
	journald, _ := journal.StderrIsJournalStream()
	switch {
	case format == "json" || (format == "auto" && journald):
		opts := &slog.HandlerOptions{Level: level}
		if journald {
			opts.ReplaceAttr = dropTime
		}
		h = slog.NewJSONHandler(w, opts)
	case format == "text":
		h = slog.NewTextHandler(w, &slog.HandlerOptions{Level: level})
	case isTerminal(w):
		h = tint.NewTextHandler(w, &tint.Options{Level: level, TimeFormat: time.DateTime + ".000"})
	default:
		h = slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level})
	}
	return slog.New(h)
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
