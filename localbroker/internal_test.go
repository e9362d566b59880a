package localbroker

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgegw/edgegw/secrets"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

func TestMatchFilter(t *testing.T) {
	tests := []struct {
		filter, topic string
		want          bool
	}{
		{"a/b", "a/b", true},
		{"a/b", "a/c", false},
		{"a/+", "a/b", true},
		{"a/+", "a/b/c", false},
		{"a/+/c", "a/b/c", true},
		{"a/#", "a", true},
		{"a/#", "a/b/c", true},
		{"a/#", "ab", false},
		{"#", "a/b", true},
		{"#", "$SYS/x", false},
		{"+/x", "$SYS/x", false},
		{"$SYS/#", "$SYS/x", true},
		{"/a/+", "/a/b", true},
		{"/a/+", "a/b", false},
		{"+", "", true},
		{"a/b/", "a/b/", true},
		{"a/b/+", "a/b/", true},
		{"a/b", "a/b/", false},
		{"a/b/c", "a/b", false},
		{"/broadcast/pk/#", "/broadcast/pk/news", true},
	}
	for _, tt := range tests {
		if got := matchFilter(tt.filter, tt.topic); got != tt.want {
			t.Errorf("matchFilter(%q, %q) = %v, want %v", tt.filter, tt.topic, got, tt.want)
		}
	}
}

func TestACLRules(t *testing.T) {
	dev := &Identity{DeviceID: secrets.DeviceID{ProductKey: "pk", DeviceName: "dn"}}
	adm := &Identity{Admin: true, Name: "unix"}
	// An EnOS device has only EnOS's forms: no Alibaba custom, OTA or NTP
	// topics, which its cloud would refuse after the gateway had spooled them.
	enos := &Identity{DeviceID: secrets.DeviceID{ProductKey: "pk", DeviceName: "dn"}, Dialect: secrets.EnOS}
	tests := []struct {
		id      *Identity
		topic   string
		pub     bool // may publish
		receive bool // may subscribe / be delivered
	}{
		{dev, "/sys/pk/dn/thing/event/property/post", true, true},
		{dev, "/pk/dn/user/get", true, true},
		{dev, "/pk/other/user/get", false, false},
		{dev, "/broadcast/pk/news", false, true},
		{dev, "/sys/pk/dn/#", false, true},
		{dev, "/sys/+/+/thing/service/+", false, true}, // Link SDK 4.x handler filter
		{dev, "/ota/device/inform/pk/dn", true, false}, // C SDK 3.x version report
		{dev, "/ota/device/upgrade/pk/dn", false, true},
		{dev, "/ota/device/upgrade/+/+", false, true},
		{dev, "/ext/ntp/pk/dn/request", true, false},
		{dev, "/ext/ntp/pk/dn/response", false, true},
		{dev, "/ext/rrpc/7/sys/pk/dn/thing/service/s", true, true},
		{dev, "/ota/device/upgrade/pk/other", false, false},
		{dev, AdminRequestTopic, false, false},
		{dev, "$edgegw/admin/#", false, false},
		{enos, "/sys/pk/dn/thing/measurepoint/post", true, true},
		{enos, "/ext/session/pk/dn/thing/activate/info_reply", true, true},
		{enos, "/pk/dn/user/get", false, false},
		{enos, "/ota/device/inform/pk/dn", false, false},
		{enos, "/ext/ntp/pk/dn/request", false, false},
		{adm, AdminRequestTopic, true, true},
		{adm, AdminResponseTopic, false, true},
		{adm, "$edgegw/admin/v1/response/#", false, true},
		{adm, "$edgegw/admin/#", false, true},
		{adm, "/sys/pk/dn/thing/event/property/post", false, false},
		{adm, "#", false, false},
		{adm, "$SYS/#", false, false},
	}
	for _, tt := range tests {
		if got := canPublish(tt.id, tt.topic); got != tt.pub {
			t.Errorf("canPublish(%s, %q) = %v", tt.id, tt.topic, got)
		}
		if got := canReceive(tt.id, tt.topic); got != tt.receive {
			t.Errorf("canReceive(%s, %q) = %v", tt.id, tt.topic, got)
		}
	}
	for topic, want := range map[string]bool{
		AdminResponseTopic: true, "$edgegw/admin/v1/response/ctl-1": true, "$edgegw/admin/x": true,
		AdminRequestTopic: false, "$edgegw/admin/": false, "$edgegw/admin/+": false, "$edgegw/admin/#": false,
		"/pk/dn/user/x": false, "": false,
	} {
		if got := adminResponseTopicOK(topic); got != want {
			t.Errorf("adminResponseTopicOK(%q) = %v", topic, got)
		}
	}
}

// capture is a slog handler that keeps records.
type capture struct {
	mu    sync.Mutex
	level slog.Level
	recs  []slog.Record
}

func (c *capture) Enabled(_ context.Context, l slog.Level) bool { return l >= c.level }
func (c *capture) Handle(_ context.Context, r slog.Record) error {
	c.mu.Lock()
	c.recs = append(c.recs, r.Clone())
	c.mu.Unlock()
	return nil
}
func (c *capture) WithAttrs([]slog.Attr) slog.Handler { return c }
func (c *capture) WithGroup(string) slog.Handler      { return c }

