package secrets

import (
	"slices"
	"strings"
	"testing"
)

const tpk, tdn = "a1B2c3D4e5F", "meter-01"

var tid = DeviceID{ProductKey: tpk, DeviceName: tdn}

// topicCases are golden cases: may the device publish on the topic (pub),
// may it subscribe to it or be delivered on it (recv), on either cloud.
var topicCases = []struct {
	topic     string
	pub, recv bool
}{
	// /sys/{pk}/{dn}/… (Alibaba and EnOS), both ways.
	{"/sys/a1B2c3D4e5F/meter-01/thing/event/property/post", true, true},
	{"/sys/a1B2c3D4e5F/meter-01/thing/event/property/post_reply", true, true},
	{"/sys/a1B2c3D4e5F/meter-01/thing/service/property/set", true, true},
	{"/sys/a1B2c3D4e5F/meter-01/thing/deviceinfo/update", true, true},
	{"/sys/a1B2c3D4e5F/meter-01/rrpc/request/12345", true, true},
	{"/sys/a1B2c3D4e5F/meter-01/rrpc/response/12345", true, true},
	{"/sys/a1B2c3D4e5F/meter-01/thing/ota/firmware/get", true, true},
	{"/sys/a1B2c3D4e5F/meter-01/thing/measurepoint/post", true, true},
	{"/sys/a1B2c3D4e5F/meter-01/ota/device/upgrade", true, true},
	{"/sys/a1B2c3D4e5F/meter-01", false, false}, // no such topic
	{"/sys/a1B2c3D4e5F/meter-01/thing/service/#", false, true},
	{"/sys/a1B2c3D4e5F/meter-01/thing/event/+/post_reply", false, true},
	{"/sys/a1B2c3D4e5F/meter-01/#", false, true},
	// Link SDK 4.x handler filters: '+' for the identity.
	{"/sys/+/+/thing/service/+", false, true},
	{"/sys/+/+/thing/config/push", false, true},
	{"/sys/+/+/thing/ota/firmware/get_reply", false, true},
	{"/sys/+/meter-01/thing/#", false, true},
	{"/sys/a1B2c3D4e5F/+/thing/#", false, true},
	{"/shadow/get/+/+", false, true},
	{"/ota/device/upgrade/+/+", false, true},
	{"/ext/session/+/+/combine/batch_login_reply", false, true},
	// custom topics
	{"/a1B2c3D4e5F/meter-01/user/update", true, true},
	{"/a1B2c3D4e5F/meter-01/user/+", false, true},
	{"/a1B2c3D4e5F/meter-01/update", true, true},
	{"/a1B2c3D4e5F/meter-01/get", true, true},
	{"/a1B2c3D4e5F/+/user/#", false, false}, // the custom form has no literal anchor
	{"/+/+/user/#", false, false},           // '+' where another form has a literal
	{"/+/meter-01/user/x", false, false},
	// /ext/session
	{"/ext/session/a1B2c3D4e5F/meter-01/combine/login", true, true},
	{"/ext/session/a1B2c3D4e5F/meter-01/thing/activate/info", true, true},
	// NTP
	{"/ext/ntp/a1B2c3D4e5F/meter-01/request", true, false},
	{"/ext/ntp/a1B2c3D4e5F/meter-01/response", false, true},
	{"/ext/ntp/+/+/response", false, true},
	{"/ext/ntp/a1B2c3D4e5F/meter-01/other", false, false},
	// errors
	{"/ext/error/a1B2c3D4e5F/meter-01", false, true},
	{"/ext/error/a1B2c3D4e5F/meter-01/more", false, false},
	// synchronous (system) RRPC
	{"/ext/rrpc/1234/sys/a1B2c3D4e5F/meter-01/thing/service/Reboot", true, true},
	{"/ext/rrpc/1234/sys/a1B2c3D4e5F/meter-01/thing/service/Reboot_reply", true, true},
	{"/ext/rrpc/+/sys/a1B2c3D4e5F/meter-01/thing/service/+", false, true},
	{"/ext/rrpc/+/sys/+/+/thing/service/+", false, true},
	{"/ext/rrpc/1234/sys/a1B2c3D4e5F/meter-01/thing/model/down_raw", true, true},
	{"/ext/rrpc/1234/sys/a1B2c3D4e5F/meter-01/thing/service", false, false},
	{"/ext/rrpc/1234/sys/a1B2c3D4e5F/meter-01/thing/service/a/b", false, false},
	{"/ext/rrpc//sys/a1B2c3D4e5F/meter-01/thing/service/Reboot", false, false}, // empty id
	// custom-topic RRPC
	{"/ext/rrpc/1234/a1B2c3D4e5F/meter-01/user/cmd", true, true},
	{"/ext/rrpc/+/a1B2c3D4e5F/meter-01/user/cmd", false, true},
	{"/ext/rrpc/+/a1B2c3D4e5F/meter-01/user/#", false, true},
	{"/ext/rrpc/1234/a1B2c3D4e5F/meter-01/get", false, false}, // not a /user/ topic
	{"/ext/rrpc/#", false, false},
	// OTA (Alibaba, C SDK 3.x)
	{"/ota/device/inform/a1B2c3D4e5F/meter-01", true, false},
	{"/ota/device/progress/a1B2c3D4e5F/meter-01", true, false},
	{"/ota/device/request/a1B2c3D4e5F/meter-01", true, true},
	{"/ota/device/upgrade/a1B2c3D4e5F/meter-01", false, true},
	{"/ota/device/upgrade/a1B2c3D4e5F/meter-01/#", false, false}, // reaches beyond the form
	{"/ota/device/+/a1B2c3D4e5F/meter-01", false, false},
	{"/ota/#", false, false},
	// shadow
	{"/shadow/update/a1B2c3D4e5F/meter-01", true, false},
	{"/shadow/get/a1B2c3D4e5F/meter-01", false, true},
	{"/shadow/+/a1B2c3D4e5F/meter-01", false, false},
	// broadcast: receive only
	{"/broadcast/a1B2c3D4e5F/all", false, true},
	{"/broadcast/a1B2c3D4e5F/#", false, true},
	{"/broadcast/a1B2c3D4e5F", false, false},
	{"/broadcast/b1B2c3D4e5F/all", false, false},
	// other devices, other products
	{"/sys/a1B2c3D4e5F/meter-02/thing/event/property/post", false, false},
	{"/sys/b1B2c3D4e5F/meter-01/thing/event/property/post", false, false},
	{"/ota/device/inform/a1B2c3D4e5F/meter-02", false, false},
	{"/ext/rrpc/1/sys/a1B2c3D4e5F/meter-02/thing/service/x", false, false},
	{"/ext/ntp/b1B2c3D4e5F/meter-01/request", false, false},
	{"/shadow/get/a1B2c3D4e5F/meter-02", false, false},
	// malformed, wildcards where they may not be
	{"/sys/#", false, false},
	{"#", false, false},
	{"/#", false, false},
	{"/+/#", false, false},
	{"/sys/a1B2c3D4e5F/meter-01/thing/+/x", false, true},
	{"/sys/a1B2c3D4e5F/meter-01/th+ing", false, false},
	{"/sys/a1B2c3D4e5F/meter-01/#/more", false, false},
	{"sys/a1B2c3D4e5F/meter-01/thing", false, false},
	{"$edgegw/admin/v1/request", false, false},
	{"$SYS/broker/clients", false, false},
	{"/ext/+/a1B2c3D4e5F/meter-01/x", false, false},
	{"/other/a1B2c3D4e5F/meter-01/thing", false, false},
	{"/sys/X1234567890/a1B2c3D4e5F/meter-01/post", false, false},
	{"/sys/a1B2c3D4e5F", false, false},
	{"/sys/a1B2c3D4e5F/meter-01/x\x00", false, false},
	{"", false, false},
}

