package cloudsim_test

import (
	"encoding/json"
	"testing"

	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink/cloudsim"
)

type replyBody struct {
	ID      json.RawMessage `json:"id"`
	Code    int             `json:"code"`
	Data    json.RawMessage `json:"data"`
	Message string          `json:"message"`
	Method  string          `json:"method"`
}

func decodeReply(t *testing.T, payload []byte) replyBody {
	t.Helper()
	var r replyBody
	if err := json.Unmarshal(payload, &r); err != nil {
		t.Fatalf("reply %q: %v", payload, err)
	}
	return r
}

func TestAlinkReplies(t *testing.T) {
	for _, tc := range []struct {
		dialect    secrets.Dialect
		pk, dn     string
		secret     string
		post       string
		badCode    int
		wantMethod string
	}{
		{secrets.Aliyun, aliPK, aliDN, aliSecret, "thing/event/property/post", 460, "thing.event.property.post"},
		{secrets.EnOS, enosPK, enosDK, enosSecret, "thing/measurepoint/post", 1220, ""},
	} {
		t.Run(string(tc.dialect), func(t *testing.T) {
			var sim *cloudsim.Sim
			mode := 2
			if tc.dialect == secrets.Aliyun {
				sim, _ = aliyunSim(t)
				mode = 3
			} else {
				sim, _ = enosSim(t)
			}
			c := mustConnect(t, urlFor(sim, cloudsim.TCP), sign(t, tc.dialect, tc.pk, tc.dn, tc.secret, mode, ""),
				withKeepAlive(keepaliveFor(tc.dialect)))
			base := "/sys/" + tc.pk + "/" + tc.dn + "/"
			post := base + tc.post
			event := base + "thing/event/alarm/post"

			// Not subscribed to the reply topic: no reply.
			mustPublish(t, c, event, 1, `{"id":"1","method":"thing.event.alarm.post","params":{}}`)
			mustSubscribe(t, c, post+"_reply", 1)
			// sys.ack=0: no reply.
			mustPublish(t, c, post, 1, `{"id":"2","sys":{"ack":0},"params":{}}`)
			mustPublish(t, c, post, 1, `{"id":"42","version":"1.0","method":"`+tc.wantMethod+`","params":{"temp":21.5}}`)
			m := nextMsg(t, c)
			if m.Topic() != post+"_reply" {
				t.Fatalf("reply on %q, want %q", m.Topic(), post+"_reply")
			}
			r := decodeReply(t, m.Payload())
			if string(r.ID) != `"42"` || r.Code != 200 || string(r.Data) != "{}" || r.Message != "success" || r.Method != tc.wantMethod {
				t.Errorf("reply %s, want id \"42\", code 200, data {}, message success, method %q", m.Payload(), tc.wantMethod)
			}
			if m.Qos() != 1 {
				t.Errorf("reply QoS %d, want the request's 1", m.Qos())
			}

			// A numeric id is echoed as a number.
			mustPublish(t, c, post, 0, `{"id":7,"params":{}}`)
			if r := decodeReply(t, nextMsg(t, c).Payload()); string(r.ID) != "7" || r.Code != 200 {
				t.Errorf("reply to numeric id: id %s code %d", r.ID, r.Code)
			}
			// Malformed requests get the cloud's error code, and the
			// connection survives.
			for _, bad := range []string{`{"id":"9",`, `not json`, `{"params":{}}`, `[1,2]`, `{"id":{"x":1}}`} {
				mustPublish(t, c, post, 1, bad)
				r := decodeReply(t, nextMsg(t, c).Payload())
				if r.Code != tc.badCode {
					t.Errorf("reply to %q: code %d, want %d", bad, r.Code, tc.badCode)
				}
			}
			if st := sim.Stats(); st.Replies != 7 {
				t.Errorf("Stats.Replies = %d, want 7 (none for the unsubscribed and the ack=0 request)", st.Replies)
			}
			// Replies from the device to downstream requests get no reply.
			mustSubscribe(t, c, base+"thing/service/property/set_reply_reply", 1)
			mustPublish(t, c, base+"thing/service/property/set_reply", 1, `{"id":"5","code":200}`)
			mustPublish(t, c, post, 1, `{"id":"43","params":{}}`)
			if r := decodeReply(t, nextMsg(t, c).Payload()); string(r.ID) != `"43"` {
				t.Errorf("unexpected reply %s (a _reply topic was answered?)", r.ID)
			}
			if len(sim.MessagesFor(tc.pk, tc.dn)) != 11 {
				t.Errorf("recorded %d messages, want 11 (replies are not device messages)", len(sim.MessagesFor(tc.pk, tc.dn)))
			}
		})
	}
}
