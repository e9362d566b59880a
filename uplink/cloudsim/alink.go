package cloudsim

import (
	"bytes"
	"encoding/json"
	"strings"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/edgegw/edgegw/secrets"
)

// Alink reply codes.
const (
	codeOK           = 200
	aliyunBadRequest = 460  // Alibaba: request parameter error
	enosBadPayload   = 1220 // EnOS: payload format error
)

// replyTopic returns the reply topic of an Alink request a device
// published, or "" when the topic is not a request the cloud answers:
// requests live under /sys/{pk}/{dn}/; replies to downstream requests
// (…_reply), RRPC responses and raw (non-JSON) payloads get no answer.
func replyTopic(dev DeviceRef, topic string) string {
	prefix := "/sys/" + dev.ProductKey + "/" + dev.DeviceName + "/"
	rest, ok := strings.CutPrefix(topic, prefix)
	if !ok || rest == "" || strings.HasSuffix(topic, "_reply") ||
		strings.HasPrefix(rest, "rrpc/") || strings.HasSuffix(topic, "/up_raw") {
		return ""
	}
	return topic + "_reply"
}

// alinkRequest is the part of an Alink request envelope the cloud looks
// at (docs/protocol.md §7.8).
type alinkRequest struct {
	ID     json.RawMessage `json:"id"`
	Method string          `json:"method"`
	Sys    *struct {
		Ack *int `json:"ack"`
	} `json:"sys"`
}

type alinkReplyBody struct {
	ID      json.RawMessage `json:"id"`
	Code    int             `json:"code"`
	Data    json.RawMessage `json:"data"`
	Message string          `json:"message"`
	Method  string          `json:"method,omitempty"`
	Version string          `json:"version,omitempty"`
}

// buildReply returns the reply payload for a request payload, or nil when
// the request asks for no reply (sys.ack=0).
func buildReply(d secrets.Dialect, payload []byte) []byte {
	var req alinkRequest
	err := json.Unmarshal(payload, &req)
	id := bytes.TrimSpace(req.ID)
	validID := err == nil && len(id) > 0 && (id[0] == '"' || id[0] == '-' || (id[0] >= '0' && id[0] <= '9'))
	body := alinkReplyBody{ID: json.RawMessage(`""`), Data: json.RawMessage(`{}`)}
	if !validID {
		if err == nil && len(id) > 0 && !bytes.Equal(id, []byte("null")) {
			body.ID = id
		}
		body.Code, body.Message = aliyunBadRequest, "request parameter error"
		if d == secrets.EnOS {
			body.Code, body.Message = enosBadPayload, "payload format error"
		}
	} else {
		if req.Sys != nil && req.Sys.Ack != nil && *req.Sys.Ack == 0 {
			return nil
		}
		body.ID, body.Code, body.Message = id, codeOK, "success"
		if d == secrets.Aliyun {
			body.Method, body.Version = req.Method, "1.0"
		}
	}
	out, _ := json.Marshal(body)
	return out
}

// alinkReply answers a device's Alink request on its _reply topic, if the
// device subscribed to that topic (the clouds send replies only to
// subscribers). The reply goes out at the request's QoS; observers
// subscribed to the topic see it too.
func (s *Sim) alinkReply(sess *session, pk packets.Packet) {
	topic := replyTopic(sess.dev, pk.TopicName)
	if topic == "" || !s.subscribed(sess.mochiID, topic) {
		return
	}
	body := buildReply(s.dialect, pk.Payload)
	if body == nil {
		return
	}
	// Count first, so the counter is up to date when the device sees the
	// reply.
	s.countReply(1)
	if err := s.srv.Publish(topic, body, false, pk.FixedHeader.Qos); err != nil {
		s.countReply(-1)
		s.log.Warn("alink reply failed", "device", sess.dev.String(), "topic", topic, "error", err)
	}
}

func (s *Sim) countReply(n int64) {
	s.mu.Lock()
	s.stats.Replies += n
	s.notifyLocked()
	s.mu.Unlock()
}
