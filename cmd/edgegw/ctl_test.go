package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgegw/edgegw/gateway"
	"github.com/edgegw/edgegw/gateway/adminapi"
	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/internal/testutil/gwtest"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink/cloudsim"
)

const (
	ctlPK          = "a1CtlProd01"
	ctlAdminPass   = "CtlAdm1n-9xQ2pL"
	ctlLocalPass   = "CtlLocal-pw-77"
	ctlSecretOne   = "CtlDevSecret-one-11"
	ctlSecretTwo   = "CtlDevSecret-two-22"
	ctlProdSecret  = "CtlProdSecret-33"
	ctlCLISecret   = "CtlOnTheCommandLine-44"
	ctlImportSecPf = "CtlImp-"
)

// ctlRig is a cloud simulator and a gateway with a TCP listener and an
// admin unix socket; ctl runs 'edgegw ctl' in this process against it.
type ctlRig struct {
	t      *testing.T
	sim    *cloudsim.Sim
	sock   string
	tcp    string
	pwFile string
	log    *testutil.SyncBuffer // the gateway's log
	out    *testutil.SyncBuffer // everything ctl printed
}

func newCtlRig(t *testing.T) *ctlRig {
	t.Helper()
	sim := gwtest.StartCloud(t, cloudsim.Config{Dialect: secrets.Aliyun, Listen: "127.0.0.1:0", DeviceRate: cloudsim.RateUnlimited})
	cfg := gwtest.Config(t, sim)
	r := &ctlRig{t: t, sim: sim, sock: gwtest.Socket(cfg), pwFile: gwtest.AddAdmin(t, cfg, "ops", ctlAdminPass),
		log: &testutil.SyncBuffer{}, out: &testutil.SyncBuffer{}}
	gw := gwtest.Start(t, cfg, gateway.Options{Logger: slog.New(slog.NewTextHandler(r.log, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	r.tcp = gw.Addr("tcp")
	return r
}

// ctl runs 'edgegw ctl -socket SOCK args…' in this process.
func (r *ctlRig) ctl(stdin string, args ...string) (code int, stdout, stderr string) {
	r.t.Helper()
	return r.run(stdin, append([]string{"ctl", "-socket", r.sock}, args...)...)
}

// run runs edgegw with args exactly as given.
func (r *ctlRig) run(stdin string, args ...string) (code int, stdout, stderr string) {
	r.t.Helper()
	var out, errb bytes.Buffer
	code = run(args, strings.NewReader(stdin), &out, &errb)
	r.out.Write(out.Bytes()) // not the arguments: a test passes a secret there on purpose
	r.out.Write(errb.Bytes())
	return code, out.String(), errb.String()
}

// ok runs ctl and fails unless it exits 0 and stdout contains every want.
func (r *ctlRig) ok(stdin string, args []string, want ...string) string {
	r.t.Helper()
	code, out, errOut := r.ctl(stdin, args...)
	if code != 0 {
		r.t.Fatalf("edgegw ctl %q: exit %d\nstdout: %s\nstderr: %s", args, code, out, errOut)
	}
	for _, w := range want {
		if !strings.Contains(out, w) {
			r.t.Fatalf("edgegw ctl %q: stdout lacks %q:\n%s", args, w, out)
		}
	}
	return out
}

// fails runs ctl and fails unless it exits with code and stderr contains
// want.
func (r *ctlRig) fails(code int, want string, stdin string, args ...string) (stdout string) {
	r.t.Helper()
	got, out, errOut := r.ctl(stdin, args...)
	if got != code || !strings.Contains(errOut, want) {
		r.t.Fatalf("edgegw ctl %q: exit %d, stderr %q; want exit %d with %q", args, got, errOut, code, want)
	}
	return out
}

// eventually polls cond until it holds, failing the test after 15 s.
func (r *ctlRig) eventually(what string, cond func() bool) {
	r.t.Helper()
	testutil.Eventually(r.t, 15*time.Second, cond, "%s", what)
}

func (r *ctlRig) showJSON(id string) adminapi.DeviceDetail {
	r.t.Helper()
	out := r.ok("", []string{"-json", "device", "show", id})
	var det adminapi.DeviceDetail
	if err := json.Unmarshal([]byte(out), &det); err != nil {
		r.t.Fatalf("device show -json: %v: %s", err, out)
	}
	return det
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestCtlCommands drives every ctl command against a running gateway over
// the unix socket, and checks exit codes, output, and that no output or
// log line shows a secret.
func TestCtlCommands(t *testing.T) {
	r := newCtlRig(t)
	id := ctlPK + "/pump-0001"

	r.ok("", []string{"status"}, "edgegw", "devices", "sessions", "cloud", "spool", "local")
	var st adminapi.Status
	if err := json.Unmarshal([]byte(r.ok("", []string{"-json", "status"})), &st); err != nil || st.Version == "" {
		t.Fatalf("status -json: %v %+v", err, st)
	}

	// Products.
	r.ok("", []string{"product", "add", ctlPK, "-dialect", "aliyun"}, "product "+ctlPK+" added (aliyun)")
	r.ok("", []string{"product", "add", "-secret-file", writeFile(t, "ps", ctlProdSecret+"\n"), "a1CtlDyn001"}, "added")
	r.ok("", []string{"product", "list"}, "PRODUCT", ctlPK, "a1CtlDyn001", "set")
	r.fails(1, "409 product "+ctlPK+": already exists", "", "product", "add", ctlPK)

	// device add: the secret from stdin, the local password from a file.
	if err := r.sim.AddDevice(ctlPK, "pump-0001", secrets.NewSecret(ctlSecretOne)); err != nil {
		t.Fatal(err)
	}
	r.ok(ctlSecretOne+"\n", []string{"device", "add", id, "-secret", "-", "-local-password-file", writeFile(t, "lp", ctlLocalPass)}, "device "+id+" added")
	r.eventually("the new device's cloud session", func() bool { return r.sim.Connected(ctlPK, "pump-0001") })

	// Secrets are never taken on the command line; usage errors exit 2.
	r.fails(2, "never taken on the command line", "", "device", "add", ctlPK+"/pump-0002", "-secret", ctlCLISecret)
	r.fails(2, "cannot both read standard input", "x\n", "device", "add", ctlPK+"/pump-0002", "-secret", "-", "-local-password", "-")
	r.fails(2, "want the device as productKey/deviceName", "", "device", "show", "nodevice")
	r.fails(2, "unknown command", "", "frobnicate")
	r.fails(2, "-spool is required", "", "device", "rm", id)
	r.fails(2, "nothing to change", "", "device", "update", id)
	// Refusals exit 1 with the reply's code and message on one line.
	r.fails(1, "edgegw ctl: 409 device "+id+": already exists", ctlSecretOne+"\n", "device", "add", id, "-secret", "-")
	r.fails(1, "edgegw ctl: 400 params.deviceSecret: byte 3 is whitespace", "", "device", "add", ctlPK+"/pump-0002",
		"-secret-file", writeFile(t, "bad", "bad secret\n"))
	r.fails(1, "edgegw ctl: 404 device "+ctlPK+"/nope-0001: not found", "", "device", "show", ctlPK+"/nope-0001")
	// -json prints the refusal as JSON on stdout.
	out := r.fails(1, "404", "", "-json", "device", "show", ctlPK+"/nope-0001")
	var re adminapi.Error
	if err := json.Unmarshal([]byte(out), &re); err != nil || re.Code != 404 {
		t.Fatalf("-json refusal: %v %q", err, out)
	}

	// list and show.
	r.eventually("device list to show the session connected", func() bool {
		_, out, _ := r.ctl("", "device", "list")
		return strings.Contains(out, id) && strings.Contains(out, "connected")
	})
	r.ok("", []string{"device", "list", "-state", "ready", "-product", ctlPK}, "DEVICE", id)
	var list adminapi.DeviceList
	if err := json.Unmarshal([]byte(r.ok("", []string{"-json", "device", "list", "-all", "-limit", "1"})), &list); err != nil || len(list.Devices) != 1 {
		t.Fatalf("device list -json: %v %+v", err, list)
	}
	r.ok("", []string{"device", "show", id}, "device", id, "deviceSecret", "set", "local password", "session", "connected", "queue")

	// Rotation from a file: the session reconnects with the new secret.
	if err := r.sim.AddDevice(ctlPK, "pump-0001", secrets.NewSecret(ctlSecretTwo)); err != nil {
		t.Fatal(err)
	}
	r.ok("", []string{"device", "update", ctlPK, "pump-0001", "-secret-file", writeFile(t, "s2", ctlSecretTwo+"\r\n")}, "deviceSecret rotated")
	r.eventually("the session with the rotated secret", func() bool {
		det := r.showJSON(id)
		return det.Session != nil && det.Session.State == "connected" && det.Session.Connects >= 2
	})
	r.ok("", []string{"device", "update", id, "-disable"}, "disabled")
	r.eventually("the disabled device's session to end", func() bool { return !r.sim.Connected(ctlPK, "pump-0001") })
	r.ok("", []string{"device", "update", id, "-enable", "-clear-local-password"}, "enabled", "localPassword removed")
	r.eventually("the re-enabled device's session", func() bool { return r.sim.Connected(ctlPK, "pump-0001") })
	r.ok("new-"+ctlLocalPass+"\n", []string{"device", "update", id, "-local-password", "-"}, "localPassword set")

	// Queues.
	r.ok("", []string{"queue", "stats"}, "queued", "overflow")
	r.ok("", []string{"queue", "stats", id}, "device", id, "queued")
	r.ok("", []string{"queue", "purge", id}, "purged")

	// Removal and product removal.
	r.fails(1, "409 product "+ctlPK+": still has 1 devices", "", "product", "rm", ctlPK)
	r.ok("", []string{"device", "rm", id, "-spool", "discard"}, "device "+id+" removed")
	r.eventually("the removed device's session to end", func() bool { return !r.sim.Connected(ctlPK, "pump-0001") })
	r.fails(1, "404", "", "device", "show", id)
	r.ok("", []string{"device", "add", ctlPK + "/pump-0003", "-secret-file", writeFile(t, "s3", "CtlDevSecret-three-33"), "-disabled"}, "added")
	r.ok("", []string{"device", "rm", ctlPK + "/pump-0003", "-spool", "drain", "-drain-timeout", "5s"}, "removed")
	r.ok("", []string{"product", "rm", ctlPK}, "product "+ctlPK+" removed")
	r.fails(1, "404 product "+ctlPK+": not found", "", "product", "rm", ctlPK)

	// No ctl output and no log line holds a secret.
	assertNoSecrets(t, r, ctlAdminPass, ctlLocalPass, ctlSecretOne, ctlSecretTwo, ctlProdSecret, ctlCLISecret, "bad secret", "CtlDevSecret-three-33")
}

func assertNoSecrets(t *testing.T, r *ctlRig, secretValues ...string) {
	t.Helper()
	out, logs := r.out.String(), r.log.String()
	if !strings.Contains(logs, `msg="admin change"`) {
		t.Fatal("no audit line in the gateway log")
	}
	for _, s := range secretValues {
		if strings.Contains(out, s) {
			t.Errorf("ctl output contains the secret %q", s)
		}
		if strings.Contains(logs, s) {
			t.Errorf("the gateway log contains the secret %q", s)
		}
	}
}

// TestCtlNetworkAdmin: ctl over TCP with the configured admin user; a
// wrong password, a device's credentials and a missing socket are errors.
func TestCtlNetworkAdmin(t *testing.T) {
	r := newCtlRig(t)
	url := "tcp://" + r.tcp
	if c, out, errOut := r.run("", "ctl", "-broker", url, "-user", "ops", "-password-file", r.pwFile, "status"); c != 0 || !strings.Contains(out, "edgegw") {
		t.Fatalf("status over TCP: exit %d: %s %s", c, out, errOut)
	}
	bad := writeFile(t, "bad.pw", "wrong-password\n")
	if c, _, errOut := r.run("", "ctl", "-broker", url, "-user", "ops", "-password-file", bad, "status"); c != 1 || !strings.Contains(errOut, "connect to "+url) {
		t.Fatalf("wrong admin password: exit %d: %s", c, errOut)
	}
	// A device's own credentials get it no admin access.
	r.ok("", []string{"product", "add", ctlPK})
	r.ok("", []string{"device", "add", ctlPK + "/pump-0001", "-secret-file", writeFile(t, "s", ctlSecretOne), "-local-password-file", writeFile(t, "lp", ctlLocalPass)})
	devPW := writeFile(t, "dev.pw", ctlLocalPass)
	if c, _, errOut := r.run("", "ctl", "-broker", url, "-user", "pump-0001&"+ctlPK, "-password-file", devPW, "device", "rm", ctlPK+"/pump-0001", "-spool", "discard"); c != 1 || !strings.Contains(errOut, "not an admin identity") {
		t.Fatalf("device credentials: exit %d: %s", c, errOut)
	}
	r.ok("", []string{"device", "show", ctlPK + "/pump-0001"}, "pump-0001")
	if c, _, errOut := r.run("", "ctl", "-socket", filepath.Join(t.TempDir(), "none.sock"), "status"); c != 1 || !strings.Contains(errOut, "is edgegw running") {
		t.Fatalf("missing socket: exit %d: %s", c, errOut)
	}
	if c, _, _ := r.run("", "ctl", "-broker", url, "-user", "ops", "status"); c != 2 {
		t.Fatalf("-user without -password-file: exit %d, want 2", c)
	}
	assertNoSecrets(t, r, ctlAdminPass, ctlLocalPass, ctlSecretOne, "wrong-password")
}

// TestCtlImport: the console's CSV with a BOM, CRLF, another column order,
// an extra column, a blank line and bad rows; re-import is idempotent; a
// changed secret is an update.
func TestCtlImport(t *testing.T) {
	r := newCtlRig(t)
	if err := r.sim.AddDevice(ctlPK, "imp-0001", secrets.NewSecret(ctlImportSecPf+"0001")); err != nil {
		t.Fatal(err)
	}
	csvText := "\uFEFFDeviceName,productkey,DeviceSecret,Note\r\n" +
		"imp-0001," + ctlPK + "," + ctlImportSecPf + "0001,first\r\n" + // line 2
		"imp-0002," + ctlPK + "," + ctlImportSecPf + "0002,\r\n" + // 3
		",,,\r\n" + // 4: blank
		"ab," + ctlPK + "," + ctlImportSecPf + "0003,too short\r\n" + // 5
		"imp-0001," + ctlPK + "," + ctlImportSecPf + "0001,twice\r\n" + // 6
		"imp-0004," + ctlPK + "\r\n" + // 7: too few fields
		"imp-0005," + ctlPK + ",,no secret\r\n" + // 8
		"imp-0006," + ctlPK + "," + ctlImportSecPf + "00 6,space\r\n" + // 9
		"imp-0007," + ctlPK + "," + ctlImportSecPf + "0007,last\r\n" + // 10
		"imp-0008," + ctlPK + "," + strings.Repeat("L", 600) + ",long\r\n" // 11
	path := writeFile(t, "devices.csv", csvText)
	code, out, errOut := r.ctl("", "import", path)
	if code != 1 || !strings.Contains(errOut, "6 of 9 rows failed") {
		t.Fatalf("import: exit %d, stderr %q", code, errOut)
	}
	for _, want := range []string{
		"devices.csv: 9 rows in ", "3 added, 0 unchanged, 0 updated, 6 failed",
		"products added: " + ctlPK,
		"devices.csv:5: " + ctlPK + "/ab: 400 deviceName \"ab\": must be 4-32 characters",
		"devices.csv:6: " + ctlPK + "/imp-0001: 400 device listed twice (first on line 2)",
		"devices.csv:7: 400 wrong number of fields",
		"devices.csv:8: " + ctlPK + "/imp-0005: 400 DeviceSecret: empty, and product " + ctlPK + " has no productSecret",
		"devices.csv:9: " + ctlPK + "/imp-0006: 400 DeviceSecret: byte 9 is whitespace",
		"devices.csv:11: 400 DeviceSecret: is 600 bytes, at most 512 allowed",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("import output lacks %q:\n%s", want, out)
		}
	}
	r.eventually("the imported device's session", func() bool { return r.sim.Connected(ctlPK, "imp-0001") })
	r.ok("", []string{"device", "list", "-product", ctlPK}, ctlPK+"/imp-0001", ctlPK+"/imp-0002", ctlPK+"/imp-0007")

	// Re-import: nothing changes.
	code, out, _ = r.ctl("", "import", path)
	if code != 1 || !strings.Contains(out, "0 added, 3 unchanged, 0 updated, 6 failed") {
		t.Fatalf("re-import: exit %d:\n%s", code, out)
	}
	// A clean file with one rotated secret: one update, exit 0; as JSON.
	clean := writeFile(t, "clean.csv", "ProductKey,DeviceName,DeviceSecret\n"+
		ctlPK+",imp-0001,"+ctlImportSecPf+"0001\n"+
		ctlPK+",imp-0002,"+ctlImportSecPf+"0002-rotated\n"+
		ctlPK+",imp-0007,"+ctlImportSecPf+"0007\n")
	code, out, errOut = r.ctl("", "-json", "import", "-batch", "2", clean)
	var sum ImportSummary
	if err := json.Unmarshal([]byte(out), &sum); code != 0 || err != nil {
		t.Fatalf("clean import: exit %d, %v: %s %s", code, err, out, errOut)
	}
	if sum.Rows != 3 || sum.Added != 0 || sum.Unchanged != 2 || sum.Updated != 1 || sum.Failed != 0 || len(sum.Errors) != 0 {
		t.Fatalf("clean import: %+v", sum)
	}
	if strings.Contains(errOut, "\r") {
		t.Fatalf("progress written to a non-terminal: %q", errOut)
	}
	// The same file from standard input: all unchanged.
	code, out, _ = r.ctl(readFile(t, clean), "import", "-")
	if code != 0 || !strings.Contains(out, "0 added, 3 unchanged, 0 updated, 0 failed") {
		t.Fatalf("import from stdin: exit %d: %s", code, out)
	}

	// A file without the header is refused as a whole.
	for _, bad := range []string{"", ctlPK + ",imp-0009\n", "ProductKey,DeviceName\n" + ctlPK + ",imp-0009\n"} {
		p := writeFile(t, "bad.csv", bad)
		if code, _, errOut := r.ctl("", "import", p); code != 1 || !strings.Contains(errOut, "bad.csv:1:") {
			t.Errorf("import of %q: exit %d, %s", bad, code, errOut)
		}
	}
	assertNoSecrets(t, r, ctlImportSecPf+"0001", ctlImportSecPf+"0002", ctlImportSecPf+"0003", ctlImportSecPf+"0007", ctlImportSecPf+"00 6")
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestCtlImport10k imports the console export of 10,000 devices, then
// again (idempotent). The devices are imported disabled: 10,000 live cloud
// sessions are the uplink benchmarks' business, and more goroutines than
// the race detector allows.
func TestCtlImport10k(t *testing.T) {
	if testing.Short() {
		t.Skip("10,000-device import skipped in -short mode")
	}
	r := newCtlRig(t)
	const n = 10000
	var b strings.Builder
	b.WriteString("ProductKey,DeviceName,DeviceSecret\r\n")
	for i := range n {
		fmt.Fprintf(&b, "a1CtlBulk01,bulk-%05d,BulkSecret%05dxyzxyz\r\n", i, i)
	}
	path := writeFile(t, "bulk.csv", b.String())

	start := time.Now()
	code, out, errOut := r.ctl("", "-json", "import", "-disabled", "-batch", "1000", path)
	first := time.Since(start)
	var sum ImportSummary
	if err := json.Unmarshal([]byte(out), &sum); code != 0 || err != nil {
		t.Fatalf("import: exit %d, %v: %s %s", code, err, out, errOut)
	}
	if sum.Rows != n || sum.Added != n || sum.Failed != 0 {
		t.Fatalf("import: %+v", sum)
	}
	start = time.Now()
	code, out, errOut = r.ctl("", "-json", "import", "-disabled", "-batch", "1000", path)
	second := time.Since(start)
	sum = ImportSummary{}
	if err := json.Unmarshal([]byte(out), &sum); code != 0 || err != nil {
		t.Fatalf("re-import: exit %d, %v: %s %s", code, err, out, errOut)
	}
	if sum.Unchanged != n || sum.Added != 0 || sum.Updated != 0 {
		t.Fatalf("re-import: %+v", sum)
	}
	var st adminapi.Status
	if err := json.Unmarshal([]byte(r.ok("", []string{"-json", "status"})), &st); err != nil || st.Devices.Total != n || st.Devices.Disabled != n {
		t.Fatalf("status after import: %v %+v", err, st.Devices)
	}
	t.Logf("import of %d devices: %s (%.0f devices/s); re-import: %s", n, first.Round(time.Millisecond), n/first.Seconds(), second.Round(time.Millisecond))
}

// TestImportBatchBounded: a batch never exceeds the byte bound (the
// broker's packet limit) nor the row count, and always makes progress.
func TestImportBatchBounded(t *testing.T) {
	long := make([]importRow, 3000)
	for i := range long {
		long[i] = importRow{line: i + 2, productKey: "a1CtlBulk01", deviceName: fmt.Sprintf("bulk-%05d", i), secret: strings.Repeat("s", 512)}
	}
	short := long[:0:0]
	for i := range 3000 {
		short = append(short, importRow{line: i + 2, productKey: "a1CtlBulk01", deviceName: fmt.Sprintf("bulk-%05d", i), secret: "x"})
	}
	for _, tc := range []struct {
		name string
		rows []importRow
		n    int
	}{{"long secrets", long, 1000}, {"short rows", short, 1000}, {"one per batch", short[:5], 1}} {
		total := 0
		for rest := tc.rows; len(rest) > 0; {
			b := nextBatch(rest, tc.n)
			if len(b) == 0 || len(b) > tc.n {
				t.Fatalf("%s: batch of %d rows (limit %d)", tc.name, len(b), tc.n)
			}
			rows := make([]adminapi.ImportRow, len(b))
			for i, r := range b {
				rows[i] = r.wire()
			}
			payload, err := json.Marshal(adminapi.Request{ID: "x", Method: adminapi.MethodDeviceImport,
				Params: adminapi.DeviceImportParams{Rows: rows}})
			if err != nil {
				t.Fatal(err)
			}
			if len(payload) > importBatchBytes+1024 {
				t.Fatalf("%s: request of %d bytes", tc.name, len(payload))
			}
			total += len(b)
			rest = rest[len(b):]
		}
		if total != len(tc.rows) {
			t.Fatalf("%s: %d rows batched, want %d", tc.name, total, len(tc.rows))
		}
	}
}

// TestCtlActivateAndProductUpdate: 'device activate' retries an
// activation-failed device now (and with -wait reports the outcome);
// 'product update' changes a productSecret (from a file or standard input,
// never the command line) and the default connect params, which 'product
// show' and 'product list' display.
func TestCtlActivateAndProductUpdate(t *testing.T) {
	r := newCtlRig(t)
	const pk, newSecret = "a1CtlDynP01", "CtlProdSecret-new-55"
	r.ok(ctlProdSecret+"\n", []string{"product", "add", pk, "-secret", "-", "-default-connect-params", "_ss=1,ext=3"}, "product "+pk+" added")
	r.ok("", []string{"product", "show", pk}, "_ss=1,ext=3", "productSecret", "set")
	r.ok("", []string{"product", "list"}, "DEFAULT PARAMS", "_ss=1,ext=3")

	// Alibaba registration needs TLS; this cloud is plain TCP, so the
	// activation fails without reaching it.
	id := pk + "/dyn-0001"
	r.ok("", []string{"device", "add", id}, "awaiting-activation")
	r.eventually("activation-failed", func() bool { return r.showJSON(id).Device.State == "activation-failed" })
	r.ok("", []string{"device", "activate", id}, "activating now", "was activation-failed")
	code, out, errOut := r.ctl("", "device", "activate", id, "-wait", "10s")
	if code != 1 || !strings.Contains(out, "activation-failed (") || !strings.Contains(errOut, "only over TLS") {
		t.Fatalf("device activate -wait: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	if !strings.Contains(r.log.String(), "edgegw ctl device activate "+id) {
		t.Error("the log does not name 'edgegw ctl device activate'")
	}

	r.ok("", []string{"product", "update", pk, "-secret-file", writeFile(t, "ps", newSecret+"\n")}, "productSecret changed", "1 devices activate again")
	r.ok("", []string{"product", "update", pk, "-clear-default-connect-params"}, `defaultConnectParams "_ss=1,ext=3" -> ""`)
	r.ok("", []string{"product", "show", pk}, "default connect params  -")
	r.fails(2, "nothing to change", "", "product", "update", pk)
	r.fails(2, "never taken on the command line", "", "product", "update", pk, "-secret", ctlCLISecret)
	r.fails(1, "409 product "+pk+": has 1 devices", "", "product", "update", pk, "-dialect", "enos")
	r.fails(1, "400 params.defaultConnectParams", "", "product", "update", pk, "-default-connect-params", "nokey")

	if err := r.sim.AddDevice(ctlPK, "ready-0001", secrets.NewSecret(ctlSecretOne)); err != nil {
		t.Fatal(err)
	}
	r.ok("", []string{"product", "add", ctlPK}, "added")
	r.ok("", []string{"device", "add", ctlPK + "/ready-0001", "-secret-file", writeFile(t, "s1", ctlSecretOne)}, "added")
	r.fails(1, "409 device "+ctlPK+"/ready-0001: already has its deviceSecret", "", "device", "activate", ctlPK+"/ready-0001")
	r.fails(2, "-fresh is for a device added without", "", "device", "add", ctlPK+"/x-1", "-fresh", "-secret-file", writeFile(t, "s2", ctlSecretTwo))

	assertNoSecrets(t, r, ctlProdSecret, newSecret, ctlCLISecret, ctlSecretOne, ctlSecretTwo)
}
