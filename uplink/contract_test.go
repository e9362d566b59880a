package uplink

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink/cloudsim"
)

// contractCloud is what the contract suite needs from a cloud broker.
type contractCloud struct {
	url      string
	register func(secrets.DeviceID, secrets.Secret) // known devices (a plain broker ignores it)
	// kick disconnects the session st describes from the broker side.
	kick func(t testing.TB, st SessionStatus)
}

// runContract runs body against three brokers:
//   - cloudsim, the simulated cloud: signature checks, topic ACLs and
//     takeover by device identity as the clouds do them;
//   - mochi with the verifying cloudHook of cloud_mochi_test.go, the fake
//     the fault-injection tests (session_test.go, drain_test.go) need: it
//     refuses or drops the next N connects, kicks a client at a chosen
//     message before its PUBACK and records which messages were PUBACKed,
//     none of which cloudsim's knobs (all-or-nothing modes) can express;
//   - Debian's mosquitto as a plain third-party broker.
func runContract(t *testing.T, body func(t *testing.T, c contractCloud)) {
	t.Run("cloudsim", func(t *testing.T) {
		sim, devices := startContractSim(t)
		body(t, contractCloud{
			url: "tcp://" + sim.Addr(cloudsim.TCP),
			register: func(id secrets.DeviceID, secret secrets.Secret) {
				if err := sim.AddDevice(id.ProductKey, id.DeviceName, secret); err != nil {
					t.Fatal(err)
				}
				devices.Store(id, secret)
			},
			kick: func(t testing.TB, st SessionStatus) {
				secret, ok := devices.Load(st.Device)
				if !ok {
					t.Fatalf("kick: device %s not registered", st.Device)
				}
				kickByDevice(t, "tcp://"+sim.Addr(cloudsim.TCP), st.Device, secret.(secrets.Secret))
			},
		})
	})
	t.Run("mochi", func(t *testing.T) {
		m := startMochi(t, secrets.Aliyun)
		body(t, contractCloud{
			url:      m.url,
			register: m.register,
			kick:     func(t testing.TB, st SessionStatus) { m.kickClient(t, st.ClientID) },
		})
	})
	t.Run("mosquitto", func(t *testing.T) {
		mq := startMosquitto(t)
		body(t, contractCloud{
			url:      mq.url,
			register: func(secrets.DeviceID, secrets.Secret) {},
			kick:     func(t testing.TB, st SessionStatus) { kickByTakeover(t, mq.url, st.ClientID) },
		})
	})
}

// startContractSim starts an Alibaba cloud simulator on plain TCP with
// the contract observer's account and no per-device rate limit (the suite
// measures delivery, not the cloud's throttle). devices maps each
// registered DeviceID to its secret, for kicks.
func startContractSim(t *testing.T) (*cloudsim.Sim, *sync.Map) {
	t.Helper()
	sim, err := cloudsim.New(cloudsim.Config{
		Dialect:          secrets.Aliyun,
		Listen:           "127.0.0.1:0",
		ObserverUser:     observerUser,
		ObserverPassword: secrets.NewSecret(observerPassword),
		DeviceRate:       cloudsim.RateUnlimited,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := sim.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := sim.Close(); err != nil {
			t.Errorf("close cloud simulator: %v", err)
		}
	})
	return sim, &sync.Map{}
}

// kickByDevice connects as the device itself, with freshly signed
// credentials: the cloud closes the device's current session (takeover by
// identity), and the gateway's session has to reconnect.
func kickByDevice(t testing.TB, url string, id secrets.DeviceID, secret secrets.Secret) {
	t.Helper()
	cr, err := secrets.Sign(secrets.SignParams{
		Dialect: secrets.Aliyun, ProductKey: id.ProductKey, DeviceName: id.DeviceName,
		ClientID: "kicker", SecureMode: 3,
	}, secret)
	if err != nil {
		t.Fatal(err)
	}
	opts := mqtt.NewClientOptions().AddBroker(url).SetClientID(cr.ClientID).
		SetUsername(cr.Username).SetPassword(cr.Password.Reveal()).
		SetProtocolVersion(4).SetAutoReconnect(false).SetCleanSession(true)
	c := mqtt.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("takeover connect as %s: %v", id, tok.Error())
	}
	c.Disconnect(50)
}

