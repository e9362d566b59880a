package localbroker

import (
	"strings"

	"github.com/edgegw/edgegw/secrets"
)

// canPublish reports whether id may publish to the concrete topic.
func canPublish(id *Identity, topic string) bool {
	if id.Admin {
		return topic == AdminRequestTopic
	}
	return id.DeviceID.MayPublish(id.Dialect, topic)
}

// canReceive reports whether id may subscribe to filter, or be delivered a
// message on the concrete topic (mochi asks the same question for both).
//
// Admins may read anything under AdminTopicPrefix. A filter such as
// "$edgegw/admin/#" also matches AdminRequestTopic, which is harmless:
// requests are never fanned out.
func canReceive(id *Identity, filter string) bool {
	if id.Admin {
		return strings.HasPrefix(filter, AdminTopicPrefix)
	}
	return id.DeviceID.MayReceive(id.Dialect, filter)
}

// deliverable reports whether the concrete topic may be delivered to a
// device: one it could subscribe to, including its product's broadcasts.
func deliverable(dev secrets.DeviceID, topic string) bool {
	if dev.IsZero() || topic == "" || strings.ContainsAny(topic, "+#") {
		return false
	}
	return secrets.TopicAllowed(dev.ProductKey, dev.DeviceName, topic, true)
}

// adminResponseTopicOK reports whether an admin request's MQTT 5 Response
// Topic is acceptable: a concrete topic under the admin prefix, other than
// the request topic itself.
func adminResponseTopicOK(topic string) bool {
	return strings.HasPrefix(topic, AdminTopicPrefix) && len(topic) > len(AdminTopicPrefix) &&
		topic != AdminRequestTopic && !strings.ContainsAny(topic, "+#\x00")
}

// matchFilter reports whether the MQTT topic filter matches the concrete
// topic, without allocating. Filters starting with a wildcard do not match
// topics starting with '$' [MQTT-4.7.2-1].
func matchFilter(filter, topic string) bool {
	if topic != "" && topic[0] == '$' && filter != "" && (filter[0] == '+' || filter[0] == '#') {
		return false
	}
	for {
		fseg, frest, fmore := strings.Cut(filter, "/")
		if fseg == "#" {
			return true
		}
		tseg, trest, tmore := strings.Cut(topic, "/")
		if fseg != "+" && fseg != tseg {
			return false
		}
		switch {
		case !fmore && !tmore:
			return true
		case !tmore:
			// "a/#" matches "a" [MQTT-4.7.1-2].
			return frest == "#"
		case !fmore:
			return false
		}
		filter, topic = frest, trest
	}
}
