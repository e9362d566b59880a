package uplink

import "strings"

// Class says how a device's publish is treated on the way to the cloud:
// ClassNormal waits its turn in the device's queue; the other classes are
// time-critical (see Classify and express.go).
type Class uint8

// Classes of device publishes.
const (
	// ClassNormal is everything that is not time-critical: forwarded in
	// the device's order, kept until delivered.
	ClassNormal Class = iota
	// ClassNTP is a clock request, /ext/ntp/{pk}/{dn}/request: held back
	// D seconds it skews the device's clock by about D/2.
	ClassNTP
	// ClassRRPC is the reply to a synchronous call: /sys/{pk}/{dn}/rrpc/response/{id}
	// and, published by the device, /ext/rrpc/{id}/…; the caller waits at
	// most 8 s for it.
	ClassRRPC
	// ClassReply is the reply to an asynchronous cloud request: service
	// calls and property set/get (/sys/{pk}/{dn}/thing/service/…_reply),
	// raw-model downlinks, config pushes, bootstrap notices and EnOS
	// enable/disable/delete.
	ClassReply
	numClasses
)

// TimeCriticalClasses lists the classes that bypass the backlog.
var TimeCriticalClasses = []Class{ClassNTP, ClassRRPC, ClassReply}

var classNames = [numClasses]string{"normal", "ntp", "rrpc", "reply"}

// String returns the class's metric label: normal, ntp, rrpc or reply.
func (c Class) String() string {
	if c < numClasses {
		return classNames[c]
	}
	return "unknown"
}

// Classify returns the class of a device's publish to topic (direction
// device to cloud), from the topic's shape alone (docs/protocol.md §7.2,
// §7.4, §7.7). It does not check that the identity segments are the
// device's own: the local broker's ACL and the drain do. Replies the
// cloud sends to the device (…/post_reply, …/get_reply, …/up_raw_reply)
// never come from a device and are ClassNormal.
func Classify(topic string) Class {
	if len(topic) < 5 || topic[0] != '/' {
		return ClassNormal
	}
	// The common case, a property or measure-point post, in a few
	// comparisons and no allocation: this runs for every device publish.
	if !strings.HasPrefix(topic, "/ext/") && !strings.HasSuffix(topic, "_reply") && !strings.Contains(topic, "/rrpc/response/") {
		return ClassNormal
	}
	s := strings.Split(topic[1:], "/")
	switch {
	case s[0] == "ext" && len(s) >= 4 && s[1] == "rrpc":
		// /ext/rrpc/{id}/{pk}/{dn}/user/… and /ext/rrpc/{id}/sys/{pk}/{dn}/…:
		// request and reply share the topic; a device publishes the reply.
		return ClassRRPC
	case s[0] == "ext" && len(s) == 5 && s[1] == "ntp" && s[4] == "request":
		return ClassNTP
	case s[0] != "sys" || len(s) < 5:
		return ClassNormal
	case len(s) == 6 && s[3] == "rrpc" && s[4] == "response":
		return ClassRRPC
	case s[3] != "thing":
		return ClassNormal
	}
	// /sys/{pk}/{dn}/thing/…
	last := s[len(s)-1]
	if !strings.HasSuffix(last, "_reply") {
		return ClassNormal
	}
	switch rest := strings.Join(s[4:], "/"); {
	case s[4] == "service" && len(s) >= 6: // {svc}_reply, property/set_reply, measurepoint/get_reply, …
		return ClassReply
	case rest == "model/down_raw_reply", rest == "config/push_reply", rest == "bootstrap/notify_reply",
		rest == "enable_reply", rest == "disable_reply", rest == "delete_reply":
		return ClassReply
	}
	return ClassNormal
}
