package secrets

import "strings"

// Dir says which way a device may use a topic form.
type Dir uint8

const (
	// Publish: the device publishes on the topic (uplink).
	Publish Dir = 1 << iota
	// Receive: the device subscribes to the topic and is delivered
	// messages on it (downlink).
	Receive
)

// TopicForm is one row of the clouds' topic catalogue: a topic form the
// cloud gives a device for its own identity.
//
// Pattern segments are literals or placeholders:
//
//	{pk} {dn}   the device's productKey and deviceName (EnOS deviceKey)
//	{id} {svc}  any one non-empty segment (a message id, a service id, …)
//	#           (last segment only) one or more further segments
type TopicForm struct {
	Pattern string
	Dir     Dir
	Aliyun  bool // Alibaba Cloud IoT Platform gives it
	EnOS    bool // EnOS IoT Hub gives it
	// ServerSubscribed: an Alibaba session whose clientId carries _ss=1
	// receives it without a SUBSCRIBE (server-side subscription); the Link
	// SDK 4.x relies on this and never subscribes to these.
	ServerSubscribed bool
	// NeedsExtRRPC: delivered only to an Alibaba session whose clientId
	// carries ext with bit 0 set (RRPC on custom topics).
	NeedsExtRRPC bool
	Note         string

	segs []patSeg
	// forbid[i] lists the values the identity placeholder at segment i
	// may not take, because another form has that literal there: it keeps
	// every concrete topic owned by at most one identity.
	forbid map[int][]string
	// anchored: the form starts with a literal, so '+' may stand in for
	// its identity segments (never for the bare custom form /{pk}/{dn}/…).
	anchored bool
}

type segKind uint8

const (
	segLit segKind = iota
	segPK
	segDN
	segAny
	segRest
)

type patSeg struct {
	kind segKind
	lit  string
}

// topicCatalogue is every topic form either cloud gives a device for its own
// identity (docs/protocol.md, Alink and EnOS topic tables and "What real
// firmware does on the wire"). The system namespace /sys/{pk}/{dn}/… is one
// row in both directions: its catalogue is long and product-specific (thing
// model events and services, replies travel both ways, RRPC, config, jobs,
// logs, OTA 4.x, EnOS measure points and commands), and a refused QoS 1
// publish makes a 3.1.1 firmware reconnect and resend forever. The custom
// topics /{pk}/{dn}/… are both ways for the same reason: their permissions
// are set per product in the console.
var topicCatalogue = []TopicForm{
	{Pattern: "/sys/{pk}/{dn}/#", Dir: Publish | Receive, Aliyun: true, EnOS: true, ServerSubscribed: true,
		Note: "system topics: Alink thing model, RRPC, config, OTA 4.x, jobs, logs; EnOS measure points, commands, OTA, RRPC"},
	{Pattern: "/{pk}/{dn}/#", Dir: Publish | Receive, Aliyun: true,
		Note: "custom topics /{pk}/{dn}/user/…, legacy /update, /update/error, /get"},
	{Pattern: "/ext/session/{pk}/{dn}/#", Dir: Publish | Receive, Aliyun: true, EnOS: true,
		Note: "sub-device login (combine/…), EnOS activation (thing/activate/info)"},
	{Pattern: "/ext/ntp/{pk}/{dn}/request", Dir: Publish, Aliyun: true,
		Note: `NTP request {"deviceSendTime":"ms"}`},
	{Pattern: "/ext/ntp/{pk}/{dn}/response", Dir: Receive, Aliyun: true, ServerSubscribed: true,
		Note: "NTP response: deviceSendTime, serverRecvTime, serverSendTime"},
	{Pattern: "/ext/error/{pk}/{dn}", Dir: Receive, Aliyun: true, ServerSubscribed: true,
		Note: "error notices"},
	{Pattern: "/ext/rrpc/{id}/sys/{pk}/{dn}/thing/service/{svc}", Dir: Publish | Receive, Aliyun: true, ServerSubscribed: true,
		Note: "synchronous service call: request and reply on the same topic"},
	{Pattern: "/ext/rrpc/{id}/sys/{pk}/{dn}/thing/model/down_raw", Dir: Publish | Receive, Aliyun: true, ServerSubscribed: true,
		Note: "synchronous raw-model call: request and reply on the same topic"},
	{Pattern: "/ext/rrpc/{id}/{pk}/{dn}/user/#", Dir: Publish | Receive, Aliyun: true, NeedsExtRRPC: true,
		Note: "RRPC on custom topics: request and reply on the same topic; needs ext bit 0"},
	{Pattern: "/ota/device/inform/{pk}/{dn}", Dir: Publish, Aliyun: true,
		Note: "firmware version report (C SDK 3.x: QoS 1 right after CONNACK)"},
	{Pattern: "/ota/device/progress/{pk}/{dn}", Dir: Publish, Aliyun: true,
		Note: "upgrade progress"},
	{Pattern: "/ota/device/request/{pk}/{dn}", Dir: Publish | Receive, Aliyun: true, ServerSubscribed: true,
		Note: "C SDK 3.x firmware query and its answer"},
	{Pattern: "/ota/device/upgrade/{pk}/{dn}", Dir: Receive, Aliyun: true, ServerSubscribed: true,
		Note: "upgrade notice (URL, size, sign)"},
	{Pattern: "/shadow/update/{pk}/{dn}", Dir: Publish, Aliyun: true,
		Note: "device shadow update and get requests"},
	{Pattern: "/shadow/get/{pk}/{dn}", Dir: Receive, Aliyun: true, ServerSubscribed: true,
		Note: "device shadow documents and replies"},
	{Pattern: "/broadcast/{pk}/#", Dir: Receive, Aliyun: true,
		Note: "product-wide broadcast (needs a SUBSCRIBE)"},
}