// Several devices drain concurrently with a window of 8; each is kicked
// by the broker mid-stream. Every device's messages reach the broker in
// order (duplicates counted), and the queue acknowledges only messages the
// broker received.
func TestContractDeliveryAcrossKicks(t *testing.T) {
	runContract(t, func(t *testing.T, cloud contractCloud) {
		obs := newObserver(t, cloud.url)
		r := newRig(t, cloud.url, func(c *ManagerConfig) {
			c.Window = 8
			l := c.Limits[secrets.Aliyun]
			l.MessageRate = Rate{PerSecond: 1000, Burst: 1}
			c.Limits[secrets.Aliyun] = l
		})
		const devices, n = 3, 300
		var devs []Device
		for i := range devices {
			d := testDevice(i)
			devs = append(devs, d)
			cloud.register(d.ID, d.Secret)
			r.add(d)
		}
		startManager(t, r.m)
		for _, d := range devs {
			r.waitStatus(d.ID, "connected", func(st SessionStatus) bool { return st.State == StateConnected })
		}
		start := time.Now()
		for _, d := range devs {
			r.q.appendN(t, d.ID, userTopic(d.ID), 1, n)
		}
		for _, d := range devs {
			testutil.Eventually(t, 10*time.Second, func() bool { return obs.distinct(userTopic(d.ID)) >= n/3 }, "a third delivered")
			st, _ := r.m.Status(d.ID)
			cloud.kick(t, st)
		}
		for _, d := range devs {
			st := r.waitStatus(d.ID, "all acknowledged", func(st SessionStatus) bool { return st.Sent == n })
			testutil.Eventually(t, 10*time.Second, func() bool { return obs.distinct(userTopic(d.ID)) == n }, "broker forwarded all")
			got := obs.seen(userTopic(d.ID))
			dups := checkOrder(t, d.ID.String(), got, n)
			seen := make(map[uint64]bool)
			for _, s := range got {
				seen[s] = true
			}
			for _, s := range r.q.acked(d.ID) {
				if !seen[s] {
					t.Fatalf("%s: seq %d acknowledged but never received by the broker", d.ID, s)
				}
			}
			if st.Connects < 2 {
				t.Fatalf("%s: %d connects, the kick did not land", d.ID, st.Connects)
			}
			t.Logf("%s: %d messages, %d connects, %d resent, %d duplicates at the broker", d.ID, n, st.Connects, st.Resent, dups)
		}
		t.Logf("%d messages from %d devices in %v (rate-capped at 1000/s per device)", devices*n, devices, time.Since(start).Round(time.Millisecond))
		if r.overlaps.Load() != 0 {
			t.Fatal("sockets of one identity overlapped")
		}
	})
}

