package uplink

import (
	"context"
	"log"
	"log/slog"
	"strings"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

var pahoLogOnce sync.Once

// RoutePahoLogs sends paho.mqtt.golang's package-global loggers to l, once
// per process (later calls do nothing: the loggers are global). paho's
// lines carry no client id and repeat what the sessions log with the
// device, so they are demoted: CRITICAL at Warn, ERROR and WARN at Debug
// (paho logs every failed dial and lost connection at ERROR; the session
// logs the same event with its device), and at most pahoLogBurst lines per level and minute pass (the
// number suppressed is reported with the next line that passes). DEBUG
// stays discarded.
func RoutePahoLogs(l *slog.Logger) {
	if l == nil {
		return
	}
	pahoLogOnce.Do(func() {
		mqtt.CRITICAL = log.New(&pahoWriter{l: l, level: slog.LevelWarn}, "", 0)
		mqtt.ERROR = log.New(&pahoWriter{l: l, level: slog.LevelDebug}, "", 0)
		mqtt.WARN = log.New(&pahoWriter{l: l, level: slog.LevelDebug}, "", 0)
	})
}

const (
	pahoLogBurst  = 20
	pahoLogWindow = time.Minute
)

// pahoWriter turns the lines of one paho logger into rate-limited slog
// records.
type pahoWriter struct {
	l     *slog.Logger
	level slog.Level

	mu         sync.Mutex
	windowEnd  time.Time
	count      int
	suppressed int
}

func (w *pahoWriter) Write(p []byte) (int, error) {
	if !w.l.Enabled(context.Background(), w.level) {
		return len(p), nil
	}
	now := time.Now()
	w.mu.Lock()
	if now.After(w.windowEnd) {
		w.windowEnd, w.count = now.Add(pahoLogWindow), 0
	}
	w.count++
	if w.count > pahoLogBurst {
		w.suppressed++
		w.mu.Unlock()
		return len(p), nil
	}
	suppressed := w.suppressed
	w.suppressed = 0
	w.mu.Unlock()
	attrs := []any{"component", "paho"}
	if suppressed > 0 {
		attrs = append(attrs, "suppressed_before", suppressed)
	}
	w.l.Log(context.Background(), w.level, strings.Join(strings.Fields(string(p)), " "), attrs...)
	return len(p), nil
}
