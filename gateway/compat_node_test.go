package gateway_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/secrets"
)

// nodeSDKDir holds device.js and the package.json/package-lock.json pinning
// the vendor's Node SDK; CI installs it with `npm ci --prefix` this
// directory (.ci/run). EDGEGW_NODE_MODULES points elsewhere.
const nodeSDKDir = "testdata/firmware/node"

// nodeDevice is the vendor's Node SDK running device.js as a child
// process.
type nodeDevice struct {
	t     *testing.T
	stdin io.WriteCloser

	mu      sync.Mutex
	changed chan struct{}
	events  []map[string]any
	used    []bool
	exited  error
	done    bool
}

// nodeSDK returns the node binary and the node_modules directory holding
// the vendor's SDK, or skips (fails with EDGEGW_REQUIRE_PEERS=1) when
// either is missing.
func nodeSDK(t *testing.T) (node, modules string) {
	t.Helper()
	required := os.Getenv(testutil.RequirePeersEnv) == "1"
	if _, err := exec.LookPath("node"); err != nil && !required {
		t.Skip("node not found: install Node.js (Debian: apt-get install nodejs npm) to run the vendor's Node SDK")
	}
	node = testutil.Peer(t, "node")
	modules = os.Getenv("EDGEGW_NODE_MODULES")
	if modules == "" {
		abs, err := filepath.Abs(filepath.Join(nodeSDKDir, "node_modules"))
		if err != nil {
			t.Fatal(err)
		}
		modules = abs
	}
	if _, err := os.Stat(filepath.Join(modules, "alibabacloud-iot-device-sdk", "package.json")); err != nil {
		msg := fmt.Sprintf("the vendor's Node SDK is not installed in %s: run `npm ci --prefix gateway/%s` (or set EDGEGW_NODE_MODULES)", modules, nodeSDKDir)
		if required {
			t.Fatalf("%s and %s=1", msg, testutil.RequirePeersEnv)
		}
		t.Skip(msg)
	}
	return node, modules
}

// startNodeDevice runs device.js for device d against the gateway's local
// listener.
func startNodeDevice(t *testing.T, node, modules, brokerAddr string, d compatDevice) *nodeDevice {
	t.Helper()
	script, err := filepath.Abs(filepath.Join(nodeSDKDir, "device.js"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, node, script)
	cmd.Env = append(os.Environ(), "NODE_PATH="+modules, "EDGEGW_BROKER_URL=mqtt://"+brokerAddr,
		"EDGEGW_PK="+d.pk, "EDGEGW_DN="+d.dn, "EDGEGW_DS="+d.secret.Reveal())
	stderr := &testutil.SyncBuffer{}
	cmd.Stderr = stderr
	t.Cleanup(func() {
		if t.Failed() && stderr.String() != "" {
			t.Logf("node stderr:\n%s", stderr.String())
		}
	})
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	n := &nodeDevice{t: t, stdin: stdin, changed: make(chan struct{})}
	exited := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			var ev map[string]any
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				t.Logf("node (not JSON): %s", sc.Bytes())
				continue
			}
			n.mu.Lock()
			n.events = append(n.events, ev)
			n.used = append(n.used, false)
			close(n.changed)
			n.changed = make(chan struct{})
			n.mu.Unlock()
		}
		err := cmd.Wait()
		n.mu.Lock()
		n.done, n.exited = true, err
		close(n.changed)
		n.changed = make(chan struct{})
		n.mu.Unlock()
		close(exited)
	}()
	t.Cleanup(func() {
		cancel() // kills node
		<-exited
	})
	return n
}