// A device's local subscriptions are mirrored on its cloud session,
// restored after a reconnect, and removed on Unsubscribe; downlinks reach
// that device only.
func TestContractDownlink(t *testing.T) {
	runContract(t, func(t *testing.T, cloud contractCloud) {
		obs := newObserver(t, cloud.url)
		r := newRig(t, cloud.url)
		d1, d2 := testDevice(1), testDevice(2)
		for _, d := range []Device{d1, d2} {
			cloud.register(d.ID, d.Secret)
			r.add(d)
		}
		get := "/" + d1.ID.ProductKey + "/" + d1.ID.DeviceName + "/user/get"
		cmd := "/sys/" + d1.ID.ProductKey + "/" + d1.ID.DeviceName + "/thing/service/+"
		if err := r.m.Subscribe(d1.ID, map[string]byte{get: 1, cmd: 1}); err != nil {
			t.Fatal(err)
		}
		startManager(t, r.m)
		r.waitStatus(d2.ID, "connected", func(st SessionStatus) bool { return st.State == StateConnected })

		probe := 0
		// deliver publishes probes on topic until one reaches the device.
		deliver := func(topic string) {
			t.Helper()
			testutil.Eventually(t, 10*time.Second, func() bool {
				probe++
				want := strconv.Itoa(probe)
				obs.publish(t, topic, want)
				deadline := time.Now().Add(100 * time.Millisecond)
				for time.Now().Before(deadline) {
					for _, m := range r.downlinks() {
						if m.payload == want && m.topic == topic {
							if m.id != d1.ID || m.qos != 1 {
								t.Fatalf("downlink %+v: wrong device or QoS", m)
							}
							return true
						}
					}
					time.Sleep(2 * time.Millisecond)
				}
				return false
			}, "downlink on %s", topic)
		}
		svc := "/sys/" + d1.ID.ProductKey + "/" + d1.ID.DeviceName + "/thing/service/reboot"
		deliver(get)
		deliver(svc)

		st, _ := r.m.Status(d1.ID)
		if st.Subscriptions != 2 {
			t.Fatalf("%d subscriptions, want 2", st.Subscriptions)
		}
		cloud.kick(t, st)
		r.waitStatus(d1.ID, "reconnected", func(s SessionStatus) bool { return s.State == StateConnected && s.Connects == 2 })
		deliver(get) // restored on the new connection
		deliver(svc)

		if err := r.m.Unsubscribe(d1.ID, get); err != nil {
			t.Fatal(err)
		}
		// Once a probe on the remaining filter arrives without its twin on
		// the removed one, the UNSUBSCRIBE has landed; nothing on the
		// removed filter may arrive after that.
		var marker int
		testutil.Eventually(t, 10*time.Second, func() bool {
			probe++
			obs.publish(t, get, "u"+strconv.Itoa(probe))
			obs.publish(t, svc, "c"+strconv.Itoa(probe))
			deadline := time.Now().Add(100 * time.Millisecond)
			for time.Now().Before(deadline) {
				gotU, gotC := false, false
				for _, m := range r.downlinks() {
					gotU = gotU || m.payload == "u"+strconv.Itoa(probe)
					gotC = gotC || m.payload == "c"+strconv.Itoa(probe)
				}
				if gotC {
					marker = probe
					return !gotU
				}
				time.Sleep(2 * time.Millisecond)
			}
			return false
		}, "unsubscribe effective")
		probe++
		obs.publish(t, get, "u"+strconv.Itoa(probe))
		deliver(svc)
		for _, m := range r.downlinks() {
			if n, err := strconv.Atoi(strings.TrimPrefix(m.payload, "u")); err == nil && strings.HasPrefix(m.payload, "u") && n >= marker {
				t.Fatalf("downlink %q on %s after the unsubscribe", m.payload, m.topic)
			}
			if m.id != d1.ID {
				t.Fatalf("device %s received a downlink meant for %s", m.id, d1.ID)
			}
		}
		if st, _ := r.m.Status(d1.ID); st.Subscriptions != 1 {
			t.Fatalf("%d subscriptions after Unsubscribe, want 1", st.Subscriptions)
		}
	})
}

// QoS 0 messages flow and are acknowledged once written.
func TestContractQoS0(t *testing.T) {
	runContract(t, func(t *testing.T, cloud contractCloud) {
		obs := newObserver(t, cloud.url)
		r := newRig(t, cloud.url)
		d := testDevice(7)
		cloud.register(d.ID, d.Secret)
		r.add(d)
		startManager(t, r.m)
		r.waitStatus(d.ID, "connected", func(st SessionStatus) bool { return st.State == StateConnected })
		r.q.appendN(t, d.ID, userTopic(d.ID), 0, 100)
		r.waitStatus(d.ID, "all written", func(st SessionStatus) bool { return st.Sent == 100 })
		testutil.Eventually(t, 10*time.Second, func() bool { return obs.distinct(userTopic(d.ID)) == 100 }, "broker forwarded all")
		checkOrder(t, fmt.Sprint(d.ID), obs.seen(userTopic(d.ID)), 100)
	})
}