func init() {
	for i := range topicCatalogue {
		topicCatalogue[i].segs = parsePattern(topicCatalogue[i].Pattern)
		topicCatalogue[i].anchored = topicCatalogue[i].segs[0].kind == segLit
	}
	for i := range topicCatalogue {
		topicCatalogue[i].forbid = forbiddenValues(i)
	}
}

func parsePattern(p string) []patSeg {
	var out []patSeg
	for _, s := range strings.Split(p, "/")[1:] {
		switch {
		case s == "{pk}":
			out = append(out, patSeg{kind: segPK})
		case s == "{dn}":
			out = append(out, patSeg{kind: segDN})
		case s == "#":
			out = append(out, patSeg{kind: segRest})
		case strings.HasPrefix(s, "{"):
			out = append(out, patSeg{kind: segAny})
		default:
			out = append(out, patSeg{kind: segLit, lit: s})
		}
	}
	return out
}

// forbiddenValues computes, for each identity placeholder of form i, the
// literals other forms have at that position while every earlier segment
// could coincide: "/{pk}/{dn}/#" may not take pk "sys", "ext", "ota", …,
// and the custom RRPC form may not take pk "sys".
func forbiddenValues(i int) map[int][]string {
	me := topicCatalogue[i].segs
	forbid := map[int][]string{}
	for j := range topicCatalogue {
		if j == i {
			continue
		}
		other := topicCatalogue[j].segs
		for k := 0; k < len(me) && k < len(other); k++ {
			a, b := me[k], other[k]
			ident := func(p patSeg) bool { return p.kind == segPK || p.kind == segDN }
			switch {
			case a.kind == segRest || b.kind == segRest:
			case a.kind == segLit && b.kind == segLit:
				if a.lit == b.lit {
					continue
				}
			case ident(a) && b.kind == segLit:
				// Mine may not take the other's literal; then the
				// forms part here.
				forbid[k] = append(forbid[k], b.lit)
			case a.kind == segLit && ident(b):
				// The other form may not take my literal (its own
				// forbid): the forms part here.
			default:
				// Placeholders on both sides, or {id} against a
				// literal: the forms may still coincide.
				continue
			}
			break
		}
	}
	if len(forbid) == 0 {
		return nil
	}
	return forbid
}

// TopicCatalogue returns the clouds' topic catalogue: every topic form a
// device may use for its own identity, with direction.
func TopicCatalogue() []TopicForm {
	out := make([]TopicForm, len(topicCatalogue))
	copy(out, topicCatalogue)
	return out
}

// TopicForm returns the catalogue row that lets device id use topic in
// direction dir on cloud d (d == "" means either cloud).
//
// With dir == Publish, topic must be a concrete topic name. With dir ==
// Receive it may be a subscription filter: '+' and '#' must fill whole
// segments, '#' only last and only where the form itself ends in '#'; '+'
// may stand in for a literal segment of no form, and for an identity
// segment ({pk}, {dn}) only in forms that start with a literal and where
// no other form has a literal in that position. So
// "/sys/+/+/thing/service/+" and "/ota/device/upgrade/+/+" (Link SDK 4.x
// handler filters) are granted; "/+/+/user/#", "/pk/+/user/x" and
// "/sys/#" are not. A granted filter with '+' in an identity position also matches
// other devices' topics: whoever delivers must check each concrete topic
// again (a concrete topic is only ever allowed for its own device), as
// the local broker and cloudsim do on every delivery.
//
// Topics starting with '$' (broker-internal, admin) are never a device's.
func (id DeviceID) TopicForm(d Dialect, topic string, dir Dir) (TopicForm, bool) {
	if !validIdentity(id.ProductKey) || !validIdentity(id.DeviceName) || topic == "" || topic[0] != '/' ||
		len(topic) > 65535 || strings.IndexByte(topic, 0) >= 0 {
		return TopicForm{}, false
	}
	filter := dir == Receive
	if dir != Publish && dir != Receive {
		return TopicForm{}, false
	}
	if !filter && strings.ContainsAny(topic, "+#") {
		return TopicForm{}, false
	}
	var buf [16]string // every catalogued topic has fewer segments: no allocation
	segs := appendSegments(buf[:0], topic[1:])
	if !validWildcards(segs) {
		return TopicForm{}, false
	}
	for i := range topicCatalogue {
		f := &topicCatalogue[i]
		if f.Dir&dir == 0 || (d == Aliyun && !f.Aliyun) || (d == EnOS && !f.EnOS) {
			continue
		}
		if f.match(id, segs) {
			return *f, true
		}
	}
	return TopicForm{}, false
}

