package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestJournalHandlerPriority checks that every record reaches journald's
// stream with its syslog priority as a "<N>" prefix (SyslogLevelPrefix=yes,
// systemd's default), so `journalctl -p warning` filters by level, and that
// the rest of the line stays one JSON object without a time.
func TestJournalHandlerPriority(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(newJournalHandler(&buf, slog.LevelDebug, "json")).With("device", "pk/dn").WithGroup("g")
	log.Debug("d", "k", 1)
	log.Info("i\nsecond line", "k", 2)
	log.Warn("w", "k", 3)
	log.Error("e", "k", 4)
	log.Log(t.Context(), slog.LevelError+4, "beyond error", "k", 5)
	log.Log(t.Context(), slog.LevelInfo+2, "notice", "k", 6)

	want := []struct {
		prio, level, msg string
	}{
		{"<7>", "DEBUG", "d"},
		{"<6>", "INFO", "i\nsecond line"},
		{"<4>", "WARN", "w"},
		{"<3>", "ERROR", "e"},
		{"<2>", "ERROR+4", "beyond error"},
		{"<5>", "INFO+2", "notice"},
	}
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(lines) != len(want) {
		t.Fatalf("got %d lines, want %d:\n%s", len(lines), len(want), buf.String())
	}
	for i, w := range want {
		line, ok := strings.CutPrefix(lines[i], w.prio)
		if !ok {
			t.Errorf("line %d = %q, want prefix %s", i, lines[i], w.prio)
			continue
		}
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Errorf("line %d after the prefix is not JSON: %v: %q", i, err, line)
			continue
		}
		if rec["level"] != w.level || rec["msg"] != w.msg || rec["device"] != "pk/dn" {
			t.Errorf("line %d = %v, want level %s msg %q device pk/dn", i, rec, w.level, w.msg)
		}
		if g, _ := rec["g"].(map[string]any); g == nil || g["k"] == nil {
			t.Errorf("line %d = %v: the group g lost its attribute", i, rec)
		}
		if _, ok := rec["time"]; ok {
			t.Errorf("line %d has a time; journald stamps records itself", i)
		}
	}

	// Forced text keeps the prefix too.
	buf.Reset()
	slog.New(newJournalHandler(&buf, slog.LevelInfo, "text")).Warn("w")
	if !strings.HasPrefix(buf.String(), "<4>level=WARN msg=w") {
		t.Errorf("text under journald = %q, want <4>level=WARN msg=w", buf.String())
	}
}

// TestNewLoggerJournalStream checks the detection systemd documents: the
// prefixes appear only when $JOURNAL_STREAM names the device and inode of
// the file the logger writes to; a container or a pipe gets plain JSON
// lines with a time.
func TestNewLoggerJournalStream(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, env, format string
		wantPrefix        bool
	}{
		{"journald", fmt.Sprintf("%d:%d", st.Dev, st.Ino), "auto", true},
		{"journald json", fmt.Sprintf("%d:%d", st.Dev, st.Ino), "json", true},
		{"inherited by a child on another stream", fmt.Sprintf("%d:%d", st.Dev, st.Ino+1), "auto", false},
		{"container", "", "auto", false},
		{"garbage", "x:y", "auto", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("JOURNAL_STREAM", tc.env)
			if err := f.Truncate(0); err != nil {
				t.Fatal(err)
			}
			if _, err := f.Seek(0, 0); err != nil {
				t.Fatal(err)
			}
			newLogger(f, slog.LevelInfo, tc.format).Warn("careful")
			got, err := os.ReadFile(f.Name())
			if err != nil {
				t.Fatal(err)
			}
			line := string(got)
			if tc.wantPrefix {
				if !strings.HasPrefix(line, `<4>{"level":"WARN","msg":"careful"}`) {
					t.Errorf("got %q, want <4> and JSON without time", line)
				}
				return
			}
			if !strings.HasPrefix(line, `{"time":`) || !strings.Contains(line, `"level":"WARN","msg":"careful"`) {
				t.Errorf("got %q, want a JSON line with time and no prefix", line)
			}
		})
	}
}