// next returns the first event not matched yet for which match is true,
// within 15 s.
func (n *nodeDevice) next(what string, match func(ev map[string]any) bool) map[string]any {
	n.t.Helper()
	deadline := time.After(15 * time.Second)
	for {
		n.mu.Lock()
		for i, ev := range n.events {
			if !n.used[i] && match(ev) {
				n.used[i] = true
				n.mu.Unlock()
				return ev
			}
		}
		done, err, ch := n.done, n.exited, n.changed
		n.mu.Unlock()
		if done {
			n.t.Fatalf("waiting for %s: the node device exited: %v", what, err)
		}
		select {
		case <-ch:
		case <-deadline:
			n.t.Fatalf("waiting for %s: nothing within 15 s; events: %v", what, n.all())
		}
	}
}

func (n *nodeDevice) all() []map[string]any {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.events)
}

func (n *nodeDevice) send(line string) {
	n.t.Helper()
	if _, err := io.WriteString(n.stdin, line+"\n"); err != nil {
		n.t.Fatalf("to the node device: %v", err)
	}
}

func eventIs(name string) func(map[string]any) bool {
	return func(ev map[string]any) bool { return ev["event"] == name }
}

// TestNodeSDKDevice runs the vendor's Node SDK (alibabacloud-iot-device-sdk
// 1.2.8) unmodified as a device of the gateway: its own CONNECT and
// SUBSCRIBEs, a property post and its reply, a property set, an
// asynchronous service call, a synchronous one over RRPC and a shadow
// notice from the cloud simulator.
func TestNodeSDKDevice(t *testing.T) {
	node, modules := nodeSDK(t)
	d := compatDevice{dialect: secrets.Aliyun, pk: "a1NodeProd1", dn: "node-dev-1", secret: secrets.NewSecret("node-secret-0123456789abcdef")}
	r := newCompatRig(t, d, nil)
	n := startNodeDevice(t, node, modules, r.local, d)

	sdk := n.next("the SDK's connect options", eventIs("sdk"))
	// docs/protocol.md §9: <id>|securemode=3,signmethod=hmacsha1,timestamp=<now>,lan=NodeJS,_v=1.2.8|
	cid := regexp.MustCompile(`^` + regexp.QuoteMeta(d.pk+"&"+d.dn) + `\|securemode=3,signmethod=hmacsha1,timestamp=\d{13},lan=NodeJS,_v=1\.2\.8\|$`)
	if id, _ := sdk["clientId"].(string); !cid.MatchString(id) || sdk["version"] != "1.2.8" || sdk["keepalive"] != 60.0 || sdk["clean"] != false {
		t.Errorf("the SDK connects with %v, want SDK 1.2.8, clientId like %s, keepalive 60, clean false", sdk, cid)
	}
	n.next("connect", eventIs("connect"))

	// The SDK's preset subscriptions (QoS 1) and onService's (QoS 0), one
	// SUBSCRIBE per filter, the last preset one is the RRPC request filter:
	// all granted.
	sys := "/sys/" + d.pk + "/" + d.dn + "/"
	var filters []string
	for !slices.Contains(filters, sys+"rrpc/request/+") || !slices.Contains(filters, sys+"thing/service/Toggle") {
		ev := n.next("the SDK's SUBSCRIBEs", eventIs("subscribe"))
		for _, f := range ev["filters"].([]any) {
			filters = append(filters, f.([]any)[0].(string))
		}
	}
	t.Logf("Node SDK subscribed: %v", filters)
	for range filters {
		ack := n.next("a SUBACK", eventIs("suback"))
		for _, g := range ack["granted"].([]any) {
			if g.(float64) > 1 {
				t.Errorf("SUBACK %v, want every filter granted", ack)
			}
		}
	}
	for _, f := range []string{sys + "thing/event/property/post_reply", sys + "thing/service/property/set", "/shadow/get/" + d.pk + "/" + d.dn} {
		if !slices.Contains(filters, f) {
			t.Errorf("the SDK did not subscribe %s", f)
		}
	}
	testutil.Eventually(t, 10*time.Second, func() bool {
		have := r.sim.Subscriptions(d.pk, d.dn)
		return slices.Contains(have, sys+"thing/event/property/post_reply") && slices.Contains(have, sys+"thing/service/Toggle") &&
			slices.Contains(have, sys+"rrpc/request/+") && slices.Contains(have, "/shadow/get/"+d.pk+"/"+d.dn)
	}, "the SDK's subscriptions mirrored on the cloud session")

	// A property post and the cloud's reply.
	n.send(`post {"LightSwitch":1}`)
	if rep := n.next("post_reply", eventIs("post_reply")); rep["code"] != 200.0 {
		t.Errorf("post_reply %v, want code 200", rep)
	}
	// Property set: the SDK hands it to onProps, which reports the values.
	set := sys + "thing/service/property/set"
	if err := r.sim.Publish(d.pk, d.dn, set, []byte(`{"method":"thing.service.property.set","id":"200","params":{"LightSwitch":0},"version":"1.0.0"}`), 0); err != nil {
		t.Fatal(err)
	}
	if ev := n.next("props", eventIs("props")); ev["id"] != "200" {
		t.Errorf("onProps got %v", ev)
	}
	if rep := n.next("post_reply of the reported set", eventIs("post_reply")); rep["code"] != 200.0 {
		t.Errorf("post_reply %v, want code 200", rep)
	}
	// Asynchronous service call, answered on …/Toggle_reply.
	if err := r.sim.Publish(d.pk, d.dn, sys+"thing/service/Toggle", []byte(`{"method":"thing.service.Toggle","id":"201","params":{},"version":"1.0.0"}`), 0); err != nil {
		t.Fatal(err)
	}
	if ev := n.next("service call", eventIs("service")); ev["id"] != "201" || ev["sync"] != false {
		t.Errorf("onService got %v", ev)
	}
	testutil.Eventually(t, 10*time.Second, func() bool {
		for _, rec := range r.sim.MessagesFor(d.pk, d.dn) {
			if rec.Topic == sys+"thing/service/Toggle_reply" && strings.Contains(string(rec.Payload), `"201"`) {
				return true
			}
		}
		return false
	}, "the service reply in the cloud")
	// Synchronous call over the system RRPC topic.
	rep, err := r.sim.RRPC(t.Context(), d.pk, d.dn, sys+"rrpc/request", []byte(`{"method":"thing.service.Toggle","id":"202","params":{"sync":true},"version":"1.0.0"}`), 0)
	if err != nil {
		t.Fatalf("RRPC: %v", err)
	}
	if !strings.Contains(string(rep.Payload), `"202"`) || !strings.HasPrefix(rep.Topic, sys+"rrpc/response/") {
		t.Errorf("RRPC reply %s on %s", rep.Payload, rep.Topic)
	}
	// A shadow notice.
	shadow := "/shadow/get/" + d.pk + "/" + d.dn
	if err := r.sim.Publish(d.pk, d.dn, shadow, []byte(`{"method":"control","payload":{"state":{"desired":{"LightSwitch":1}},"metadata":{}},"version":2,"timestamp":1700000000}`), 0); err != nil {
		t.Fatal(err)
	}
	n.next("shadow", eventIs("shadow"))

	// Nothing the device published came back to it, and the connection
	// never dropped.
	published := map[string]bool{}
	for _, ev := range n.all() {
		if ev["event"] == "publish" {
			published[fmt.Sprint(ev["topic"], " ", ev["payload"])] = true
		}
	}
	for _, ev := range n.all() {
		switch ev["event"] {
		case "message":
			if published[fmt.Sprint(ev["topic"], " ", ev["payload"])] {
				t.Errorf("the device got its own publish back: %v", ev)
			}
		case "reconnect", "close", "offline", "error":
			t.Errorf("the SDK reported %v", ev)
		}
	}
	if c := r.metric("edgegw_broker_connects_total"); c != 1 {
		t.Errorf("local broker accepted %v connections, want 1", c)
	}
	if st := r.sim.Stats(); st.ConnectsAccepted != 1 || st.PermissionRefused != 0 {
		t.Errorf("cloud: %d connects (want 1), %d refused topics (want 0)", st.ConnectsAccepted, st.PermissionRefused)
	}
}
