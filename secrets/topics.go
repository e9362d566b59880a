package secrets

import "strings"

// TopicAllowed reports whether the device (productKey, deviceName) may use
// topic: publish to it (filter == false, a concrete topic name) or subscribe
// to it (filter == true, wildcards allowed).
//
// Both clouds put the device's own identity into every topic it may use, at
// fixed positions:
//
//	/sys/{pk}/{dn}/…            system topics (Alink, EnOS measure points)
//	/{pk}/{dn}/…                user topics (/{pk}/{dn}/user/…, legacy /update, /get)
//	/ext/{kind}/{pk}/{dn}/…     /ext/session/…, /ext/ntp/…, /ext/error/…
//	/ext/rrpc/{id}/{pk}/{dn}/…  custom-topic RRPC ({id} may be '+' in a filter)
//	/shadow/{op}/{pk}/{dn}      device shadow
//	/broadcast/{pk}/…           product-wide broadcast, subscribe only
//
// The identity segments must match exactly (no wildcard may stand in for
// them), and a productKey that is itself one of the reserved first segments
// (sys, ext, shadow, broadcast) never matches the user-topic form, so no
// device can reach into another's namespace by its choice of names. Topics
// starting with '$' (broker-internal and admin topics) are never a device's.
func TopicAllowed(productKey, deviceName, topic string, filter bool) bool {
	if productKey == "" || deviceName == "" || topic == "" || topic[0] != '/' {
		return false
	}
	if len(topic) > 65535 || strings.ContainsRune(topic, 0) {
		return false
	}
	if !filter && strings.ContainsAny(topic, "+#") {
		return false
	}
	segs := strings.Split(topic, "/")
	at := func(pkIdx int) bool {
		return len(segs) > pkIdx+1 && segs[pkIdx] == productKey && segs[pkIdx+1] == deviceName
	}
	ok := false
	switch segs[1] {
	case "sys":
		ok = at(2)
	case "ext":
		if len(segs) > 2 && segs[2] == "rrpc" {
			ok = len(segs) > 3 && segs[3] != "#" && at(4)
		} else {
			ok = len(segs) > 2 && segs[2] != "+" && segs[2] != "#" && at(3)
		}
	case "shadow":
		ok = len(segs) > 2 && segs[2] != "+" && segs[2] != "#" && at(3)
	case "broadcast":
		ok = filter && len(segs) > 3 && segs[2] == productKey
	default:
		ok = at(1)
	}
	return ok && validWildcards(segs)
}

// validWildcards checks MQTT filter syntax: '+' and '#' occupy a whole
// segment and '#' is last.
func validWildcards(segs []string) bool {
	for i, s := range segs {
		if s == "#" {
			if i != len(segs)-1 {
				return false
			}
			continue
		}
		if s != "+" && strings.ContainsAny(s, "+#") {
			return false
		}
	}
	return true
}
