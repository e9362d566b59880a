package systemd_test

import (
	"os"
	"strings"
	"testing"
)

// TestServiceUnitReloads: `systemctl reload edgegw` sends SIGHUP to the
// daemon (edgegw run re-reads its configuration on SIGHUP), instead of
// failing with "Job type reload is not applicable".
func TestServiceUnitReloads(t *testing.T) {
	b, err := os.ReadFile("edgegw.service")
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, line := range strings.Split(string(b), "\n") {
		if strings.TrimSpace(line) == "ExecReload=/bin/kill -HUP $MAINPID" {
			found = true
		}
	}
	if !found {
		t.Error("edgegw.service has no ExecReload=/bin/kill -HUP $MAINPID")
	}
}
