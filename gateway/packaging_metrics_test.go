package gateway

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
)

// monitoringFiles are the alert rules and the dashboard shipped in
// packaging/; their queries may only use metrics the gateway exports.
var monitoringFiles = []string{
	"../packaging/monitoring/edgegw-alerts.yml",
	"../packaging/monitoring/edgegw-dashboard.json",
}

var metricName = regexp.MustCompile(`\bedgegw_[a-zA-Z0-9_]+`)

// TestMonitoringUsesExportedMetrics: every edgegw_ metric named by the
// alert rules and the dashboard is in a running gateway's /metrics, so
// that a renamed metric cannot leave an alert that never fires.
func TestMonitoringUsesExportedMetrics(t *testing.T) {
	r := newMetRig(t, 1)
	s := r.scrape()
	for _, f := range monitoringFiles {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(f, ".json") {
			var v any
			if err := json.Unmarshal(b, &v); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
		}
		names := metricName.FindAllString(string(b), -1)
		if len(names) < 10 {
			t.Errorf("%s names %d metrics; is it the right file?", f, len(names))
		}
		slices.Sort(names)
		for _, n := range slices.Compact(names) {
			if !exported(s, n) {
				t.Errorf("%s uses %s, which /metrics does not have", f, n)
			}
		}
	}
}

// exported reports whether name is a family of s, or a histogram's
// _bucket, _sum or _count series.
func exported(s scrape, name string) bool {
	if _, ok := s.mfs[name]; ok {
		return true
	}
	for _, suf := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suf); ok {
			if mf := s.mfs[base]; mf != nil && mf.GetType() == dto.MetricType_HISTOGRAM {
				return true
			}
		}
	}
	return false
}