func TestTopicAllowed(t *testing.T) {
	for _, tt := range topicCases {
		// A wildcard is never published; a topic name is also a filter.
		if got := TopicAllowed(tpk, tdn, tt.topic, false); got != tt.pub {
			t.Errorf("publish %q = %v, want %v", tt.topic, got, tt.pub)
		}
		if got := TopicAllowed(tpk, tdn, tt.topic, true); got != tt.recv {
			t.Errorf("receive %q = %v, want %v", tt.topic, got, tt.recv)
		}
		if got := tid.MayPublish("", tt.topic); got != tt.pub {
			t.Errorf("MayPublish(%q) = %v, want %v", tt.topic, got, tt.pub)
		}
	}
}

// TestTopicCatalogueRows checks every row of the catalogue in both
// directions and on both clouds with a topic built from its pattern.
func TestTopicCatalogueRows(t *testing.T) {
	rows := TopicCatalogue()
	if len(rows) < 16 {
		t.Fatalf("catalogue has %d rows", len(rows))
	}
	for _, f := range rows {
		topic := strings.NewReplacer("{pk}", tpk, "{dn}", tdn, "{id}", "987", "{svc}", "Reboot", "#", "x/y").Replace(f.Pattern)
		for _, d := range []Dialect{Aliyun, EnOS} {
			gives := (d == Aliyun && f.Aliyun) || (d == EnOS && f.EnOS)
			got, ok := tid.TopicForm(d, topic, Publish)
			if want := gives && f.Dir&Publish != 0; ok != want || (ok && got.Pattern != f.Pattern) {
				t.Errorf("%s %q publish = %v (%s), want %v", d, topic, ok, got.Pattern, want)
			}
			got, ok = tid.TopicForm(d, topic, Receive)
			if want := gives && f.Dir&Receive != 0; ok != want || (ok && got.Pattern != f.Pattern) {
				t.Errorf("%s %q receive = %v (%s), want %v", d, topic, ok, got.Pattern, want)
			}
		}
		// Another device never gets the row (broadcast: another product).
		if strings.HasPrefix(f.Pattern, "/broadcast/") {
			topic = strings.Replace(topic, tpk, "b1B2c3D4e5F", 1)
		}
		other := DeviceID{ProductKey: tpk, DeviceName: "meter-02"}
		if other.MayPublish("", topic) || other.MayReceive("", topic) {
			t.Errorf("%q allowed for %s", topic, other)
		}
	}
}

