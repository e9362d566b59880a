package cloudsim

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/edgegw/edgegw/secrets"
)

// MaxRRPCTimeout is the longest a cloud waits for an RRPC reply (the
// Alibaba RRpc API takes 1000-8000 ms); it is also the default.
const MaxRRPCTimeout = 8 * time.Second

// RRPCReply is a device's answer to an RRPC call.
type RRPCReply struct {
	MessageID    string `json:"messageId"`
	RequestTopic string `json:"requestTopic"` // the topic the request went out on
	Topic        string `json:"topic"`        // the topic the reply came on
	Payload      []byte `json:"-"`
	Record       Record `json:"-"` // the reply as recorded
}

type pendingRRPC struct {
	dev   DeviceRef
	reply chan Record
}

// RRPC calls a device synchronously, as the cloud's RRPC API does, and
// waits for its reply for at most timeout (0 or more than MaxRRPCTimeout:
// MaxRRPCTimeout). topic says which call, always on the device's own
// topics:
//
//   - /sys/{pk}/{dn}/thing/service/{svc} or /sys/{pk}/{dn}/thing/model/down_raw
//     (Alibaba): the synchronous service or raw call; the request goes out on
//     /ext/rrpc/{id}/sys/{pk}/{dn}/…, the reply comes on the same topic.
//   - /{pk}/{dn}/user/… (Alibaba): RRPC on a custom topic, only to a session
//     whose clientId carries ext with bit 0 (else ErrNoExtRRPC); request and
//     reply on /ext/rrpc/{id}/{pk}/{dn}/user/….
//   - /sys/{pk}/{dn}/rrpc/request (both clouds): system RRPC; the request goes
//     out on …/rrpc/request/{id}, the reply comes on …/rrpc/response/{id}.
//
// The device must be connected (ErrDeviceOffline) and receive the request
// topic, by its own SUBSCRIBE or server-side (ErrNotSubscribed). Without a
// reply in time RRPC returns ErrRRPCTimeout. The reply is also recorded
// as a normal device message.
func (s *Sim) RRPC(ctx context.Context, productKey, deviceName, topic string, payload []byte, timeout time.Duration) (RRPCReply, error) {
	ref := DeviceRef{ProductKey: productKey, DeviceName: deviceName}
	if timeout <= 0 || timeout > MaxRRPCTimeout {
		timeout = MaxRRPCTimeout
	}
	s.mu.Lock()
	s.messageID++
	id := strconv.FormatUint(1_700_000_000_000+s.messageID, 10) // Alibaba message ids are long digit strings
	sess := s.active[ref]
	s.mu.Unlock()
	reqTopic, replyTopic, err := rrpcTopics(ref, topic, id)
	if err != nil {
		return RRPCReply{}, fmt.Errorf("rrpc to %s on %q: %w", ref, topic, err)
	}
	if _, ok := ref.ID().TopicForm(s.dialect, reqTopic, secrets.Receive); !ok {
		return RRPCReply{}, fmt.Errorf("rrpc to %s on %q: %s does not give the device %q", ref, topic, s.dialect, reqTopic)
	}
	if sess == nil {
		return RRPCReply{}, fmt.Errorf("rrpc to %s on %q: %w", ref, topic, ErrDeviceOffline)
	}
	if !s.mayReceive(sess, reqTopic) {
		return RRPCReply{}, fmt.Errorf("rrpc to %s on %q: %w", ref, topic, ErrNoExtRRPC)
	}
	if !s.subscribed(sess.mochiID, reqTopic) {
		return RRPCReply{}, fmt.Errorf("rrpc to %s on %q: %w", ref, reqTopic, ErrNotSubscribed)
	}
	p := &pendingRRPC{dev: ref, reply: make(chan Record, 1)}
	s.mu.Lock()
	s.pending[replyTopic] = p
	s.stats.RRPCCalls++
	s.notifyLocked()
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		if s.pending[replyTopic] == p {
			delete(s.pending, replyTopic)
		}
		s.mu.Unlock()
	}()
	if err := s.srv.Publish(reqTopic, payload, false, 0); err != nil {
		return RRPCReply{}, fmt.Errorf("rrpc to %s on %q: %w", ref, reqTopic, err)
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case rec := <-p.reply:
		return RRPCReply{MessageID: id, RequestTopic: reqTopic, Topic: rec.Topic, Payload: rec.Payload, Record: rec}, nil
	case <-t.C:
		s.mu.Lock()
		s.stats.RRPCTimeouts++
		s.notifyLocked()
		s.mu.Unlock()
		return RRPCReply{}, fmt.Errorf("rrpc to %s on %q after %s: %w", ref, reqTopic, timeout, ErrRRPCTimeout)
	case <-ctx.Done():
		return RRPCReply{}, fmt.Errorf("rrpc to %s on %q: %w", ref, reqTopic, context.Cause(ctx))
	case <-s.done:
		return RRPCReply{}, fmt.Errorf("rrpc to %s on %q: %w", ref, reqTopic, ErrClosed)
	}
}

