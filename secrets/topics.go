package secrets

import "strings"

// TopicAllowed reports whether the device (productKey, deviceName) may use
// topic: publish to it (filter == false, a concrete topic name) or subscribe
// to it (filter == true, wildcards allowed).
//
// Both clouds put the device's own identity into every topic it may use, as
// two adjacent segments {productKey}/{deviceName}: /sys/{pk}/{dn}/…,
// /{pk}/{dn}/user/…, /ext/session/{pk}/{dn}/…, /shadow/update/{pk}/{dn},
// /ext/rrpc/{id}/{pk}/{dn}/…. The rule is therefore: some segment equals
// productKey exactly and the next one equals deviceName exactly. Wildcards
// may not stand in for either segment, nor may a multi-level wildcard come
// before them. A subscriber may additionally listen to its product's
// broadcast topics (/broadcast/{pk}/…).
//
// Topics starting with '$' (broker-internal and admin topics) are never a
// device's.
func TopicAllowed(productKey, deviceName, topic string, filter bool) bool {
	if productKey == "" || deviceName == "" || topic == "" || topic[0] == '$' {
		return false
	}
	if !filter && strings.ContainsAny(topic, "+#") {
		return false
	}
	if len(topic) > 65535 || strings.ContainsRune(topic, 0) {
		return false
	}
	segs := strings.Split(topic, "/")
	for i := 0; i+1 < len(segs); i++ {
		if segs[i] == "#" {
			return false // '#' before the identity could match anything
		}
		if segs[i] == productKey && segs[i+1] == deviceName {
			return validWildcards(segs)
		}
	}
	// Product-wide broadcast: /broadcast/{pk}/... (receive only).
	if filter && len(segs) >= 4 && segs[0] == "" && segs[1] == "broadcast" && segs[2] == productKey {
		return validWildcards(segs)
	}
	return false
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
