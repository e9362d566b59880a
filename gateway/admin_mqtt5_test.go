package gateway_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/edgegw/edgegw/gateway/adminapi"
	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/secrets"
)

// rr runs mosquitto_rr and returns the correlation data and the reply.
func (r *admRig) rr(bin string, args ...string) (corr string, rep adminapi.Reply) {
	t := r.t
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("mosquitto_rr %q: %v: %s", args, err, stderr.String())
	}
	line := strings.TrimRight(string(out), "\n")
	corr, payload, ok := strings.Cut(line, "|")
	if !ok {
		t.Fatalf("mosquitto_rr output %q: no separator", line)
	}
	if err := json.Unmarshal([]byte(payload), &rep); err != nil {
		t.Fatalf("mosquitto_rr reply %q: %v", payload, err)
	}
	return corr, rep
}

// TestAdminMQTT5MosquittoRR drives every method with Debian's mosquitto_rr
// over MQTT 5 (Response Topic and Correlation Data) on the unix socket and
// on TCP with the admin user, and once over MQTT 3.1.1.
func TestAdminMQTT5MosquittoRR(t *testing.T) {
	bin := testutil.Peer(t, "mosquitto_rr")
	r := newAdmRig(t)
	if err := r.sim.AddDevice(admPK, "rr-0001", secrets.NewSecret("Rr-secret-0001")); err != nil {
		t.Fatal(err)
	}
	call := func(i int, req string, tcp bool) (string, adminapi.Reply) {
		corr := fmt.Sprintf("corr-%d", i)
		args := []string{"-V", "mqttv5", "-q", "1", "-W", "15", "-t", adminapi.RequestTopic,
			"-e", fmt.Sprintf("$edgegw/admin/v1/response/rr-%d", i), "-D", "PUBLISH", "correlation-data", corr,
			"-F", "%D|%p", "-m", req}
		if tcp {
			host, port, _ := strings.Cut(r.tcp, ":")
			args = append(args, "-h", host, "-p", port, "-u", "ops", "-P", admAdminPassword)
		} else {
			args = append(args, "--unix", r.sock)
		}
		got, rep := r.rr(bin, args...)
		if got != corr {
			t.Errorf("%s: correlation data %q, want %q", req, got, corr)
		}
		return got, rep
	}
	steps := []struct {
		req  string
		code int
		want string
	}{
		{`{"id":"1","method":"gateway.status"}`, 200, "edgegw"},
		{`{"id":"2","method":"product.add","params":{"productKey":"` + admPK + `","dialect":"aliyun"}}`, 200, "added"},
		{`{"id":"3","method":"product.list"}`, 200, "1 products"},
		{`{"id":"4","method":"device.add","params":{"productKey":"` + admPK + `","deviceName":"rr-0001","deviceSecret":"Rr-secret-0001"}}`, 200, "added"},
		{`{"id":"5","method":"device.get","params":{"productKey":"` + admPK + `","deviceName":"rr-0001"}}`, 200, "device " + admPK + "/rr-0001"},
		{`{"id":"6","method":"device.list","params":{"state":"ready"}}`, 200, "1 devices"},
		{`{"id":"7","method":"device.update","params":{"productKey":"` + admPK + `","deviceName":"rr-0001","disabled":true}}`, 200, "disabled"},
		{`{"id":"8","method":"device.update","params":{"productKey":"` + admPK + `","deviceName":"rr-0001","disabled":false}}`, 200, "enabled"},
		{`{"id":"9","method":"queue.stats"}`, 200, "messages queued"},
		{`{"id":"10","method":"queue.purge","params":{"productKey":"` + admPK + `","deviceName":"rr-0001"}}`, 200, "purged"},
		{`{"id":"11","method":"device.import","params":{"rows":[{"line":2,"productKey":"` + admPK + `","deviceName":"rr-0002","deviceSecret":"Rr-secret-0002"}]}}`, 200, "1 added"},
		{`{"id":"12","method":"device.remove","params":{"productKey":"` + admPK + `","deviceName":"rr-0002","spool":"discard"}}`, 200, "removed"},
		{`{"id":"13","method":"device.remove","params":{"productKey":"` + admPK + `","deviceName":"rr-0001","spool":"drain","timeout":"10s"}}`, 200, "removed"},
		{`{"id":"14","method":"product.remove","params":{"productKey":"` + admPK + `"}}`, 200, "removed"},
		{`{"id":"15","method":"device.get","params":{"productKey":"` + admPK + `","deviceName":"rr-0001"}}`, 404, "not found"},
		{`{"id":"16","method":"device.add","params":{"productKey":"` + admPK + `","deviceName":"rr-0001","deviceSecret":"a b"}}`, 404, "product"},
		{`{"id":"17",`, 400, "invalid JSON"},
	}
	for i, s := range steps {
		_, rep := call(i, s.req, i%2 == 1)
		if rep.Code != s.code || !strings.Contains(rep.Message, s.want) {
			t.Errorf("%s: got %d %q, want %d containing %q", s.req, rep.Code, rep.Message, s.code, s.want)
		}
		if i == 3 {
			testutil.Eventually(t, 10*time.Second, func() bool { return r.sim.Connected(admPK, "rr-0001") }, "the session of the device added over MQTT 5")
		}
	}
	testutil.Eventually(t, 10*time.Second, func() bool { return !r.sim.Connected(admPK, "rr-0001") }, "the session of the removed device to end")

	// MQTT 3.1.1 with mosquitto_rr: no Response Topic, so the reply comes
	// on the shared response topic.
	out, err := exec.CommandContext(t.Context(), bin, "-V", "mqttv311", "-q", "1", "-W", "15", "--unix", r.sock,
		"-t", adminapi.RequestTopic, "-e", adminapi.ResponseTopic,
		"-m", `{"id":"v311","method":"gateway.status"}`).Output()
	if err != nil {
		t.Fatalf("mosquitto_rr 3.1.1: %v", err)
	}
	var rep adminapi.Reply
	if err := json.Unmarshal(out, &rep); err != nil || rep.Code != 200 || string(rep.ID) != `"v311"` {
		t.Fatalf("mosquitto_rr 3.1.1 reply %s: %v", out, err)
	}
}
