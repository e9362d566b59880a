package cloudsim_test

import (
	"errors"
	"flag"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink/cloudsim"
)

// writeFixtures writes the device and product lists for a dialect.
func writeFixtures(t *testing.T, d secrets.Dialect) (devices, products string) {
	t.Helper()
	dir := t.TempDir()
	devices, products = filepath.Join(dir, "devices.csv"), filepath.Join(dir, "products.csv")
	devs, pk, ps := aliyunDevices(), aliPK, aliPSecret
	if d == secrets.EnOS {
		devs, pk, ps = enosDevices(), enosPK, enosPSecret
	}
	if err := os.WriteFile(devices, cloudsim.FormatDevicesCSV(devs), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(products, []byte("ProductKey,ProductSecret\r\n"+pk+","+ps+"\r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return devices, products
}

// runMain starts Main and returns the addresses it prints, keyed by the
// first word of each line.
// The returned stop function cancels Main and returns its result.
func runMain(t *testing.T, args []string) (map[string]string, func() error) {
	t.Helper()
	ctx, cancel := contextWithCancel(t)
	stdout, stderr := &testutil.SyncBuffer{}, &testutil.SyncBuffer{}
	done := make(chan error, 1)
	go func() { done <- cloudsim.Main(ctx, args, stdout, stderr) }()
	var once sync.Once
	var result error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case result = <-done:
			case <-time.After(10 * time.Second):
				result = errors.New("Main did not return within 10 s of cancel")
			}
		})
		return result
	}
	t.Cleanup(func() { _ = stop() })
	deadline := time.Now().Add(10 * time.Second)
	for {
		out := stdout.String()
		if strings.Contains(out, "\ncontrol ") || (!strings.Contains(strings.Join(args, " "), "-control") && strings.Count(out, "\n") >= 2) {
			addrs := map[string]string{}
			for _, line := range strings.Split(strings.TrimSpace(out), "\n")[1:] {
				f := strings.Fields(line)
				if len(f) == 2 {
					addrs[f[0]] = f[1]
				}
			}
			return addrs, stop
		}
		select {
		case err := <-done:
			t.Fatalf("Main returned early: %v\nstderr: %s", err, stderr.String())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("Main printed no addresses; stdout %q stderr %q", out, stderr.String())
		}
	}
}

func TestMain_Subcommand(t *testing.T) {
	pki := testutil.NewPKI(t)
	srvCert, srvKey := pki.WriteCert(t, pki.Server, "server")
	devices, products := writeFixtures(t, secrets.Aliyun)
	addrs, stop := runMain(t, []string{
		"-listen", "127.0.0.1:0", "-dialect", "aliyun", "-devices", devices, "-products", products,
		"-observer", "watch:pw", "-tls-listen", "127.0.0.1:0", "-tls-cert", srvCert, "-tls-key", srvKey,
		"-ws", "127.0.0.1:0", "-wss", "127.0.0.1:0", "-device-rate", "0", "-control", "127.0.0.1:0", "-log-level", "warn",
	})
	for _, k := range []string{"tcp", "tls", "ws", "wss", "control"} {
		if addrs[k] == "" {
			t.Fatalf("no %s address printed: %v", k, addrs)
		}
	}
	obs, code, err := connect(t, "tcp://"+addrs["tcp"], "o1", "watch", "pw")
	if err != nil {
		t.Fatalf("observer: code %d: %v", code, err)
	}
	mustSubscribe(t, obs, "#", 1)
	dev := mustConnect(t, "ssl://"+addrs["tls"], sign(t, secrets.Aliyun, aliPK, aliDN, aliSecret, 2, ""), withTLS(pki.ClientTLS()), withKeepAlive(secondsDuration(300)))
	// -device-rate 0 turns the limit off: 40 messages in a burst pass.
	for range 40 {
		mustPublish(t, dev, userTopic(aliDN, "data"), 0, "x")
	}
	mustPublish(t, dev, userTopic(aliDN, "data"), 1, "last")
	for range 41 {
		nextMsg(t, obs)
	}
	resp, err := http.Get(addrs["control"] + "/stats")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `"messages": 41`) || !strings.Contains(string(body), `"rateDropped": 0`) {
		t.Errorf("/stats: %s", body)
	}
	if err := stop(); err != nil {
		t.Errorf("Main after cancel: %v", err)
	}
}

func TestMain_Errors(t *testing.T) {
	devices, _ := writeFixtures(t, secrets.EnOS)
	bad := filepath.Join(t.TempDir(), "bad.csv")
	os.WriteFile(bad, []byte("ProductKey,DeviceName,DeviceSecret\nenosPK01,a b,s\n"), 0o600)
	base := []string{"-listen", "127.0.0.1:0", "-dialect", "enos", "-devices", devices}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-listen", "127.0.0.1:0", "-devices", devices}, "-dialect"},
		{[]string{"-listen", "127.0.0.1:0", "-dialect", "azure", "-devices", devices}, "unknown dialect"},
		{[]string{"-listen", "127.0.0.1:0", "-dialect", "enos"}, "-devices is required"},
		{[]string{"-dialect", "enos", "-devices", devices}, "at least one of -listen"},
		{[]string{"-listen", "127.0.0.1:0", "-dialect", "enos", "-devices", bad}, bad + ":2: deviceKey"},
		{append(base, "-observer", "nopass"), "USER:PASS"},
		{append(base, "-device-rate", "-3"), "non-negative"},
		{append(base, "-tls-listen", "127.0.0.1:0"), "-tls-cert and -tls-key"},
		{append(base, "-tls-cert", "c.pem", "-tls-key", "k.pem"), "without -tls-listen"},
		{append(base, "-log-level", "loud"), "-log-level"},
		{append(base, "extra"), "unexpected argument"},
		{[]string{"-listen", "256.0.0.1:1", "-dialect", "enos", "-devices", devices}, "listen tcp"},
	} {
		err := cloudsim.Main(t.Context(), tc.args, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Main(%q): error %v, want one containing %q", tc.args, err, tc.want)
		}
	}
	if err := cloudsim.Main(t.Context(), []string{"-h"}, io.Discard, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: %v, want flag.ErrHelp", err)
	}
}