func TestTopicDialects(t *testing.T) {
	tests := []struct {
		topic       string
		dir         Dir
		aliyun, eno bool
	}{
		{"/sys/a1B2c3D4e5F/meter-01/thing/measurepoint/post", Publish, true, true},
		{"/sys/a1B2c3D4e5F/meter-01/thing/service/x", Receive, true, true},
		{"/ext/session/a1B2c3D4e5F/meter-01/thing/activate/info", Receive, true, true},
		{"/a1B2c3D4e5F/meter-01/user/x", Publish, true, false},
		{"/ota/device/inform/a1B2c3D4e5F/meter-01", Publish, true, false},
		{"/ext/ntp/a1B2c3D4e5F/meter-01/request", Publish, true, false},
		{"/shadow/get/a1B2c3D4e5F/meter-01", Receive, true, false},
		{"/broadcast/a1B2c3D4e5F/x", Receive, true, false},
	}
	for _, tt := range tests {
		if _, ok := tid.TopicForm(Aliyun, tt.topic, tt.dir); ok != tt.aliyun {
			t.Errorf("aliyun %q = %v", tt.topic, ok)
		}
		if _, ok := tid.TopicForm(EnOS, tt.topic, tt.dir); ok != tt.eno {
			t.Errorf("enos %q = %v", tt.topic, ok)
		}
	}
}

// TestTopicAllowedNoCrossDevice is the regression for namespace escapes: a
// device whose productKey is a literal of another form (or another
// device's deviceName) must not reach that device's topics.
func TestTopicAllowedNoCrossDevice(t *testing.T) {
	if TopicAllowed("a1B2c3D4e5F", "thing", "/sys/X1234567890/a1B2c3D4e5F/thing/service/property/set", true) {
		t.Error("device a1B2c3D4e5F/thing reached /sys/X1234567890/a1B2c3D4e5F/…")
	}
	for _, reserved := range []string{"sys", "ext", "shadow", "broadcast", "ota"} {
		if TopicAllowed(reserved, "victim", "/"+reserved+"/victim/x/y", false) {
			t.Errorf("productKey %q matched the custom-topic form", reserved)
		}
	}
	// productKey "sys" must not turn a synchronous RRPC of device
	// victimPK/victimDN into its own custom-topic RRPC.
	if TopicAllowed("sys", "victimPK", "/ext/rrpc/1/sys/victimPK/victimDN/thing/service/x", false) {
		t.Error("productKey sys reached another device's synchronous RRPC")
	}
	if TopicAllowed("sys", "victimPK", "/ext/rrpc/+/sys/victimPK/#", true) {
		t.Error("productKey sys subscribed to another device's RRPC")
	}
	// Wildcards in the identity itself.
	for _, id := range []DeviceID{{"+", "x"}, {"pk", "#"}, {"", "x"}, {"pk", "a/b"}} {
		if id.MayReceive("", "/sys/+/+/#") || id.MayPublish("", "/sys/"+id.ProductKey+"/"+id.DeviceName+"/x") {
			t.Errorf("identity %q allowed", id)
		}
	}
}

func TestOwnFilter(t *testing.T) {
	tests := []struct{ in, want string }{
		{"/sys/+/+/thing/service/+", "/sys/a1B2c3D4e5F/meter-01/thing/service/+"},
		{"/ota/device/upgrade/+/+", "/ota/device/upgrade/a1B2c3D4e5F/meter-01"},
		{"/shadow/get/+/+", "/shadow/get/a1B2c3D4e5F/meter-01"},
		{"/ext/rrpc/+/sys/+/+/thing/service/+", "/ext/rrpc/+/sys/a1B2c3D4e5F/meter-01/thing/service/+"},
		{"/sys/a1B2c3D4e5F/meter-01/#", "/sys/a1B2c3D4e5F/meter-01/#"},
		{"/broadcast/+/#", "/broadcast/a1B2c3D4e5F/#"},
	}
	for _, tt := range tests {
		got, ok := tid.OwnFilter("", tt.in)
		if !ok || got != tt.want {
			t.Errorf("OwnFilter(%q) = %q, %v; want %q", tt.in, got, ok, tt.want)
		}
	}
	if got, ok := tid.OwnFilter("", "/+/+/user/#"); ok || got != "/+/+/user/#" {
		t.Errorf("OwnFilter of a refused filter = %q, %v", got, ok)
	}
}