// rrpcTopics returns the request and reply topics of an RRPC call on
// topic (see Sim.RRPC).
func rrpcTopics(dev DeviceRef, topic, id string) (req, reply string, err error) {
	sys := "/sys/" + dev.ProductKey + "/" + dev.DeviceName + "/"
	rest, isSys := strings.CutPrefix(topic, sys)
	switch {
	case isSys && rest == "rrpc/request":
		return sys + "rrpc/request/" + id, sys + "rrpc/response/" + id, nil
	case isSys && (rest == "thing/model/down_raw" || (strings.HasPrefix(rest, "thing/service/") && !strings.Contains(rest[len("thing/service/"):], "/"))),
		strings.HasPrefix(topic, "/"+dev.ProductKey+"/"+dev.DeviceName+"/user/"):
		t := "/ext/rrpc/" + id + topic
		return t, t, nil
	}
	return "", "", fmt.Errorf("not an RRPC topic (want …/thing/service/{svc}, …/thing/model/down_raw, /{pk}/{dn}/user/… or …/rrpc/request)")
}

// rrpcReplied hands a device message to the RRPC call waiting for it.
// s.mu must be held.
func (s *Sim) rrpcRepliedLocked(rec Record) {
	p := s.pending[rec.Topic]
	if p == nil || p.dev != rec.Device {
		return
	}
	delete(s.pending, rec.Topic)
	p.reply <- rec // buffered, sent at most once
	s.stats.RRPCReplies++
}

// ntpResponse is Alibaba's NTP answer (docs/protocol.md, NTP row): the
// device's deviceSendTime echoed, the server's receive and send times in
// ms, as strings.
type ntpResponse struct {
	DeviceSendTime json.RawMessage `json:"deviceSendTime"`
	ServerRecvTime string          `json:"serverRecvTime"`
	ServerSendTime string          `json:"serverSendTime"`
}

// ntpReply answers an Alibaba NTP request on /ext/ntp/{pk}/{dn}/response,
// when the session receives that topic (SUBSCRIBE or _ss=1). A request
// without deviceSendTime gets no answer.
func (s *Sim) ntpReply(sess *session, pk packets.Packet) {
	base := "/ext/ntp/" + sess.dev.ProductKey + "/" + sess.dev.DeviceName + "/"
	if s.dialect != secrets.Aliyun || pk.TopicName != base+"request" {
		return
	}
	var req struct {
		DeviceSendTime json.RawMessage `json:"deviceSendTime"`
	}
	if err := json.Unmarshal(pk.Payload, &req); err != nil || len(req.DeviceSendTime) == 0 || string(req.DeviceSendTime) == "null" {
		s.log.Info("ntp request without deviceSendTime, not answered", "device", sess.dev.String(), "payload", string(pk.Payload))
		return
	}
	topic := base + "response"
	if !s.subscribed(sess.mochiID, topic) {
		return
	}
	body, _ := json.Marshal(ntpResponse{
		DeviceSendTime: req.DeviceSendTime,
		ServerRecvTime: strconv.FormatInt(sess.ntpRecv, 10),
		ServerSendTime: strconv.FormatInt(s.now().UnixMilli(), 10),
	})
	s.mu.Lock()
	s.stats.NTPResponses++
	s.notifyLocked()
	s.mu.Unlock()
	if err := s.srv.Publish(topic, body, false, 0); err != nil {
		s.log.Warn("ntp response failed", "device", sess.dev.String(), "error", err)
	}
}
