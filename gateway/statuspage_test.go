package gateway_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/html"

	"github.com/edgegw/edgegw/gateway/adminapi"
	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/internal/testutil/gwtest"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink/cloudsim"
)

// pageRig is an admin rig with the metrics listener on loopback, one
// device the cloud accepts and one it refuses, whose messages wait in the
// spool.
type pageRig struct {
	*admRig
	a       *admClient
	page    string // the status page's URL
	backlog int    // messages queued for stuckDev
}

const (
	pageOKDev    = "okay-0001"
	pageStuckDev = "stuck-0001"
	// pageSecret is the stuck device's deviceSecret; the page must never
	// show it (nor any other).
	pageSecret = "StUcK-secret-never-shown-7731"
)

func newPageRig(t *testing.T) *pageRig {
	t.Helper()
	sim := gwtest.StartCloud(t, cloudsim.Config{Dialect: secrets.Aliyun, Listen: "127.0.0.1:0", DeviceRate: cloudsim.RateUnlimited})
	cfg := gwtest.Config(t, sim)
	cfg.Metrics.Listen = "127.0.0.1:0"
	r := &pageRig{admRig: &admRig{t: t, sim: sim, cfg: cfg, log: &testutil.SyncBuffer{}, sock: gwtest.Socket(cfg), replies: &admReplies{}}, backlog: 3}
	r.start()
	r.page = "http://" + r.gw.MetricsAddr().String() + "/"
	r.a = r.dialAdmin("unix://"+r.sock, "", "")
	r.a.must(adminapi.MethodProductAdd, adminapi.ProductAddParams{ProductKey: admPK}, nil)
	if err := sim.AddDevice(admPK, pageOKDev, secrets.NewSecret("OkAy-secret-0001")); err != nil {
		t.Fatal(err)
	}
	r.a.must(adminapi.MethodDeviceAdd, adminapi.DeviceAddParams{DeviceID: did(admPK, pageOKDev), DeviceSecret: "OkAy-secret-0001"}, nil)
	// The cloud does not know the stuck device: its session is refused
	// and what it publishes stays in the spool.
	r.a.must(adminapi.MethodDeviceAdd, adminapi.DeviceAddParams{DeviceID: did(admPK, pageStuckDev), DeviceSecret: pageSecret, LocalPassword: "pw-stuck"}, nil)
	testutil.Eventually(t, 10*time.Second, func() bool { return sim.Connected(admPK, pageOKDev) }, "%s connected", pageOKDev)
	d, err := r.connectDevice(admPK, pageStuckDev, "pw-stuck")
	if err != nil {
		t.Fatal(err)
	}
	for i := range r.backlog {
		testutil.WaitToken(t, d.c.Publish(propertyTopic(admPK, pageStuckDev), 1, false, fmt.Sprintf(`{"id":"%d"}`, i)), 10*time.Second, "publish")
	}
	return r
}

// settled waits until gateway.status shows both sessions in their final
// states and the backlog spooled, and returns it.
func (r *pageRig) settled() adminapi.Status {
	r.t.Helper()
	var st adminapi.Status
	testutil.Eventually(r.t, 20*time.Second, func() bool {
		r.a.must(adminapi.MethodGatewayStatus, nil, &st)
		return st.Cloud.Connected == 1 && st.Cloud.Sessions == 2 && st.Spool.Depth == r.backlog &&
			st.Sessions["auth-failed"] == 1 && len(st.Cloud.Errors) > 0
	}, "gateway.status to settle")
	return st
}

// pageDoc is a parsed status page: the text and attributes of its
// elements with an id, and its device rows by data-device.
type pageDoc struct {
	text    map[string]string
	value   map[string]string // <data value=…> by id
	devices map[string]map[string]string
	raw     string
}

func parsePage(t *testing.T, body string) pageDoc {
	t.Helper()
	root, err := html.Parse(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse page: %v", err)
	}
	p := pageDoc{text: map[string]string{}, value: map[string]string{}, devices: map[string]map[string]string{}, raw: body}
	var walk func(n *html.Node, row map[string]string)
	walk = func(n *html.Node, row map[string]string) {
		if n.Type == html.ElementNode {
			if dev := attr(n, "data-device"); dev != "" {
				row = map[string]string{}
				p.devices[dev] = row
			}
			if k := attr(n, "data-k"); k != "" && row != nil {
				row[k] = attr(n, "value")
				if row[k] == "" {
					row[k] = textOf(n)
				}
			}
			if id := attr(n, "id"); id != "" {
				p.text[id] = textOf(n)
				if v := attr(n, "value"); v != "" {
					p.value[id] = v
				}
			}
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c, row)
		}
	}
	walk(root, nil)
	return p
}

func attr(n *html.Node, key string) string {
	for _, a := range n.Attr {
		if a.Key == key {
			return a.Val
		}
	}
	return ""
}