// appendSegments appends the '/'-separated segments of s to dst, as
// strings.Split would return them. TopicForm runs for every device
// publish (the broker's ACL, the uplink's lanes), and strings.Split's
// slice was 3 % of the bytes the forwarding benchmark allocated.
func appendSegments(dst []string, s string) []string {
	for {
		i := strings.IndexByte(s, '/')
		if i < 0 {
			return append(dst, s)
		}
		dst = append(dst, s[:i])
		s = s[i+1:]
	}
}

// MayPublish reports whether device id may publish on the concrete topic
// on cloud d ("" for either cloud).
func (id DeviceID) MayPublish(d Dialect, topic string) bool {
	_, ok := id.TopicForm(d, topic, Publish)
	return ok
}

// MayReceive reports whether device id may subscribe to filter, or be
// delivered a message on the concrete topic, on cloud d ("" for either).
func (id DeviceID) MayReceive(d Dialect, filter string) bool {
	_, ok := id.TopicForm(d, filter, Receive)
	return ok
}

// TopicAllowed reports whether the device (productKey, deviceName) may use
// topic on either cloud: publish to it (filter == false, a concrete topic
// name) or subscribe to it / be delivered on it (filter == true). It is
// DeviceID.MayPublish and DeviceID.MayReceive with no dialect; see
// DeviceID.TopicForm for the rules.
func TopicAllowed(productKey, deviceName, topic string, filter bool) bool {
	id := DeviceID{ProductKey: productKey, DeviceName: deviceName}
	if filter {
		return id.MayReceive("", topic)
	}
	return id.MayPublish("", topic)
}

// OwnFilter returns filter with '+' in its identity segments replaced by
// the device's own productKey and deviceName, when filter is one the
// device may subscribe to; otherwise it returns filter unchanged and false.
// "/sys/+/+/thing/service/+" becomes "/sys/{pk}/{dn}/thing/service/+":
// what a cloud session should subscribe to on the device's behalf.
func (id DeviceID) OwnFilter(d Dialect, filter string) (string, bool) {
	f, ok := id.TopicForm(d, filter, Receive)
	if !ok {
		return filter, false
	}
	segs := strings.Split(filter, "/")
	for k, p := range f.segs {
		if k+1 >= len(segs) || p.kind == segRest {
			break
		}
		switch p.kind {
		case segPK:
			segs[k+1] = id.ProductKey
		case segDN:
			segs[k+1] = id.DeviceName
		}
	}
	return strings.Join(segs, "/"), true
}

// match reports whether the topic or filter segments (after the leading
// '/') fall within the form for device id.
func (f *TopicForm) match(id DeviceID, segs []string) bool {
	for k, p := range f.segs {
		if p.kind == segRest {
			return k < len(segs) // one or more segments below, or a '#'
		}
		if k >= len(segs) {
			return false
		}
		s := segs[k]
		if s == "#" {
			return false // would reach beyond the form
		}
		switch p.kind {
		case segLit:
			if s != p.lit {
				return false
			}
		case segPK, segDN:
			own := id.ProductKey
			if p.kind == segDN {
				own = id.DeviceName
			}
			if s == "+" {
				if !f.anchored || len(f.forbid[k]) > 0 {
					return false
				}
				continue
			}
			if s != own {
				return false
			}
			for _, bad := range f.forbid[k] {
				if s == bad {
					return false
				}
			}
		case segAny:
			if s == "" {
				return false
			}
		}
	}
	return len(segs) == len(f.segs)
}

// validIdentity: an identity part fills exactly one topic segment and
// cannot be a wildcard.
func validIdentity(s string) bool {
	return s != "" && !strings.ContainsAny(s, "/+#\x00")
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
