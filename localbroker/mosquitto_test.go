package localbroker_test

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/localbroker"
)

// TestMosquittoClients runs the publish, subscribe and ACL checks with
// Debian's mosquitto_pub and mosquitto_sub, over MQTT 3.1.1 and 5.
func TestMosquittoClients(t *testing.T) {
	pub := testutil.Peer(t, "mosquitto_pub")
	sub := testutil.Peer(t, "mosquitto_sub")
	sock := filepath.Join(t.TempDir(), "admin.sock")
	admin := &adminRecorder{got: make(chan localbroker.AdminRequest, 10)}
	h := startBroker(t, func(c *localbroker.Config) {
		c.Listeners = append(c.Listeners, "unix://"+sock)
		c.Admin = admin
	})
	host, port := h.hostPort(t)
	dev := func(version, clientID, user, pass string) []string {
		return []string{"-h", host, "-p", port, "-V", version, "-i", clientID, "-u", user, "-P", pass}
	}

	for _, version := range []string{"mqttv311", "mqttv5"} {
		t.Run(version, func(t *testing.T) {
			v5 := version == "mqttv5"
			// Inside the namespace: accepted, acknowledged, in the sink.
			out, err := runTool(t, pub, append(dev(version, "mp-"+version, dnA, passA), "-q", "1", "-t", topicA(version), "-m", "hello")...)
			if err != nil {
				t.Fatalf("publish inside the namespace: %v: %s", err, out)
			}
			if m := h.sink.next(t); m.Topic != topicA(version) || string(m.Payload) != "hello" || m.Device != idA || m.QoS != 1 {
				t.Errorf("sink got %+v", m)
			}

			// Outside: 5 gets PUBACK 0x87; 3.1.1 has no negative PUBACK
			// and gets a plain one (a disconnect would make firmware
			// reconnect and resend for ever). Nothing reaches the sink.
			denied := h.b.Stats().PublishesDenied
			out, err = runTool(t, pub, append(dev(version, "mp-"+version, dnA, passA), "-q", "1", "-t", topicB(version), "-m", "x")...)
			if v5 && !strings.Contains(out, "Not authorized") {
				t.Errorf("v5 publish outside the namespace: %v: %s", err, out)
			}
			if !v5 && err != nil {
				t.Errorf("v3.1.1 publish outside the namespace: %v (want it acknowledged and dropped): %s", err, out)
			}
			// Admin topic from a device: likewise.
			out, err = runTool(t, pub, append(dev(version, "mp-"+version, dnA, passA), "-q", "1", "-t", localbroker.AdminRequestTopic, "-m", "x")...)
			if (v5 && !strings.Contains(out, "Not authorized")) || (!v5 && err != nil) {
				t.Errorf("device publish to the admin topic: %v: %s", err, out)
			}
			if n := h.b.Stats().PublishesDenied - denied; n != 2 {
				t.Errorf("PublishesDenied grew by %d, want 2", n)
			}
			if got := h.sink.topics(); len(got) != 0 && got[len(got)-1] != topicA(version) {
				t.Errorf("a denied publish reached the sink: %v", got)
			}

			// Subscriptions outside the namespace are refused.
			for _, filter := range []string{topicB("#"), "#", localbroker.AdminResponseTopic} {
				out, _ = runTool(t, sub, append(dev(version, "ms-"+version, dnA, passA), "-q", "1", "-t", filter, "-C", "1", "-W", "5")...)
				if !strings.Contains(out, "All subscription requests were denied") {
					t.Errorf("subscribe %q: %s", filter, out)
				}
			}

			// Inside: downlink through Deliver reaches mosquitto_sub.
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			var subOut bytes.Buffer
			cmd := exec.CommandContext(ctx, sub, append(dev(version, "ms-"+version, dnA, passA), "-q", "1", "-t", topicA("down/#"), "-C", "1", "-v")...)
			cmd.Stdout, cmd.Stderr = &subOut, &subOut
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			testutil.Eventually(t, 10*time.Second, func() bool {
				err := h.b.Deliver(idA.DeviceID, topicA("down/"+version), []byte("downlink"), 1)
				return err == nil || !(errors.Is(err, localbroker.ErrNotSubscribed) || errors.Is(err, localbroker.ErrNotConnected))
			}, "mosquitto_sub subscribed")
			if err := cmd.Wait(); err != nil {
				t.Fatalf("mosquitto_sub: %v: %s", err, subOut.String())
			}
			if got := strings.TrimSpace(subOut.String()); got != topicA("down/"+version)+" downlink" {
				t.Errorf("mosquitto_sub printed %q", got)
			}

			// Bad credentials are refused.
			out, err = runTool(t, pub, append(dev(version, "mp-"+version, dnA, "wrong"), "-q", "1", "-t", topicA("x"), "-m", "x")...)
			if err == nil || !strings.Contains(strings.ToLower(out), "bad user name or password") {
				t.Errorf("bad password: %v: %s", err, out)
			}

			// The unix-socket admin may publish requests.
			out, err = runTool(t, pub, "--unix", sock, "-V", version, "-i", "ctl-"+version, "-q", "1",
				"-t", localbroker.AdminRequestTopic, "-m", `{"method":"gateway.status"}`)
			if err != nil {
				t.Fatalf("admin request over the unix socket: %v: %s", err, out)
			}
			select {
			case req := <-admin.got:
				if string(req.Payload) != `{"method":"gateway.status"}` {
					t.Errorf("admin request %q", req.Payload)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("admin handler got nothing")
			}
		})
	}

	// MQTT 5: a sink refusal carrying a reason code reaches the client.
	h.sink.setHook(func(context.Context, localbroker.Message) error {
		return localbroker.Reject(localbroker.ReasonQuotaExceeded, errors.New("spool full"))
	})
	out, _ := runTool(t, pub, append(dev("mqttv5", "mp-rej", dnA, passA), "-q", "1", "-t", topicA("rej"), "-m", "x")...)
	if !strings.Contains(out, "Quota exceeded") {
		t.Errorf("v5 publish refused by the sink: %s", out)
	}
}
