package testutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// RequirePeersEnv is the environment variable that turns a missing peer
// from a skipped test into a failed one. CI sets it to 1 (.ci/run) so that
// a build machine without mosquitto cannot pass by skipping.
const RequirePeersEnv = "EDGEGW_REQUIRE_PEERS"

// peerPackages names the Debian package of each peer tool.
var peerPackages = map[string]string{
	"mosquitto":     "mosquitto",
	"mosquitto_pub": "mosquitto-clients",
	"mosquitto_sub": "mosquitto-clients",
	"mosquitto_rr":  "mosquitto-clients",
}

// peerDirs are searched after $PATH: Debian installs the broker in
// /usr/sbin, which an unprivileged user's PATH often lacks.
var peerDirs = []string{"/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"}

// Peer returns the path of a Debian peer tool (mosquitto, mosquitto_pub,
// mosquitto_sub, mosquitto_rr). When it is missing, Peer skips the test
// with the package to install, or fails it when EDGEGW_REQUIRE_PEERS=1.
func Peer(tb testing.TB, name string) string {
	tb.Helper()
	if p, ok := lookPeer(name); ok {
		return p
	}
	pkg := peerPackages[name]
	if pkg == "" {
		pkg = "mosquitto-clients"
	}
	if os.Getenv(RequirePeersEnv) == "1" {
		tb.Fatalf("%s not found and %s=1: apt-get install %s", name, RequirePeersEnv, pkg)
	}
	tb.Skipf("%s not found: apt-get install %s (set %s=1 to make this a failure)", name, pkg, RequirePeersEnv)
	return ""
}

func lookPeer(name string) (string, bool) {
	if p, err := exec.LookPath(name); err == nil {
		return p, true
	}
	for _, dir := range peerDirs {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, true
		}
	}
	return "", false
}
