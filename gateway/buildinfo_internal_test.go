package gateway

import (
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgegw/edgegw/gateway/config"
)

// TestBuildInfoMetric: edgegw_build_info{version,commit,goversion} is 1 on
// every scrape, from the start, so dashboards can join on it and see
// deployments change.
func TestBuildInfoMetric(t *testing.T) {
	cfg := config.Default()
	cfg.StateDir = t.TempDir()
	cfg.Cloud.Endpoint = "tcp://127.0.0.1:1"
	for _, tc := range []struct {
		name          string
		opts          Options
		version, comm string
	}{
		{"stamped", Options{Version: "1.2.3", Commit: "abc1234"}, "1.2.3", "abc1234"},
		{"defaults", Options{}, "devel", "unknown"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g, err := New(cfg, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			reg := prometheus.NewPedanticRegistry()
			reg.MustRegister(newCollector(g))
			mfs, err := reg.Gather()
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, mf := range mfs {
				if mf.GetName() != "edgegw_build_info" {
					continue
				}
				for _, m := range mf.GetMetric() {
					var labels []string
					for _, lp := range m.GetLabel() {
						labels = append(labels, lp.GetName()+"="+lp.GetValue())
					}
					got = append(got, fmt.Sprintf("%s %s {%s} %g", mf.GetType(), mf.GetName(), strings.Join(labels, ","), m.GetGauge().GetValue()))
				}
			}
			want := fmt.Sprintf("GAUGE edgegw_build_info {commit=%s,goversion=%s,version=%s} 1", tc.comm, runtime.Version(), tc.version)
			if len(got) != 1 || got[0] != want {
				t.Errorf("got %q, want [%q]", got, want)
			}
		})
	}
}
