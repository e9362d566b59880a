package gateway_test

import (
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgegw/edgegw/gateway/config"
	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/uplink/cloudsim"
)

// TestTimeCriticalEndToEnd: a device builds a backlog while the cloud is
// down, and a reply it sends meanwhile outlives cloud.reply_ttl: it is
// never sent and shows in edgegw_cloud_messages_expired_total. Once the
// cloud is back and the backlog draining, the device's NTP request (QoS
// 1) and RRPC response (QoS 0, as Alibaba requires) reach the cloud ahead
// of the rest of the backlog, which still arrives complete and in order.
func TestTimeCriticalEndToEnd(t *testing.T) {
	const backlog = 60
	r := newGWRig(t, gwRigOptions{devices: 1, simRate: cloudsim.RateUnlimited, mutate: func(c *config.Config) {
		rt := 20.0
		c.Cloud.DeviceRate = &rt
		c.Cloud.ReplyTTL = config.Duration(300 * time.Millisecond)
		c.Metrics.Listen = "127.0.0.1:0"
	}})
	d := r.devices[0]
	var (
		ntpTopic   = "/ext/ntp/" + d.ProductKey + "/" + d.DeviceName + "/request"
		rrpcTopic  = "/sys/" + d.ProductKey + "/" + d.DeviceName + "/rrpc/response/1686000000123"
		replyTopic = "/sys/" + d.ProductKey + "/" + d.DeviceName + "/thing/service/property/set_reply"
	)
	if err := r.sim.Down(); err != nil {
		t.Fatal(err)
	}
	c := r.localClient(d)
	acked := map[int64]bool{}
	for s := int64(1); s <= backlog; s++ {
		publish(t, c, d, s)
		acked[s] = true
	}
	if tok := c.Publish(replyTopic, 0, false, `{"id":"7","code":200,"data":{}}`); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish the reply: %v", tok.Error())
	}
	metrics := "http://" + r.gw.MetricsAddr().String() + "/metrics"
	testutil.Eventually(t, 30*time.Second, func() bool {
		return strings.Contains(scrape(t, metrics), `edgegw_cloud_messages_expired_total{class="reply"} 1`+"\n")
	}, "the reply counted as expired while the cloud is down")

	if err := r.sim.Up(t.Context()); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 30*time.Second, func() bool { s, _ := r.seqTimes(d); return len(s) > 0 }, "the drain started")
	atSend := len(r.sim.MessagesFor(d.ProductKey, d.DeviceName))
	if tok := c.Publish(ntpTopic, 1, false, `{"deviceSendTime":"1700000000000"}`); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish the NTP request: %v", tok.Error())
	}
	if tok := c.Publish(rrpcTopic, 0, false, `{"id":"1686000000123","code":200}`); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish the RRPC response: %v", tok.Error())
	}
	testutil.Eventually(t, 30*time.Second, func() bool { s, _ := r.seqTimes(d); return len(s) >= backlog }, "the backlog delivered")

	recs := r.sim.MessagesFor(d.ProductKey, d.DeviceName)
	topics := make([]string, len(recs))
	for i, rec := range recs {
		topics[i] = rec.Topic
	}
	seqs, _ := r.seqTimes(d)
	reconcile(t, d.DeviceName, seqs, acked)
	lastBacklog := slices.IndexFunc(recs, func(rec cloudsim.Record) bool {
		return rec.Topic == d.UplinkTopic() && strings.Contains(string(rec.Payload), `"seq":60`)
	})
	limit := atSend + r.cfg.Cloud.Inflight + 2
	for _, tc := range []string{ntpTopic, rrpcTopic} {
		pos := slices.Index(topics, tc)
		switch {
		case pos < 0:
			t.Errorf("%s never reached the cloud", tc)
		case pos > limit || pos > lastBacklog:
			t.Errorf("%s arrived at position %d (backlog done at %d), want at most %d: it waited behind the backlog", tc, pos, lastBacklog, limit)
		}
	}
	if slices.Contains(topics, replyTopic) {
		t.Errorf("the expired reply reached the cloud")
	}
	t.Logf("handed over at %d: NTP arrived at %d, RRPC at %d; backlog done at %d of %d",
		atSend, slices.Index(topics, ntpTopic), slices.Index(topics, rrpcTopic), lastBacklog, len(topics))
}

// scrape returns the metrics page.
func scrape(t testing.TB, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
