package buildinfo

import (
	"runtime"
	"runtime/debug"
	"testing"
)

func TestFrom(t *testing.T) {
	vcs := &debug.BuildInfo{
		GoVersion: "go1.26.8",
		Main:      debug.Module{Path: "github.com/edgegw/edgegw", Version: "(devel)"},
		Settings: []debug.BuildSetting{
			{Key: "vcs", Value: "git"},
			{Key: "vcs.revision", Value: "0123456789abcdef0123456789abcdef01234567"},
			{Key: "vcs.time", Value: "2026-11-30T10:00:00Z"},
			{Key: "vcs.modified", Value: "false"},
		},
	}
	dirty := &debug.BuildInfo{Main: vcs.Main, Settings: append(vcs.Settings[:3:3], debug.BuildSetting{Key: "vcs.modified", Value: "true"})}
	tagged := &debug.BuildInfo{Main: debug.Module{Version: "v1.4.0"}}
	platform := runtime.GOOS + "/" + runtime.GOARCH
	for _, tc := range []struct {
		name    string
		stamped Stamp
		bi      *debug.BuildInfo
		want    Info
	}{
		{"ldflags win", Stamp{Version: "1.2.3", Commit: "abc1234", Date: "2026-12-01T00:00:00Z"}, vcs,
			Info{"1.2.3", "abc1234", "2026-12-01T00:00:00Z", runtime.Version(), platform}},
		{"vcs stamping from go build", Stamp{}, vcs,
			Info{"devel", "0123456789abcdef0123456789abcdef01234567", "2026-11-30T10:00:00Z", runtime.Version(), platform}},
		{"modified tree", Stamp{Version: "1.2.3"}, dirty,
			Info{"1.2.3", "0123456789abcdef0123456789abcdef01234567-dirty", "2026-11-30T10:00:00Z", runtime.Version(), platform}},
		{"go install module@version", Stamp{}, tagged,
			Info{"v1.4.0", "unknown", "unknown", runtime.Version(), platform}},
		{"no build info", Stamp{}, nil,
			Info{"devel", "unknown", "unknown", runtime.Version(), platform}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := from(tc.stamped, tc.bi); got != tc.want {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// TestGetThisBinary: a test binary has build info; the fields are never
// empty, so a metric label or a support report never has a blank.
func TestGetThisBinary(t *testing.T) {
	got := Get(Stamp{})
	for name, v := range map[string]string{"version": got.Version, "commit": got.Commit, "date": got.Date, "go": got.GoVersion, "platform": got.Platform} {
		if v == "" {
			t.Errorf("%s is empty: %+v", name, got)
		}
	}
	if got.GoVersion != runtime.Version() {
		t.Errorf("GoVersion = %q, want %q", got.GoVersion, runtime.Version())
	}
}
