package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"

	"github.com/edgegw/edgegw/internal/buildinfo"
)

// Stamped at build time by packaging/build.sh and build-image.sh:
//
//	-ldflags "-X main.version=1.2.3 -X main.commit=<sha> -X main.date=<RFC 3339>"
//
// Empty values fall back to the toolchain's build info (buildinfo.Get).
var version, commit, date string

// build returns what this binary is: version, commit, build date, Go
// version and platform.
func build() buildinfo.Info {
	return buildinfo.Get(buildinfo.Stamp{Version: version, Commit: commit, Date: date})
}

// Version returns the stamped version, else the module version from the
// build info, else "devel". run and demo pass it to the gateway
// (gateway.Options.Version), which reports it in gateway.status.
func Version() string { return build().Version }

// runVersion implements 'edgegw version [-json]'. The first line of the text
// form stays "edgegw VERSION".
func runVersion(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("edgegw version", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print one JSON object (version, commit, date, goVersion, platform)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	bi := build()
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(bi)
	}
	_, err := fmt.Fprintf(stdout, "edgegw %s\ncommit    %s\nbuilt     %s\ngo        %s\nplatform  %s\n",
		bi.Version, bi.Commit, bi.Date, bi.GoVersion, bi.Platform)
	return err
}
