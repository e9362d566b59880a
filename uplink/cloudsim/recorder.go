package cloudsim

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"maps"
	"time"
	"unicode/utf8"
)

// Record is one device message the simulated cloud accepted (or, in
// StalledMessages, one it swallowed while stalled).
type Record struct {
	Seq       uint64    // arrival order, starting at 1, shared with stalled messages
	Device    DeviceRef // the publishing device
	ClientID  string    // the full MQTT clientId of the session
	Transport string    // TCP, TLS, WS or WSS
	Topic     string
	Payload   []byte
	QoS       byte
	Dup       bool // the DUP flag: a QoS 1 resend
	Time      time.Time
}

// MarshalJSON renders the payload as a string when it is UTF-8 text and
// as base64 (payloadBase64) otherwise.
func (r Record) MarshalJSON() ([]byte, error) {
	out := struct {
		Seq           uint64    `json:"seq"`
		ProductKey    string    `json:"productKey"`
		DeviceName    string    `json:"deviceName"`
		ClientID      string    `json:"clientId"`
		Transport     string    `json:"transport"`
		Topic         string    `json:"topic"`
		Payload       *string   `json:"payload,omitempty"`
		PayloadBase64 *string   `json:"payloadBase64,omitempty"`
		QoS           byte      `json:"qos"`
		Dup           bool      `json:"dup"`
		Time          time.Time `json:"time"`
	}{
		Seq: r.Seq, ProductKey: r.Device.ProductKey, DeviceName: r.Device.DeviceName,
		ClientID: r.ClientID, Transport: r.Transport, Topic: r.Topic, QoS: r.QoS, Dup: r.Dup, Time: r.Time,
	}
	if utf8.Valid(r.Payload) {
		p := string(r.Payload)
		out.Payload = &p
	} else {
		p := base64.StdEncoding.EncodeToString(r.Payload)
		out.PayloadBase64 = &p
	}
	return json.Marshal(out)
}

// Stats are the simulator's counters since New.
type Stats struct {
	ConnectsAccepted  int64          `json:"connectsAccepted"`  // device CONNECTs answered with 0 (registration included)
	ObserverConnects  int64          `json:"observerConnects"`  // observer CONNECTs answered with 0
	ConnectsRefused   map[byte]int64 `json:"connectsRefused"`   // refused CONNECTs by return code
	Takeovers         int64          `json:"takeovers"`         // sessions closed by a newer CONNECT of the same device
	Messages          int64          `json:"messages"`          // device messages accepted and recorded
	RateDropped       int64          `json:"rateDropped"`       // acknowledged but dropped by the rate limit
	Stalled           int64          `json:"stalled"`           // swallowed while stalled (no PUBACK)
	PermissionRefused int64          `json:"permissionRefused"` // forbidden publishes (connection closed) and subscribe filters (0x80)
	ProtocolErrors    int64          `json:"protocolErrors"`    // QoS 2 publishes, publishes on a registration connection
	Activations       int64          `json:"activations"`       // deviceSecrets issued (EnOS activation, Alibaba registration)
	Replies           int64          `json:"replies"`           // Alink replies sent
	NTPResponses      int64          `json:"ntpResponses"`      // NTP requests answered
	RRPCCalls         int64          `json:"rrpcCalls"`         // RRPC requests sent (Sim.RRPC, POST /rrpc)
	RRPCReplies       int64          `json:"rrpcReplies"`       // RRPC replies matched to their call
	RRPCTimeouts      int64          `json:"rrpcTimeouts"`      // RRPC calls without a reply in time
	RecordsDiscarded  int64          `json:"recordsDiscarded"`  // oldest records dropped to respect MaxRecords
	Connected         int            `json:"connected"`         // devices with a session now
}

// Stats returns a snapshot of the counters.
func (s *Sim) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.statsLocked()
}

func (s *Sim) statsLocked() Stats {
	st := s.stats
	st.ConnectsRefused = maps.Clone(s.stats.ConnectsRefused)
	st.Connected = len(s.active)
	return st
}

// Messages returns every recorded device message in arrival order.
func (s *Sim) Messages() []Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Record(nil), s.records...)
}

// MessagesFor returns the recorded messages of one device.
func (s *Sim) MessagesFor(productKey, deviceName string) []Record {
	ref := DeviceRef{productKey, deviceName}
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Record
	for _, r := range s.records {
		if r.Device == ref {
			out = append(out, r)
		}
	}
	return out
}

// StalledMessages returns the messages swallowed while stalled.
func (s *Sim) StalledMessages() []Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Record(nil), s.stalled...)
}

// WaitFor blocks until cond holds for the recorded messages or ctx is
// done. cond is called with the records in arrival order (again after
// every change) and must not modify or keep them.
func (s *Sim) WaitFor(ctx context.Context, cond func([]Record) bool) error {
	for {
		s.mu.Lock()
		recs := s.records[:len(s.records):len(s.records)]
		ch := s.changed
		s.mu.Unlock()
		if cond(recs) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for messages: %w", context.Cause(ctx))
		case <-ch:
		}
	}
}

// WaitStats blocks until cond holds for the counters or ctx is done.
func (s *Sim) WaitStats(ctx context.Context, cond func(Stats) bool) error {
	for {
		s.mu.Lock()
		st := s.statsLocked()
		ch := s.changed
		s.mu.Unlock()
		if cond(st) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for stats: %w", context.Cause(ctx))
		case <-ch:
		}
	}
}

// appendBounded appends r, first discarding the oldest half when the slice
// holds max records. It copies into a new array when discarding, so slices
// handed out earlier stay valid.
func appendBounded(recs []Record, r Record, max int, discarded *int64) []Record {
	if len(recs) >= max {
		keep := max / 2
		drop := len(recs) - keep
		recs = append(make([]Record, 0, max), recs[drop:]...)
		if discarded != nil {
			*discarded += int64(drop)
		}
	}
	return append(recs, r)
}