func TestMochiHandler(t *testing.T) {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, TopicName: "/pk/dn/x",
		Payload: []byte("secret-payload"), PacketID: 7}
	tests := []struct {
		name      string
		level     slog.Level
		msg       string
		args      []any
		wantLevel slog.Level // -100: dropped at an Info handler
	}{
		{"empty warn", slog.LevelWarn, "", []any{"error", "EOF"}, slog.LevelDebug},
		{"info", slog.LevelInfo, "added hook", nil, slog.LevelDebug},
		{"publish error", slog.LevelError, "publish packet error", []any{"packet", pk}, slog.LevelDebug},
		{"keepalive", slog.LevelWarn, mqtt.ErrMinimumKeepalive.Error(), nil, slog.LevelDebug},
		{"acl disconnect", slog.LevelWarn, "error processing packet", []any{"error", packets.ErrNotAuthorized, "pk", pk}, slog.LevelDebug},
		{"other warn", slog.LevelWarn, "error processing packet", []any{"error", packets.ErrProtocolViolation, "pk", pk}, slog.LevelWarn},
		{"quota", slog.LevelWarn, "client store quota reached", []any{"client", "c"}, slog.LevelWarn},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, inner := range []slog.Level{slog.LevelDebug, slog.LevelInfo} {
				c := &capture{level: inner}
				log := slog.New(&mochiHandler{inner: c, limit: newLimiter(time.Minute, 100)})
				log.Log(context.Background(), tt.level, tt.msg, tt.args...)
				if tt.wantLevel < inner {
					if len(c.recs) != 0 {
						t.Errorf("inner level %v: got %d records, want none", inner, len(c.recs))
					}
					continue
				}
				if len(c.recs) != 1 || c.recs[0].Level != tt.wantLevel {
					t.Fatalf("inner level %v: records %v, want one at %v", inner, c.recs, tt.wantLevel)
				}
				var text strings.Builder
				c.recs[0].Attrs(func(a slog.Attr) bool {
					fmt.Fprintf(&text, "%s=%v ", a.Key, a.Value)
					return true
				})
				if strings.Contains(text.String(), "secret-payload") {
					t.Errorf("payload logged: %s", text.String())
				}
			}
		})
	}
	// Repeated warnings are rate limited.
	c := &capture{level: slog.LevelDebug}
	log := slog.New(&mochiHandler{inner: c, limit: newLimiter(time.Minute, 3)})
	for range 10 {
		log.Warn("client store quota reached", "client", "c")
	}
	if len(c.recs) != 3 {
		t.Errorf("%d warnings passed the limiter, want 3", len(c.recs))
	}
}

// benchHook returns a hook with one registered device connection.
func benchHook(b *testing.B) (*hook, *mqtt.Client) {
	br := &Broker{log: slog.New(slog.DiscardHandler), limit: newLimiter(time.Second, 1)}
	cl := &mqtt.Client{ID: "bench"}
	br.conns.Store(cl, &conn{cl: cl, id: Identity{DeviceID: secrets.DeviceID{ProductKey: "a1B2c3D4e5F", DeviceName: "meter-000123"}}, clientID: "bench"})
	// Other connections in the map, as on a busy gateway.
	for i := range 1000 {
		other := &mqtt.Client{ID: fmt.Sprint(i)}
		br.conns.Store(other, &conn{cl: other, id: Identity{DeviceID: secrets.DeviceID{ProductKey: "a1B2c3D4e5F", DeviceName: fmt.Sprint("m", i)}}})
	}
	return &hook{b: br}, cl
}

func BenchmarkACLCheck(b *testing.B) {
	h, cl := benchHook(b)
	post := "/sys/a1B2c3D4e5F/meter-000123/thing/event/property/post"
	other := "/a1B2c3D4e5F/meter-000123/user/update"
	cases := []struct {
		name   string
		topics []string
		write  bool
		want   bool
	}{
		{"publish/same-topic", []string{post}, true, true},
		{"publish/alternating", []string{post, other}, true, true},
		{"publish/denied", []string{"/a1B2c3D4e5F/meter-999/user/update"}, true, false},
		{"deliver", []string{"/sys/a1B2c3D4e5F/meter-000123/thing/service/property/set"}, false, true},
		{"subscribe/wildcard", []string{"/sys/a1B2c3D4e5F/meter-000123/thing/#"}, false, true},
	}
	conn := h.b.connOf(cl)
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				// A device's publish is checked in OnPublish (OnACLCheck
				// lets it through, so it can be acknowledged and dropped
				// rather than disconnected); deliveries and filters in
				// OnACLCheck.
				var ok bool
				if c.write {
					ok = conn.publishAllowed(c.topics[i%len(c.topics)])
				} else {
					ok = h.OnACLCheck(cl, c.topics[i%len(c.topics)], false)
				}
				if ok != c.want {
					b.Fatal("unexpected ACL result")
				}
				i++
			}
		})
	}
}
