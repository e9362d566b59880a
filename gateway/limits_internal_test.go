package gateway

import (
	"log/slog"
	"testing"
	"time"

	"github.com/edgegw/edgegw/gateway/config"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink"
	"github.com/edgegw/edgegw/uplink/spool"
)

// TestConfigValidationCoversUplinkLimits: whatever configuration Validate
// accepts, the cloud sessions accept too, so that nothing fails at start-up
// without a file, line and key (issue #15: backoff_max ≤ 30 s for enos
// passed validation and then failed in uplink). The cases sit on both sides
// of each limit the uplink checks.
func TestConfigValidationCoversUplinkLimits(t *testing.T) {
	if got := uplink.DefaultLimits(secrets.EnOS).Backoff.Floor; got != config.EnOSBackoffFloor {
		t.Fatalf("uplink's EnOS backoff floor is %v, config.EnOSBackoffFloor %v: keep them equal", got, config.EnOSBackoffFloor)
	}
	enos := func(c *config.Config) {
		c.Cloud.Dialect = secrets.EnOS
		c.Cloud.Endpoint = "tcp://127.0.0.1:11883"
		c.Cloud.Keepalive = config.Duration(120 * time.Second)
	}
	tests := []struct {
		name   string
		mutate func(*config.Config)
	}{
		{"aliyun defaults", func(*config.Config) {}},
		{"enos defaults", enos},
		{"enos backoff_max at the floor", func(c *config.Config) {
			enos(c)
			c.Cloud.BackoffMin, c.Cloud.BackoffMax = config.Duration(500*time.Millisecond), config.Duration(config.EnOSBackoffFloor)
		}},
		{"enos backoff_max just above the floor", func(c *config.Config) {
			enos(c)
			c.Cloud.BackoffMax = config.Duration(config.EnOSBackoffFloor + time.Second)
		}},
		{"enos backoff_min above the floor", func(c *config.Config) {
			enos(c)
			c.Cloud.BackoffMin, c.Cloud.BackoffMax = config.Duration(time.Minute), config.Duration(2*time.Minute)
		}},
		{"aliyun short backoff", func(c *config.Config) {
			c.Cloud.BackoffMin, c.Cloud.BackoffMax = config.Duration(time.Millisecond), config.Duration(time.Millisecond)
		}},
		{"enos keepalive low", func(c *config.Config) { enos(c); c.Cloud.Keepalive = config.Duration(59 * time.Second) }},
		{"enos keepalive high", func(c *config.Config) { enos(c); c.Cloud.Keepalive = config.Duration(300 * time.Second) }},
		{"inflight 65000", func(c *config.Config) { c.Cloud.Inflight = 65000 }},
		{"inflight 65001", func(c *config.Config) { c.Cloud.Inflight = 65001 }},
		{"max payload 1", func(c *config.Config) { c.Cloud.MaxPayload = 1 }},
		{"tiny rates", func(c *config.Config) { c.Cloud.ConnectRate, c.Cloud.GatewayRate = 0.001, 0.001 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := config.Default()
			cfg.StateDir = t.TempDir()
			tt.mutate(cfg)
			verr := cfg.Validate()
			q, err := spool.NewMem(spool.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer q.Close()
			g := &Gateway{cfg: cfg, log: slog.New(slog.DiscardHandler), budget: newStopBudget(cfg.Shutdown.Timeout.Std())}
			_, merr := g.newManager(q)
			if verr == nil && merr != nil {
				t.Errorf("config valid, but the uplink refuses it: %v", merr)
			}
			if verr != nil {
				t.Logf("rejected at config load: %v", verr)
			}
		})
	}
}
