package localbroker_test

import (
	"context"
	"testing"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgegw/edgegw/localbroker"
)

type nopSink struct{}

func (nopSink) Publish(_ context.Context, _ localbroker.Message, done func(error)) { done(nil) }

// BenchmarkPublishQoS1 measures device → broker → sink throughput: one paho
// client publishing 200-byte QoS 1 messages into a sink that does nothing,
// with 1 and with 32 messages in flight.
func BenchmarkPublishQoS1(b *testing.B) {
	h := startBroker(b, func(c *localbroker.Config) { c.Sink = nopSink{} })
	payload := make([]byte, 200)
	for _, window := range []int{1, 32} {
		b.Run(map[int]string{1: "inflight-1", 32: "inflight-32"}[window], func(b *testing.B) {
			c := connect(b, h.url(b, "tcp"), "bench", dnA, passA)
			topic := topicA("bench")
			pending := make(chan paho.Token, window)
			b.SetBytes(int64(len(payload)))
			b.ReportAllocs()
			for b.Loop() {
				if len(pending) == window {
					wait(b, <-pending, "publish")
				}
				pending <- c.Publish(topic, 1, false, payload)
			}
			for len(pending) > 0 {
				wait(b, <-pending, "publish")
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msg/s")
		})
	}
}
