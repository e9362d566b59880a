package gateway

import (
	"bytes"
	_ "embed"
	"fmt"
	"html/template"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/edgegw/edgegw/gateway/adminapi"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink"
)

// The status page: GET / on the metrics listener, for a person at the
// plant. It shows what gateway.status shows (the same function makes
// both), and the devices with the largest backlog. It holds no secret
// (gateway.status has none), loads nothing from elsewhere (the CSP header
// forbids it) and refreshes itself with a meta refresh, so it needs no
// script.

const (
	// pageDevices bounds the device table, whatever the fleet's size.
	pageDevices = 25
	// pageRefresh is the page's refresh interval in seconds.
	pageRefresh = 10
)

//go:embed statuspage.html
var statusPageHTML string

var statusPageTmpl = template.Must(template.New("status").Funcs(template.FuncMap{
	"bytes": humanBytes,
	"age":   humanAge,
	"ago": func(t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		return humanAge(time.Since(t).Seconds()) + " ago"
	},
}).Parse(statusPageHTML))

// statusPage is the page's data.
type statusPage struct {
	S             adminapi.Status
	Now, Uptime   string
	Refresh       int
	Sessions      []pageCount // by cloud session state, every known state
	DevStates     []pageCount // by registry state
	BudgetPct     float64     // spool bytes of the budget
	OldestSeconds float64     // the spool's oldest message
	Disk          diskSpace
	Devices       []pageDevice // the first pageDevices by backlog
	DeviceCount   int          // devices with a queue or a session
}

type pageCount struct {
	K   string
	V   int
	Bad bool // a non-zero count is a problem
}

type pageDevice struct {
	ID            string
	Session       string // the cloud session's state, or "none"
	Queued        int
	Bytes         int64
	OldestSeconds float64
}

// diskSpace is the space of the file system holding the state directory
// (zero where it cannot be read).
type diskSpace struct {
	Free, Total int64
	FreePct     float64
}

// statusPageData collects the page's data.
func (g *Gateway) statusPageData() (*statusPage, error) {
	st, err := g.status()
	if err != nil {
		return nil, err
	}
	g.mu.Lock()
	mgr, q := g.mgr, g.queue
	g.mu.Unlock()
	p := &statusPage{S: st, Now: time.Now().UTC().Format(time.RFC3339), Refresh: pageRefresh,
		Uptime: (time.Duration(st.UptimeSeconds) * time.Second).String()}
	seen := map[string]bool{}
	for _, s := range stateSeries {
		seen[string(s)] = true
		p.Sessions = append(p.Sessions, pageCount{K: string(s), V: st.Sessions[string(s)], Bad: s == uplink.StateAuthFailed || s == uplink.StateActivationFailed || s == uplink.StateBackoff})
	}
	for _, k := range sortedKeys(st.Sessions) {
		if !seen[k] {
			p.Sessions = append(p.Sessions, pageCount{K: k, V: st.Sessions[k]})
		}
	}
	for _, k := range sortedKeys(st.Devices.ByState) {
		p.DevStates = append(p.DevStates, pageCount{K: k, V: st.Devices.ByState[k]})
	}
	if st.Spool.Budget > 0 {
		p.BudgetPct = 100 * float64(st.Spool.Bytes) / float64(st.Spool.Budget)
	}
	p.Disk = statDisk(g.cfg.StateDir)

	// The devices: those with a queue and those with a session, the
	// largest backlog first, then the ones not connected.
	devs := map[secrets.DeviceID]*pageDevice{}
	if dl, ok := q.(deviceLister); ok {
		for _, d := range dl.Devices() {
			devs[d.Device] = &pageDevice{ID: d.Device.String(), Session: "none", Queued: d.Depth, Bytes: d.Bytes, OldestSeconds: d.OldestAge.Seconds()}
			if d.Depth > 0 {
				p.OldestSeconds = max(p.OldestSeconds, d.OldestAge.Seconds())
			}
		}
	}
	for _, s := range mgr.Statuses() {
		d := devs[s.Device]
		if d == nil {
			d = &pageDevice{ID: s.Device.String()}
			devs[s.Device] = d
		}
		d.Session = string(s.State)
	}
	list := make([]pageDevice, 0, len(devs))
	for _, d := range devs {
		list = append(list, *d)
	}
	slices.SortFunc(list, func(a, b pageDevice) int {
		if a.Queued != b.Queued {
			return b.Queued - a.Queued
		}
		if ac, bc := a.Session == string(uplink.StateConnected), b.Session == string(uplink.StateConnected); ac != bc {
			if bc {
				return -1
			}
			return 1
		}
		return strings.Compare(a.ID, b.ID)
	})
	p.DeviceCount = len(list)
	p.Devices = list[:min(len(list), pageDevices)]
	return p, nil
}

func sortedKeys(m map[string]int) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// serveStatusPage answers GET / with the status page.
func (o *observer) serveStatusPage(w http.ResponseWriter, _ *http.Request) {
	p, err := o.g.statusPageData()
	if err != nil {
		plain(w, http.StatusServiceUnavailable, "edgegw: "+err.Error()+"\n")
		return
	}
	var buf bytes.Buffer
	if err := statusPageTmpl.Execute(&buf, p); err != nil {
		o.g.log.Warn("status page", "err", err)
		plain(w, http.StatusInternalServerError, "edgegw: status page failed\n")
		return
	}
	writeStatusPage(w, buf.Bytes())
}

func writeStatusPage(w http.ResponseWriter, body []byte) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
	h.Set("Referrer-Policy", "no-referrer")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func humanAge(sec float64) string {
	if sec <= 0 {
		return "–"
	}
	d := time.Duration(sec * float64(time.Second))
	switch {
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	case d < 48*time.Hour:
		return d.Round(time.Second).String()
	}
	return fmt.Sprintf("%.1f days", d.Hours()/24)
}
