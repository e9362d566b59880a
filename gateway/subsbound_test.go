package gateway

import (
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgegw/edgegw/gateway/config"
	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/localbroker"
	"github.com/edgegw/edgegw/secrets"
)

// Issue #13: a device subscribed to 100,000 filters in its own namespace,
// and every one was mirrored to its cloud session (Alibaba allows about
// 100). With broker.max_subscriptions (default 100), the filters beyond
// the bound get SUBACK 0x80, are counted and logged, and never reach the
// cloud; the mirror is released when the device leaves.
func TestSubscriptionsBoundedAndMirrored(t *testing.T) {
	limit := config.Default().Broker.MaxSubscriptions
	const dn = "bounded01"
	r := newDownRig(t, secrets.Aliyun, dn)
	c := r.connect(dn, "fw", true, &received{})

	filters := map[string]byte{}
	for i := range limit + 10 {
		filters[fmt.Sprintf("/%s/%s/user/f%03d", r.pk, dn, i)] = 1
	}
	tok := c.SubscribeMultiple(filters, nil)
	testutil.WaitToken(t, tok, 10*time.Second, "SUBSCRIBE")
	var granted []string
	refused := 0
	for f, code := range tok.(*mqtt.SubscribeToken).Result() {
		switch code {
		case 1:
			granted = append(granted, f)
		case 0x80:
			refused++
		default:
			t.Errorf("filter %q: code 0x%02x", f, code)
		}
	}
	if len(granted) != limit || refused != 10 {
		t.Fatalf("%d granted, %d refused; want %d and 10", len(granted), refused, limit)
	}
	slices.Sort(granted)
	testutil.Eventually(t, 20*time.Second, func() bool { return len(r.sim.Subscriptions(r.pk, dn)) >= limit },
		"%d filters mirrored to the cloud", limit)
	if got := r.sim.Subscriptions(r.pk, dn); !slices.Equal(got, granted) {
		t.Errorf("the cloud session holds %d filters, want exactly the %d granted ones", len(got), len(granted))
	}
	if v := r.metric("edgegw_broker_subscriptions_over_quota_total"); v != 10 {
		t.Errorf("edgegw_broker_subscriptions_over_quota_total = %v, want 10", v)
	}
	if n := strings.Count(r.log.String(), "subscription refused: the device holds its maximum"); n != 1 {
		t.Errorf("%d log lines about the quota, want 1", n)
	}

	// The device leaves: its clean session ends, and so does the mirror.
	c.Disconnect(100)
	testutil.Eventually(t, 20*time.Second, func() bool { return len(r.sim.Subscriptions(r.pk, dn)) == 0 },
		"cloud subscriptions released after the device left")
}

// fakeMirror records what subscriptions asks of the uplink manager.
type fakeMirror struct{ subs map[string]bool }

func (f *fakeMirror) Subscribe(_ secrets.DeviceID, filters map[string]byte) error {
	for k := range filters {
		f.subs[k] = true
	}
	return nil
}

func (f *fakeMirror) Unsubscribe(_ secrets.DeviceID, filters ...string) error {
	for _, k := range filters {
		delete(f.subs, k)
	}
	return nil
}

// The mirror's own fence: whatever the broker lets through, a device never
// has more than max filters on its cloud session.
func TestSubscriptionsMirrorCap(t *testing.T) {
	m := &fakeMirror{subs: map[string]bool{}}
	log := &testutil.SyncBuffer{}
	s := newSubscriptions(m, 3, slog.New(slog.NewTextHandler(log, nil)))
	dev := secrets.DeviceID{ProductKey: "a1Cap", DeviceName: "dev1"}
	id := localbroker.Identity{DeviceID: dev}
	f := func(i int) string { return fmt.Sprintf("/a1Cap/dev1/user/%d", i) }
	s.Subscribed(id, "c1", []string{f(1), f(2)})
	s.Subscribed(id, "c2", []string{f(2), f(3), f(4), f(5)}) // f(2) is held already
	if len(m.subs) != 3 || !m.subs[f(1)] || !m.subs[f(2)] || !m.subs[f(3)] {
		t.Fatalf("mirrored %v, want f1-f3", m.subs)
	}
	if n := s.overQuota.Load(); n != 2 {
		t.Errorf("overQuota = %d, want 2", n)
	}
	if n := strings.Count(log.String(), "subscription not mirrored"); n != 1 {
		t.Errorf("%d log lines, want 1", n)
	}
	// A filter never mirrored is not unmirrored either; the device leaving
	// releases everything.
	s.Unsubscribed(id, "c2", []string{f(2), f(3), f(4), f(5)})
	s.Unsubscribed(id, "c1", []string{f(1), f(2)})
	if len(m.subs) != 0 || len(s.holders) != 0 {
		t.Errorf("after both left: mirrored %v, holders %v", m.subs, s.holders)
	}
}
