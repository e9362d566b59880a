package uplink

import "testing"

func TestClassify(t *testing.T) {
	for _, tt := range []struct {
		topic string
		want  Class
	}{
		// NTP: only the device's request.
		{"/ext/ntp/pk/dn/request", ClassNTP},
		{"/ext/ntp/pk/dn/response", ClassNormal},
		{"/ext/ntp/pk/dn/request/x", ClassNormal},
		// RRPC: the system response, and every /ext/rrpc/… a device publishes.
		{"/sys/pk/dn/rrpc/response/1234567", ClassRRPC},
		{"/sys/pk/dn/rrpc/request/1234567", ClassNormal},
		{"/sys/pk/dn/rrpc/response", ClassNormal},
		{"/ext/rrpc/1234/pk/dn/user/cmd", ClassRRPC},
		{"/ext/rrpc/1234/sys/pk/dn/thing/service/Reboot", ClassRRPC},
		{"/ext/rrpc/1234/sys/pk/dn/thing/model/down_raw", ClassRRPC},
		// Replies to cloud requests.
		{"/sys/pk/dn/thing/service/property/set_reply", ClassReply},
		{"/sys/pk/dn/thing/service/property/get_reply", ClassReply},
		{"/sys/pk/dn/thing/service/Reboot_reply", ClassReply},
		{"/sys/pk/dn/thing/service/measurepoint/set_reply", ClassReply},
		{"/sys/pk/dn/thing/model/down_raw_reply", ClassReply},
		{"/sys/pk/dn/thing/config/push_reply", ClassReply},
		{"/sys/pk/dn/thing/bootstrap/notify_reply", ClassReply},
		{"/sys/pk/dn/thing/enable_reply", ClassReply},
		{"/sys/pk/dn/thing/disable_reply", ClassReply},
		{"/sys/pk/dn/thing/delete_reply", ClassReply},
		// Replies the cloud sends to the device, and requests: not a
		// device's reply.
		{"/sys/pk/dn/thing/event/property/post_reply", ClassNormal},
		{"/sys/pk/dn/thing/event/alarm/post_reply", ClassNormal},
		{"/sys/pk/dn/thing/deviceinfo/update_reply", ClassNormal},
		{"/sys/pk/dn/thing/deviceinfo/delete_reply", ClassNormal},
		{"/sys/pk/dn/thing/config/get_reply", ClassNormal},
		{"/sys/pk/dn/thing/model/up_raw_reply", ClassNormal},
		{"/sys/pk/dn/thing/ota/firmware/get_reply", ClassNormal},
		{"/sys/pk/dn/thing/service/property/set", ClassNormal},
		{"/sys/pk/dn/thing/service/_reply_x", ClassNormal},
		{"/sys/pk/dn/thing/service", ClassNormal},
		// Ordinary traffic.
		{"/sys/pk/dn/thing/event/property/post", ClassNormal},
		{"/pk/dn/user/data", ClassNormal},
		{"/pk/dn/user/set_reply", ClassNormal},
		{"/ota/device/inform/pk/dn", ClassNormal},
		{"/shadow/update/pk/dn", ClassNormal},
		{"/ext/session/pk/dn/combine/login", ClassNormal},
		{"", ClassNormal},
		{"/", ClassNormal},
		{"sys/pk/dn/rrpc/response/1", ClassNormal},
		{"/sys//dn/thing/service/x_reply", ClassReply}, // shape only: the ACL checks identities
	} {
		if got := Classify(tt.topic); got != tt.want {
			t.Errorf("Classify(%q) = %v, want %v", tt.topic, got, tt.want)
		}
	}
}

func FuzzClassify(f *testing.F) {
	for _, s := range []string{"/ext/ntp/pk/dn/request", "/sys/pk/dn/rrpc/response/1", "/sys/pk/dn/thing/service/a_reply", "/ext/rrpc/1/x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, topic string) {
		if c := Classify(topic); c >= numClasses {
			t.Fatalf("Classify(%q) = %d", topic, c)
		}
	})
}