func FuzzTopicAllowed(f *testing.F) {
	for _, tt := range topicCases {
		f.Add(tpk, tdn, "meter-02", tt.topic, "seg")
	}
	f.Add("sys", "x", "y", "/sys/x/y", "z")
	f.Add("sys", "victimPK", "victimDN", "/ext/rrpc/1/sys/victimPK/victimDN/thing/service/x", "s")
	f.Add("ext", "rrpc", "1", "/ext/rrpc/1/sys/a/b/thing/service/x", "s")
	f.Fuzz(func(t *testing.T, pk, dn, other, topic, seg string) {
		a := DeviceID{ProductKey: pk, DeviceName: dn}
		// The other device: another deviceName of the same product, and
		// the identity made of the topic's own segments.
		others := []DeviceID{{ProductKey: pk, DeviceName: other}}
		segs := strings.Split(topic, "/")
		for i := 1; i+1 < len(segs); i++ {
			others = append(others, DeviceID{ProductKey: segs[i], DeviceName: segs[i+1]})
		}
		broadcast := func(t string) bool { return strings.HasPrefix(t, "/broadcast/"+pk+"/") }
		for _, dir := range []Dir{Publish, Receive} {
			form, ok := a.TopicForm("", topic, dir)
			if !ok {
				continue
			}
			if dir == Publish && strings.ContainsAny(topic, "+#") {
				t.Fatalf("wildcard topic %q published by %s", topic, a)
			}
			// Concrete topics: only ever the device's own.
			if !strings.ContainsAny(topic, "+#") {
				if !strings.Contains(topic+"/", "/"+pk+"/"+dn+"/") && !broadcast(topic) {
					t.Fatalf("%q (%s) allowed for %s without its identity", topic, form.Pattern, a)
				}
				for _, b := range others {
					if b == a || (b.ProductKey == pk && broadcast(topic)) {
						continue
					}
					if b.MayPublish("", topic) || b.MayReceive("", topic) {
						t.Fatalf("%q allowed for both %s and %s", topic, a, b)
					}
				}
				continue
			}
			// Filters: narrowed to the device's identity, any topic the
			// filter matches belongs to the device alone.
			own, ok := a.OwnFilter("", topic)
			if !ok {
				t.Fatalf("OwnFilter refused granted filter %q", topic)
			}
			if strings.ContainsAny(seg, "/+#\x00") || seg == "" {
				seg = "s"
			}
			concrete := strings.NewReplacer("+", seg, "#", seg).Replace(own)
			if !a.MayReceive("", concrete) {
				t.Fatalf("filter %q granted to %s, but %q (from %q) is not its", topic, a, concrete, own)
			}
			for _, b := range others {
				if b != a && !(b.ProductKey == pk && broadcast(concrete)) && b.MayReceive("", concrete) {
					t.Fatalf("filter %q of %s covers %q of %s", topic, a, concrete, b)
				}
			}
		}
	})
}

// Checking a device's publish against the catalogue allocates nothing: it
// runs for every message, in the broker's ACL and in the uplink's lanes.
func TestTopicFormDoesNotAllocate(t *testing.T) {
	id := DeviceID{ProductKey: "a1B2c3D4e5F", DeviceName: "meter-7"}
	topic := "/a1B2c3D4e5F/meter-7/user/update"
	if !id.MayPublish(Aliyun, topic) {
		t.Fatalf("%s may not publish on %s", id, topic)
	}
	if n := testing.AllocsPerRun(100, func() { id.MayPublish(Aliyun, topic) }); n != 0 {
		t.Errorf("MayPublish: %v allocations per call, want 0", n)
	}
}

// appendSegments gives what strings.Split gives after the leading '/',
// for every shape of topic, the odd ones and the long ones included.
func TestAppendSegmentsLikeSplit(t *testing.T) {
	for _, topic := range []string{"/", "//", "/a", "/a/", "/a//b", "/sys/pk/dn/thing/#", "/+/+/user/+",
		"/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r/s"} {
		var buf [16]string
		got := appendSegments(buf[:0], topic[1:])
		if want := strings.Split(topic, "/")[1:]; !slices.Equal(got, want) {
			t.Errorf("%q: %q, want %q", topic, got, want)
		}
	}
}