func textOf(n *html.Node) string {
	var b strings.Builder
	var walk func(*html.Node)
	walk = func(n *html.Node) {
		if n.Type == html.TextNode {
			b.WriteString(n.Data)
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(n)
	return strings.Join(strings.Fields(b.String()), " ")
}

// checkPage compares a page with what gateway.status, device.list and
// queue.stats report.
func (r *pageRig) checkPage(t *testing.T, p pageDoc, st adminapi.Status) {
	t.Helper()
	want := map[string]string{
		"devices-total":       strconv.Itoa(st.Devices.Total),
		"cloud-connected":     strconv.Itoa(st.Cloud.Connected),
		"cloud-sessions":      strconv.Itoa(st.Cloud.Sessions),
		"spool-depth":         strconv.Itoa(st.Spool.Depth),
		"spool-bytes":         strconv.FormatInt(st.Spool.Bytes, 10),
		"spool-dead-letters":  strconv.Itoa(st.Spool.DeadLetters),
		"session-connected":   strconv.Itoa(st.Sessions["connected"]),
		"session-auth-failed": strconv.Itoa(st.Sessions["auth-failed"]),
		"version":             st.Version,
	}
	for id, w := range want {
		got, ok := p.value[id]
		if !ok {
			got, ok = p.text[id]
		}
		if !ok || got != w {
			t.Errorf("page #%s = %q (present %v), gateway.status says %q", id, got, ok, w)
		}
	}
	if e := st.Cloud.Errors[0].Error; !strings.Contains(p.text["errors"], e) {
		t.Errorf("page errors %q lack gateway.status's %q", p.text["errors"], e)
	}

	var list adminapi.DeviceList
	r.a.must(adminapi.MethodDeviceList, adminapi.DeviceListParams{}, &list)
	var qs adminapi.QueueStats
	r.a.must(adminapi.MethodQueueStats, adminapi.QueueStatsParams{Device: new(did(admPK, pageStuckDev))}, &qs)
	for _, d := range list.Devices {
		row := p.devices[d.ID()]
		if row == nil {
			t.Errorf("page has no row for %s", d.ID())
			continue
		}
		if row["session"] != d.Session || row["queued"] != strconv.Itoa(d.Queued) {
			t.Errorf("page row %s = %v, device.list says session %s, queued %d", d.ID(), row, d.Session, d.Queued)
		}
	}
	stuck := p.devices[admPK+"/"+pageStuckDev]
	if age, err := strconv.ParseFloat(stuck["oldest"], 64); err != nil || age <= 0 || age > qs.Device.OldestAgeSeconds+60 {
		t.Errorf("stuck device's oldest age on the page %q, queue.stats says %v s", stuck["oldest"], qs.Device.OldestAgeSeconds)
	}
	if strings.Contains(p.raw, pageSecret) || strings.Contains(p.raw, "pw-stuck") || strings.Contains(p.raw, "OkAy-secret") {
		t.Error("the status page shows a secret")
	}
}

// TestStatusPage: GET / on the metrics listener is an HTML page whose
// numbers are gateway.status's, device.list's and queue.stats's; it
// refreshes itself and loads nothing from elsewhere.
func TestStatusPage(t *testing.T) {
	r := newPageRig(t)
	st := r.settled()

	resp, err := http.Get(r.page)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("GET / = %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") {
		t.Errorf("Content-Security-Policy = %q", csp)
	}
	p := parsePage(t, string(body))
	r.checkPage(t, p, st)
	if !strings.Contains(p.raw, `http-equiv="refresh"`) {
		t.Error("the page does not refresh itself")
	}
	for _, ext := range []string{"src=", "<link", "@import", "url("} {
		if strings.Contains(p.raw, ext) {
			t.Errorf("the page loads an asset (%s)", ext)
		}
	}
}

// TestStatusPageChromium loads the status page in a real headless
// Chromium: the DOM it builds has gateway.status's numbers, and a
// screenshot is taken (kept in $EDGEGW_SCREENSHOT_DIR when set).
func TestStatusPageChromium(t *testing.T) {
	chromium := chromiumPath(t)
	r := newPageRig(t)
	st := r.settled()

	dir := t.TempDir()
	run := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
		defer cancel()
		args = append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
			"--disable-dev-shm-usage", "--user-data-dir=" + filepath.Join(dir, "profile"), "--window-size=1200,900"}, args...)
		cmd := exec.CommandContext(ctx, chromium, append(args, r.page)...)
		cmd.WaitDelay = 5 * time.Second
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("chromium %v: %v\n%s", args, err, stderr.String())
		}
		return string(out)
	}
	p := parsePage(t, run("--dump-dom"))
	r.checkPage(t, p, st)

	shot := filepath.Join(dir, "status.png")
	run("--screenshot=" + shot)
	png, err := os.ReadFile(shot)
	if err != nil || len(png) < 1000 || string(png[1:4]) != "PNG" {
		t.Fatalf("screenshot: %d bytes, %v", len(png), err)
	}
	if keep := os.Getenv("EDGEGW_SCREENSHOT_DIR"); keep != "" {
		if err := os.WriteFile(filepath.Join(keep, "edgegw-status.png"), png, 0o644); err != nil {
			t.Error(err)
		}
	}
}

// chromiumPath returns Debian's chromium, or skips (fails under
// EDGEGW_REQUIRE_PEERS=1) without it.
func chromiumPath(t *testing.T) string {
	if p, err := exec.LookPath("chromium"); err == nil {
		return p
	}
	if os.Getenv(testutil.RequirePeersEnv) == "1" {
		t.Fatalf("chromium not found and %s=1: apt-get install chromium", testutil.RequirePeersEnv)
	}
	t.Skipf("chromium not found: apt-get install chromium (set %s=1 to make this a failure)", testutil.RequirePeersEnv)
	return ""
}
