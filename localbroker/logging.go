package localbroker

import (
	"context"
	"errors"
	"log/slog"

	"github.com/edgegw/edgegw/internal/loglimit"
	"github.com/edgegw/edgegw/internal/logsafe"
	"github.com/edgegw/edgegw/secrets"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// limiter is the broker's log rate limiter (shared with the gateway).
type limiter = loglimit.Limiter

var newLimiter = loglimit.New

// logDevice logs at level at most once per device, category and minute
// (what names the category), adding a count of the lines held back.
func (b *Broker) logDevice(what string, dev secrets.DeviceID, level slog.Level, msg string, args ...any) {
	if !b.log.Enabled(context.Background(), level) {
		return
	}
	ok, suppressed := b.perDevice.Allow(what + ":" + dev.String())
	if !ok {
		return
	}
	if suppressed > 0 {
		args = append(args, "suppressed", suppressed)
	}
	b.log.Log(context.Background(), level, msg, args...)
}

// logLimited logs at level under the rate limit of key, adding a
// "suppressed" attribute when earlier lines were held back.
func (b *Broker) logLimited(key string, level slog.Level, msg string, args ...any) {
	if !b.log.Enabled(context.Background(), level) {
		return
	}
	ok, suppressed := b.limit.Allow(key)
	if !ok {
		return
	}
	if suppressed > 0 {
		args = append(args, "suppressed", suppressed)
	}
	b.log.Log(context.Background(), level, msg, args...)
}

// mochiHandler adapts the slog handler given to mochi:
//   - mochi's Info lines (hook added, listener attached, server started …)
//     go to Debug: the broker logs its own lifecycle;
//   - the empty-message Warn mochi writes for every failed connection, and
//     the Error it writes whenever a hook refuses a publish with a reason
//     code, go to Debug: the broker logs refusals itself, once and with
//     context;
//   - the keepalive warning (keepalive 0 is legitimate for field devices)
//     and the disconnect after an ACL denial (logged by the broker) go to
//     Debug;
//   - the Debug line mochi writes whenever a hook returns ErrRejectPacket is
//     dropped: that is how OnPublish takes over every device publish
//     (acks.go), not an event;
//   - packets and wills in attributes are summarised (type, topic, QoS, id,
//     payload size) instead of dumped, so payloads never reach the log;
//   - string attributes (client ids, topics: what clients sent) are
//     clipped and escaped with logsafe.Clip;
//   - remaining Warn and Error lines are rate limited per message.
type mochiHandler struct {
	inner slog.Handler
	limit *limiter
}

func (h *mochiHandler) Enabled(ctx context.Context, level slog.Level) bool {
	return h.inner.Enabled(ctx, level)
}

func (h *mochiHandler) Handle(ctx context.Context, r slog.Record) error {
	level := r.Level
	switch {
	case level < slog.LevelWarn && level >= slog.LevelInfo:
		level = slog.LevelDebug
	case level == slog.LevelWarn && r.Message == "":
		level = slog.LevelDebug
	case level >= slog.LevelError && r.Message == "publish packet error":
		level = slog.LevelDebug
	case r.Message == mqtt.ErrMinimumKeepalive.Error():
		level = slog.LevelDebug // keepalive 0 is legitimate for field devices
	case r.Message == "error processing packet" && hasError(r, packets.ErrNotAuthorized):
		level = slog.LevelDebug // an ACL denial, already logged by the broker
	}
	if level != r.Level && !h.inner.Enabled(ctx, level) {
		return nil
	}
	if level >= slog.LevelWarn {
		ok, suppressed := h.limit.Allow("mochi:" + r.Message)
		if !ok {
			return nil
		}
		if suppressed > 0 {
			r.AddAttrs(slog.Int("suppressed", suppressed))
		}
	}
	out := slog.NewRecord(r.Time, level, r.Message, r.PC)
	r.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(summarise(a))
		return true
	})
	return h.inner.Handle(ctx, out)
}

func (h *mochiHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	for i := range attrs {
		attrs[i] = summarise(attrs[i])
	}
	return &mochiHandler{inner: h.inner.WithAttrs(attrs), limit: h.limit}
}

func (h *mochiHandler) WithGroup(name string) slog.Handler {
	return &mochiHandler{inner: h.inner.WithGroup(name), limit: h.limit}
}

// summarise replaces packet and will values by a payload-free summary and
// clips strings.
func summarise(a slog.Attr) slog.Attr {
	switch a.Value.Kind() {
	case slog.KindString:
		return slog.String(a.Key, logsafe.Clip(a.Value.String()))
	case slog.KindGroup:
		g := a.Value.Group()
		out := make([]any, len(g))
		for i, ga := range g {
			out[i] = summarise(ga)
		}
		return slog.Group(a.Key, out...)
	case slog.KindAny:
	default:
		return a
	}
	switch v := a.Value.Any().(type) {
	case packets.Packet:
		return packetAttr(a.Key, &v)
	case *packets.Packet:
		if v != nil {
			return packetAttr(a.Key, v)
		}
	case mqtt.Will:
		return slog.Group(a.Key, "topic", logsafe.Clip(v.TopicName), "qos", v.Qos, "bytes", len(v.Payload))
	}
	return a
}

func packetAttr(key string, pk *packets.Packet) slog.Attr {
	attrs := []any{"type", packets.PacketNames[pk.FixedHeader.Type]}
	if pk.TopicName != "" {
		attrs = append(attrs, "topic", logsafe.Clip(pk.TopicName))
	}
	if pk.FixedHeader.Type == packets.Publish {
		attrs = append(attrs, "qos", pk.FixedHeader.Qos, "bytes", len(pk.Payload))
	}
	if pk.PacketID != 0 {
		attrs = append(attrs, "id", pk.PacketID)
	}
	return slog.Group(key, attrs...)
}

// hasError reports whether the record's "error" attribute is target.
func hasError(r slog.Record, target error) bool {
	found := false
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "error" {
			if err, ok := a.Value.Any().(error); ok && errors.Is(err, target) {
				found = true
			}
			return false
		}
		return true
	})
	return found
}
