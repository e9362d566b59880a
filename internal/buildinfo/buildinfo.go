// Package buildinfo says which build of edgegw is running: version, commit,
// build date, Go version and platform. `edgegw version`, gateway.status and
// the edgegw_build_info metric all report it, so a support request, a
// dashboard and the package agree on what is deployed.
package buildinfo

import (
	"cmp"
	"runtime"
	"runtime/debug"
)

// Stamp holds what the release build stamps with -ldflags -X (see
// packaging/build.sh); empty fields fall back to the build info the Go
// toolchain embeds.
type Stamp struct {
	Version, Commit, Date string
}

// Info describes a build. No field is ever empty: unknown values read
// "unknown" (Version: "devel").
type Info struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"`
	Date      string `json:"date"`
	GoVersion string `json:"goVersion"`
	Platform  string `json:"platform"`
}

// Get returns the running binary's Info: the stamped values first, then
// runtime/debug.ReadBuildInfo (the module version of `go install
// module@version`; vcs.revision, vcs.modified and vcs.time of a build in a
// git checkout), then "devel"/"unknown".
func Get(s Stamp) Info {
	bi, _ := debug.ReadBuildInfo()
	return from(s, bi)
}

func from(s Stamp, bi *debug.BuildInfo) Info {
	var modVersion, rev, vtime string
	if bi != nil {
		if v := bi.Main.Version; v != "(devel)" {
			modVersion = v
		}
		modified := false
		for _, kv := range bi.Settings {
			switch kv.Key {
			case "vcs.revision":
				rev = kv.Value
			case "vcs.time":
				vtime = kv.Value
			case "vcs.modified":
				modified = kv.Value == "true"
			}
		}
		if rev != "" && modified {
			rev += "-dirty"
		}
	}
	return Info{
		Version:   cmp.Or(s.Version, modVersion, "devel"),
		Commit:    cmp.Or(s.Commit, rev, "unknown"),
		Date:      cmp.Or(s.Date, vtime, "unknown"),
		GoVersion: runtime.Version(),
		Platform:  runtime.GOOS + "/" + runtime.GOARCH,
	}
}
