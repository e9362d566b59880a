package internal_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/edgegw/edgegw"

// corePackages are the daemon's own packages: what runs on a plant.
var corePackages = []string{
	module + "/gateway",
	module + "/uplink",
	module + "/uplink/spool",
	module + "/localbroker",
	module + "/secrets",
	module + "/systemd",
}

// testOnly are packages that exist for tests and measurements. The daemon
// must not link them: the benchmark harness and the device simulator start
// processes and open ports of their own, and testutil and gwtest (which
// runs a whole gateway) stop a test on any error.
var testOnly = []string{
	module + "/gateway/bench",
	module + "/gateway/devsim",
	module + "/internal/testutil",
	module + "/internal/testutil/gwtest",
	module + "/internal/testutil/rawmqtt",
}

// TestCoreDoesNotImportTestPackages fails when a core package imports a
// test-only package in non-test code, directly or through any other
// package. go list -deps without -test looks at non-test files only.
func TestCoreDoesNotImportTestPackages(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("go command not found: %v", err)
	}
	args := append([]string{"list", "-deps", "-json=ImportPath,Imports"}, corePackages...)
	cmd := exec.Command(goBin, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	type pkg struct {
		ImportPath string
		Imports    []string
	}
	// Who imports what, to report the path by which a test package got in.
	importers := make(map[string][]string)
	seen := make(map[string]bool)
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p pkg
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("decode go list output: %v", err)
		}
		seen[p.ImportPath] = true
		for _, imp := range p.Imports {
			importers[imp] = append(importers[imp], p.ImportPath)
		}
	}
	for _, core := range corePackages {
		if !seen[core] {
			t.Errorf("go list did not report core package %s: has it moved? Update corePackages", core)
		}
	}
	for _, bad := range testOnly {
		if seen[bad] {
			t.Errorf("%s is linked into the daemon: imported by %s (non-test code); only tests may import it (and cmd/edgegw the bench and devsim subcommands)",
				bad, strings.Join(importers[bad], ", "))
		}
	}
}
