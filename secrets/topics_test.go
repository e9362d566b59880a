package secrets

import (
	"strings"
	"testing"
)

func TestTopicAllowed(t *testing.T) {
	const pk, dn = "a1B2c3D4e5F", "meter-01"
	tests := []struct {
		topic  string
		filter bool
		want   bool
	}{
		{"/sys/a1B2c3D4e5F/meter-01/thing/event/property/post", false, true},
		{"/sys/a1B2c3D4e5F/meter-01/thing/event/property/post_reply", true, true},
		{"/sys/a1B2c3D4e5F/meter-01/thing/service/#", true, true},
		{"/sys/a1B2c3D4e5F/meter-01/rrpc/request/+", true, true},
		{"/sys/a1B2c3D4e5F/meter-01/#", true, true},
		{"/a1B2c3D4e5F/meter-01/user/update", false, true},
		{"/a1B2c3D4e5F/meter-01/user/+", true, true},
		{"/a1B2c3D4e5F/meter-01/get", true, true},
		{"/ext/session/a1B2c3D4e5F/meter-01/combine/login", false, true},
		{"/ext/ntp/a1B2c3D4e5F/meter-01/request", false, true},
		{"/ext/rrpc/123/a1B2c3D4e5F/meter-01/user/cmd", false, true},
		{"/ext/rrpc/+/a1B2c3D4e5F/meter-01/user/cmd", true, true},
		{"/shadow/update/a1B2c3D4e5F/meter-01", false, true},
		{"/shadow/get/a1B2c3D4e5F/meter-01", true, true},
		{"/broadcast/a1B2c3D4e5F/all", true, true},
		{"/broadcast/a1B2c3D4e5F/#", true, true},
		// refused
		{"/broadcast/a1B2c3D4e5F/all", false, false},                          // receive only
		{"/sys/a1B2c3D4e5F/meter-02/thing/event/property/post", false, false}, // another device
		{"/sys/b1B2c3D4e5F/meter-01/thing/event/property/post", false, false}, // another product
		{"/sys/+/meter-01/thing/#", true, false},
		{"/sys/a1B2c3D4e5F/+/thing/#", true, false},
		{"/sys/#", true, false},
		{"#", true, false},
		{"/#", true, false},
		{"/+/+/user/#", true, false},
		{"/sys/a1B2c3D4e5F/meter-01/thing/+", false, false}, // wildcard in a topic name
		{"/sys/a1B2c3D4e5F/meter-01/th+ing", true, false},   // malformed wildcard
		{"/sys/a1B2c3D4e5F/meter-01/#/more", true, false},   // '#' not last
		{"sys/a1B2c3D4e5F/meter-01/thing", false, false},    // no leading '/'
		{"$edgegw/admin/v1/request", false, false},          // admin topic
		{"$SYS/broker/clients", true, false},                // broker topic
		{"/ext/+/a1B2c3D4e5F/meter-01/x", true, false},      // wildcard kind
		{"/shadow/+/a1B2c3D4e5F/meter-01", true, false},     // wildcard op
		{"/other/a1B2c3D4e5F/meter-01/thing", false, false}, // identity at a position no cloud uses
		{"/sys/X1234567890/a1B2c3D4e5F/meter-01/post", false, false},
		{"/sys/a1B2c3D4e5F", false, false},
		{"/sys/a1B2c3D4e5F/meter-01", false, true},
		{"", false, false},
	}
	for _, tt := range tests {
		if got := TopicAllowed(pk, dn, tt.topic, tt.filter); got != tt.want {
			t.Errorf("TopicAllowed(%q, filter=%v) = %v, want %v", tt.topic, tt.filter, got, tt.want)
		}
	}
}

// TestTopicAllowedNoCrossDevice is the regression for a namespace escape:
// a device whose productKey is another device's deviceName must not reach
// that device's topics.
func TestTopicAllowedNoCrossDevice(t *testing.T) {
	if TopicAllowed("a1B2c3D4e5F", "thing", "/sys/X1234567890/a1B2c3D4e5F/thing/service/property/set", true) {
		t.Error("device a1B2c3D4e5F/thing reached /sys/X1234567890/a1B2c3D4e5F/…")
	}
	for _, reserved := range []string{"sys", "ext", "shadow", "broadcast"} {
		if TopicAllowed(reserved, "victim", "/"+reserved+"/victim/x/y", false) {
			t.Errorf("productKey %q matched the user-topic form", reserved)
		}
	}
}

func FuzzTopicAllowed(f *testing.F) {
	f.Add("a1B2c3D4e5F", "meter-01", "/sys/a1B2c3D4e5F/meter-01/thing/#", true)
	f.Add("sys", "x", "/sys/x/y", false)
	f.Fuzz(func(t *testing.T, pk, dn, topic string, filter bool) {
		if !TopicAllowed(pk, dn, topic, filter) {
			return
		}
		// An allowed name always carries the device's identity as two
		// adjacent segments, or (filters only) the product's broadcast.
		if !strings.Contains(topic+"/", "/"+pk+"/"+dn+"/") && !(filter && strings.HasPrefix(topic, "/broadcast/"+pk+"/")) {
			t.Fatalf("%q allowed for %s/%s", topic, pk, dn)
		}
	})
}
