package uplink

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/edgegw/edgegw/internal/testutil"
)

// mosquittoCloud is Debian's mosquitto as a plain third-party broker: it
// accepts any credentials and knows nothing of the clouds' signatures.
type mosquittoCloud struct {
	url string
	cmd *exec.Cmd
	out *testutil.SyncBuffer
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func startMosquitto(t testing.TB) *mosquittoCloud {
	t.Helper()
	bin := testutil.Peer(t, "mosquitto")
	dir := t.TempDir()
	var lastErr string
	for range 5 { // the free port may be taken between probe and bind
		port := freePort(t)
		conf := filepath.Join(dir, "mosquitto.conf")
		body := fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\nlog_type error\nlog_type warning\n", port)
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		out := &testutil.SyncBuffer{}
		cmd := exec.Command(bin, "-c", conf)
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatalf("start mosquitto: %v", err)
		}
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		deadline := time.Now().Add(5 * time.Second)
		up := false
		for time.Now().Before(deadline) {
			select {
			case <-exited:
				deadline = time.Time{}
				continue
			default:
			}
			if c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond); err == nil {
				c.Close()
				up = true
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if up {
			t.Cleanup(func() {
				_ = cmd.Process.Kill()
				<-exited
				if t.Failed() {
					t.Logf("mosquitto output:\n%s", out.String())
				}
			})
			return &mosquittoCloud{url: "tcp://" + addr, cmd: cmd, out: out}
		}
		_ = cmd.Process.Kill()
		<-exited
		lastErr = out.String()
	}
	t.Fatalf("mosquitto did not start: %s", lastErr)
	return nil
}

// observer is a plain MQTT client subscribed to everything: it sees what
// the cloud received, in order, and publishes downlinks.
type observer struct {
	client mqtt.Client
	mu     sync.Mutex
	topics map[string][]uint64
}

func newObserver(t testing.TB, url string) *observer {
	t.Helper()
	o := &observer{topics: make(map[string][]uint64)}
	opts := mqtt.NewClientOptions().AddBroker(url).
		SetClientID(fmt.Sprintf("observer-%d", time.Now().UnixNano())).
		SetUsername(observerUser).SetPassword(observerPassword).
		SetProtocolVersion(4).SetAutoReconnect(false).SetCleanSession(true)
	o.client = mqtt.NewClient(opts)
	if tok := o.client.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("observer connect: %v", tok.Error())
	}
	tok := o.client.Subscribe("#", 1, func(_ mqtt.Client, m mqtt.Message) {
		seq, err := strconv.ParseUint(string(m.Payload()), 10, 64)
		if err != nil {
			return
		}
		o.mu.Lock()
		o.topics[m.Topic()] = append(o.topics[m.Topic()], seq)
		o.mu.Unlock()
	})
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("observer subscribe: %v", tok.Error())
	}
	t.Cleanup(func() { o.client.Disconnect(50) })
	return o
}

func (o *observer) seen(topic string) []uint64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]uint64(nil), o.topics[topic]...)
}

func (o *observer) distinct(topic string) int {
	seen := map[uint64]bool{}
	for _, s := range o.seen(topic) {
		seen[s] = true
	}
	return len(seen)
}

func (o *observer) publish(t testing.TB, topic, payload string) {
	t.Helper()
	tok := o.client.Publish(topic, 1, false, payload)
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("observer publish: %v", tok.Error())
	}
}

// kickByTakeover connects a client with the session's MQTT client id: a
// standard broker then disconnects the session (MQTT-3.1.4-2).
func kickByTakeover(t testing.TB, url, clientID string) {
	t.Helper()
	opts := mqtt.NewClientOptions().AddBroker(url).SetClientID(clientID).
		SetUsername(observerUser).SetProtocolVersion(4).SetAutoReconnect(false)
	c := mqtt.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("takeover connect: %v", tok.Error())
	}
	c.Disconnect(50)
}
