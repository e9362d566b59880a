package cloudsim_test

import (
	"bufio"
	"context"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink/cloudsim"
)

func hostPortArgs(t *testing.T, addr string) []string {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return []string{"-h", host, "-p", port}
}

// mosquittoPub runs mosquitto_pub once and returns its combined output
// and error.
func mosquittoPub(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, testutil.Peer(t, "mosquitto_pub"), args...).CombinedOutput()
	return string(out), err
}

func credArgs(cr secrets.Credentials) []string {
	return []string{"-i", cr.ClientID, "-u", cr.Username, "-P", cr.Password.Reveal()}
}

// TestMosquittoClients drives the simulator with Debian's mosquitto_pub
// and mosquitto_sub: signed credentials over TCP and TLS, refusals with
// the right code, and mosquitto_sub as the observer.
func TestMosquittoClients(t *testing.T) {
	subPath := testutil.Peer(t, "mosquitto_sub")
	testutil.Peer(t, "mosquitto_pub")
	sim, _ := aliyunSim(t)
	pki := pkiOf(t, sim)

	// mosquitto_sub as observer.
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	sub := exec.CommandContext(ctx, subPath, append(hostPortArgs(t, sim.Addr(cloudsim.TCP)),
		"-u", observerUser, "-P", observerPass, "-i", "mosquitto-observer", "-t", "#", "-v", "-V", "mqttv311")...)
	stdout, err := sub.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := sub.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = sub.Wait() })
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	waitLine := func(pred func(string) bool, what string) {
		t.Helper()
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("mosquitto_sub exited before %s", what)
				}
				if pred(l) {
					return
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("mosquitto_sub: no %s within 10 s", what)
			}
		}
	}
	// mosquitto_sub flushes message lines but not its debug output, so
	// wait for the subscription by publishing probes until one shows up.
	waitStats(t, sim, "the observer", func(s cloudsim.Stats) bool { return s.ObserverConnects == 1 })
	prober := aliTCP(t, sim, aliDN2, aliSecret2)
	probeTopic := userTopic(aliDN2, "probe")
	probed := false
	for deadline := time.Now().Add(10 * time.Second); !probed && time.Now().Before(deadline); {
		mustPublish(t, prober, probeTopic, 0, "probe")
		select {
		case l := <-lines:
			probed = l == probeTopic+" probe"
		case <-time.After(50 * time.Millisecond):
		}
	}
	if !probed {
		t.Fatal("mosquitto_sub did not receive a probe within 10 s")
	}
	prober.Disconnect(20)
	waitStats(t, sim, "the prober gone", func(s cloudsim.Stats) bool { return s.Connected == 0 })
	probes := len(sim.Messages())

	topic := userTopic(aliDN, "data")
	t.Run("publish over tcp", func(t *testing.T) {
		cr := sign(t, secrets.Aliyun, aliPK, aliDN, aliSecret, 3, secrets.HMACSHA1)
		out, err := mosquittoPub(t, append(append(hostPortArgs(t, sim.Addr(cloudsim.TCP)), credArgs(cr)...),
			"-k", "300", "-q", "1", "-t", topic, "-m", "from-mosquitto-tcp", "-V", "mqttv311")...)
		if err != nil {
			t.Fatalf("mosquitto_pub: %v: %s", err, out)
		}
		waitLine(func(l string) bool { return l == topic+" from-mosquitto-tcp" }, "the TCP message")
	})
	t.Run("publish over tls", func(t *testing.T) {
		cr := sign(t, secrets.Aliyun, aliPK, aliDN, aliSecret, 2, secrets.HMACMD5)
		out, err := mosquittoPub(t, append(append(hostPortArgs(t, sim.Addr(cloudsim.TLS)), credArgs(cr)...),
			"--cafile", pki.CAFile, "-k", "300", "-q", "1", "-t", topic, "-m", "from-mosquitto-tls", "-V", "mqttv31")...)
		if err != nil {
			t.Fatalf("mosquitto_pub: %v: %s", err, out)
		}
		waitLine(func(l string) bool { return l == topic+" from-mosquitto-tls" }, "the TLS message")
	})
	recs := sim.Messages()[probes:]
	if len(recs) != 2 || recs[1].Transport != cloudsim.TLS || string(recs[1].Payload) != "from-mosquitto-tls" {
		t.Errorf("records %+v", recs)
	}

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"wrong secret", credArgs(sign(t, secrets.Aliyun, aliPK, aliDN, "wrong-secret", 3, "")), "not authorised"},
		{"unknown device", credArgs(sign(t, secrets.Aliyun, aliPK, "ghost001", aliSecret, 3, "")), "not authorised"},
		{"keepalive too short", append(credArgs(sign(t, secrets.Aliyun, aliPK, aliDN, aliSecret, 3, "")), "-k", "10"), "unavailable"},
		{"securemode=2 on tcp", credArgs(sign(t, secrets.Aliyun, aliPK, aliDN, aliSecret, 2, "")), "unavailable"},
		{"malformed username", []string{"-i", "x|securemode=3|", "-u", "nobody", "-P", "pw"}, "bad user name or password"},
	} {
		t.Run("refused: "+tc.name, func(t *testing.T) {
			args := append(hostPortArgs(t, sim.Addr(cloudsim.TCP)), tc.args...)
			if !containsArg(tc.args, "-k") {
				args = append(args, "-k", "300")
			}
			out, err := mosquittoPub(t, append(args, "-t", topic, "-m", "nope")...)
			if err == nil {
				t.Fatalf("mosquitto_pub succeeded: %s", out)
			}
			if !strings.Contains(strings.ToLower(out), tc.want) {
				t.Errorf("mosquitto_pub said %q, want %q", out, tc.want)
			}
		})
	}
	if n := len(sim.Messages()) - probes; n != 2 {
		t.Errorf("%d records after refusals, want 2", n)
	}
}

func containsArg(args []string, a string) bool {
	for _, x := range args {
		if x == a {
			return true
		}
	}
	return false
}
