package main

import (
	"bytes"
	"encoding/json"
	"runtime"
	"strings"
	"testing"

	"github.com/edgegw/edgegw/internal/buildinfo"
)

// stamp sets the -ldflags variables for one test, as packaging/build.sh does.
func stamp(t *testing.T, v, c, d string) {
	old := [3]string{version, commit, date}
	version, commit, date = v, c, d
	t.Cleanup(func() { version, commit, date = old[0], old[1], old[2] })
}

func TestVersionCommand(t *testing.T) {
	stamp(t, "1.2.3", "abc1234def", "2026-12-01T00:00:00Z")
	platform := runtime.GOOS + "/" + runtime.GOARCH

	var out, errb bytes.Buffer
	if code := run([]string{"version"}, nil, &out, &errb); code != 0 {
		t.Fatalf("version: exit %d, stderr %q", code, errb.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	// The first line stays "edgegw VERSION" for scripts that read it.
	if lines[0] != "edgegw 1.2.3" {
		t.Errorf("first line = %q, want %q", lines[0], "edgegw 1.2.3")
	}
	for _, want := range []string{"commit    abc1234def", "built     2026-12-01T00:00:00Z", "go        " + runtime.Version(), "platform  " + platform} {
		if !strings.Contains(out.String(), want+"\n") {
			t.Errorf("version output lacks %q:\n%s", want, out.String())
		}
	}

	for _, args := range [][]string{{"version", "-json"}, {"--version", "-json"}} {
		out.Reset()
		if code := run(args, nil, &out, &errb); code != 0 {
			t.Fatalf("%v: exit %d, stderr %q", args, code, errb.String())
		}
		var got buildinfo.Info
		if err := json.Unmarshal(out.Bytes(), &got); err != nil {
			t.Fatalf("%v: %v: %q", args, err, out.String())
		}
		want := buildinfo.Info{Version: "1.2.3", Commit: "abc1234def", Date: "2026-12-01T00:00:00Z", GoVersion: runtime.Version(), Platform: platform}
		if got != want {
			t.Errorf("%v = %+v, want %+v", args, got, want)
		}
		for _, key := range []string{`"version"`, `"commit"`, `"date"`, `"goVersion"`, `"platform"`} {
			if !strings.Contains(out.String(), key) {
				t.Errorf("%v: no key %s in %s", args, key, out.String())
			}
		}
	}

	out.Reset()
	errb.Reset()
	if code := run([]string{"version", "-bogus"}, nil, &out, &errb); code != 2 {
		t.Errorf("version -bogus: exit %d, want 2", code)
	}
}

// TestVersionUnstamped: a plain `go build` still names its commit (from the
// toolchain's vcs stamping, or "unknown"), never an empty field.
func TestVersionUnstamped(t *testing.T) {
	stamp(t, "", "", "")
	bi := build()
	if bi.Version == "" || bi.Commit == "" || bi.Date == "" {
		t.Errorf("empty field in %+v", bi)
	}
	if Version() != bi.Version {
		t.Errorf("Version() = %q, build().Version = %q", Version(), bi.Version)
	}
}
