package uplink

import (
	"crypto/tls"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink/cloudsim"
)

const (
	actEnOSPK      = "actEnosPK1"
	actEnOSSecret  = "enosProductSecret-0001"
	actAliPK       = "a1ActPK0001"
	actAliPSecret  = "aliProductSecret-0001"
	actWrongSecret = "notTheProductSecret-9"
)

// memActivation is an ActivationStore in memory. It records every call and
// can fail the first failStores stores.
type memActivation struct {
	mu         sync.Mutex
	stored     map[secrets.DeviceID]secrets.Secret
	sources    map[secrets.DeviceID][]string
	failed     map[secrets.DeviceID]string
	storeCalls int
	failStores int
	onStore    func(id secrets.DeviceID) // called before a store succeeds
}

func newMemActivation() *memActivation {
	return &memActivation{
		stored:  map[secrets.DeviceID]secrets.Secret{},
		sources: map[secrets.DeviceID][]string{},
		failed:  map[secrets.DeviceID]string{},
	}
}

func (a *memActivation) DeviceSecret(id secrets.DeviceID) (secrets.Secret, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.stored[id], nil
}

func (a *memActivation) StoreDeviceSecret(id secrets.DeviceID, secret secrets.Secret, source string) error {
	a.mu.Lock()
	a.storeCalls++
	if a.storeCalls <= a.failStores {
		a.mu.Unlock()
		return errTest
	}
	hook := a.onStore
	a.mu.Unlock()
	if hook != nil {
		hook(id)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.stored[id] = secret
	a.sources[id] = append(a.sources[id], source)
	return nil
}

func (a *memActivation) ActivationFailed(id secrets.DeviceID, reason string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.failed[id] = reason
	return nil
}

func (a *memActivation) get(id secrets.DeviceID) (secrets.Secret, []string, string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.stored[id], append([]string(nil), a.sources[id]...), a.failed[id]
}

// startActSim starts a cloud simulator for dialect d with one product
// (productSecret ps) and the given devices (zero secret: not activated).
// tlsPKI, when set, adds a TLS listener.
func startActSim(t *testing.T, d secrets.Dialect, pk, ps string, tlsPKI *testutil.PKI, devs map[string]string, mod func(*cloudsim.Config)) *cloudsim.Sim {
	t.Helper()
	cfg := cloudsim.Config{
		Dialect: d, Listen: "127.0.0.1:0", DeviceRate: cloudsim.RateUnlimited,
		Products: []cloudsim.Product{{ProductKey: pk, Secret: secrets.NewSecret(ps)}},
	}
	for dn, sec := range devs {
		cfg.Devices = append(cfg.Devices, cloudsim.Device{ProductKey: pk, DeviceName: dn, Secret: secrets.NewSecret(sec)})
	}
	if tlsPKI != nil {
		cfg.TLSListen, cfg.TLSConfig = "127.0.0.1:0", tlsPKI.ServerTLS(tls.NoClientCert)
	}
	if mod != nil {
		mod(&cfg)
	}
	sim, err := cloudsim.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := sim.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	return sim
}

func actDevice(d secrets.Dialect, pk, dn, ps string, store ActivationStore) Device {
	return Device{
		ID: secrets.DeviceID{ProductKey: pk, DeviceName: dn}, Dialect: d,
		ProductSecret: secrets.NewSecret(ps), Activation: store,
	}
}

// seqsOf returns the numeric payloads the cloud recorded for a device on
// its user topic, and the clientIds they came with.
func seqsOf(t *testing.T, sim *cloudsim.Sim, id secrets.DeviceID, topic string) ([]uint64, []string) {
	t.Helper()
	var seqs []uint64
	var cids []string
	for _, rec := range sim.MessagesFor(id.ProductKey, id.DeviceName) {
		if rec.Topic != topic {
			continue
		}
		n, err := strconv.ParseUint(string(rec.Payload), 10, 64)
		if err != nil {
			t.Fatalf("payload %q", rec.Payload)
		}
		seqs = append(seqs, n)
		cids = append(cids, rec.ClientID)
	}
	return seqs, cids
}

// TestActivationEnOS: a device with only the productSecret activates with
// securemode=3, stores the issued secret while the activation connection
// is still open and before it replies, then logs in with securemode=2 and
// delivers what was queued while it waited.
func TestActivationEnOS(t *testing.T) {
	sim := startActSim(t, secrets.EnOS, actEnOSPK, actEnOSSecret, nil, map[string]string{"meter01": ""}, nil)
	r := newRig(t, "tcp://"+sim.Addr(cloudsim.TCP))
	store := newMemActivation()
	dev := actDevice(secrets.EnOS, actEnOSPK, "meter01", actEnOSSecret, store)
	var atStore struct {
		connected bool
		messages  int
	}
	store.onStore = func(id secrets.DeviceID) {
		atStore.connected = sim.Connected(id.ProductKey, id.DeviceName)
		atStore.messages = len(sim.MessagesFor(id.ProductKey, id.DeviceName))
	}
	const queued = 12
	// Published while awaiting activation, on an EnOS topic (EnOS has no
	// Alibaba-style custom topics; cloudsim refuses them on EnOS sessions).
	points := "/sys/" + dev.ID.ProductKey + "/" + dev.ID.DeviceName + "/thing/measurepoint/post"
	r.q.appendN(t, dev.ID, points, 1, queued)
	r.add(dev)
	startManager(t, r.m)

	r.waitStatus(dev.ID, "queued messages delivered", func(st SessionStatus) bool { return st.Sent == queued })
	issued := sim.Issued(actEnOSPK, "meter01")
	stored, sources, failed := store.get(dev.ID)
	if len(issued) != 1 || !stored.Equal(issued[0]) {
		t.Fatalf("cloud issued %d secrets; stored secret equals the issued one: %t", len(issued), len(issued) == 1 && stored.Equal(issued[0]))
	}
	if fmt.Sprint(sources) != "["+SourceEnOSActivate+"]" || failed != "" {
		t.Errorf("store sources %v, failure %q", sources, failed)
	}
	if !atStore.connected || atStore.messages != 0 {
		t.Errorf("at store time: activation connection up %t, messages recorded %d; want the store before the reply and the disconnect",
			atStore.connected, atStore.messages)
	}
	recs := sim.MessagesFor(actEnOSPK, "meter01")
	reply := "/ext/session/" + actEnOSPK + "/meter01/thing/activate/info_reply"
	if len(recs) == 0 || recs[0].Topic != reply || !strings.Contains(string(recs[0].Payload), `"code":200`) ||
		!strings.Contains(recs[0].ClientID, "securemode=3") {
		t.Fatalf("first cloud record %+v, want the activation reply on the securemode=3 connection", recs[:min(len(recs), 1)])
	}
	seqs, cids := seqsOf(t, sim, dev.ID, points)
	if dups := checkOrder(t, "cloud", seqs, queued); dups != 0 {
		t.Errorf("%d duplicates", dups)
	}
	for _, cid := range cids {
		if !strings.Contains(cid, "securemode=2") {
			t.Fatalf("data sent on clientId %q, want securemode=2", cid)
		}
	}
	if st := sim.Stats(); st.Activations != 1 || len(st.ConnectsRefused) != 0 {
		t.Errorf("sim: %d activations, refusals %v", st.Activations, st.ConnectsRefused)
	}
	r.mu.Lock()
	states := fmt.Sprint(r.states[dev.ID])
	r.mu.Unlock()
	if !strings.HasPrefix(states, "[activating connecting connected") {
		t.Errorf("state sequence %s, want activating, connecting, connected", states)
	}
}

// TestActivationAliyunTLS: Alibaba MQTT dynamic registration over TLS for
// several devices at once, with the cloud closing each registration
// connection right after the secret (the message must not be lost to the
// close), then normal securemode=2 logins.
func TestActivationAliyunTLS(t *testing.T) {
	pki := testutil.NewPKI(t)
	devs := map[string]string{}
	for i := range 5 {
		devs[fmt.Sprintf("reg%02d", i)] = ""
	}
	sim := startActSim(t, secrets.Aliyun, actAliPK, actAliPSecret, pki, devs, func(c *cloudsim.Config) {
		c.RegisterLinger = time.Microsecond
	})
	r := newRig(t, "tls://"+sim.Addr(cloudsim.TLS), func(c *ManagerConfig) { c.Endpoint.CAPEM = pki.CAPEM })
	store := newMemActivation()
	var ids []secrets.DeviceID
	for dn := range devs {
		dev := actDevice(secrets.Aliyun, actAliPK, dn, actAliPSecret, store)
		ids = append(ids, dev.ID)
		r.q.appendN(t, dev.ID, userTopic(dev.ID), 1, 3)
		r.add(dev)
	}
	startManager(t, r.m)
	for _, id := range ids {
		r.waitStatus(id, "queued messages delivered", func(st SessionStatus) bool { return st.Sent == 3 })
		issued := sim.Issued(id.ProductKey, id.DeviceName)
		stored, sources, _ := store.get(id)
		if len(issued) != 1 || !stored.Equal(issued[0]) || fmt.Sprint(sources) != "["+SourceAliyunRegister+"]" {
			t.Errorf("%s: %d issued, stored equals the issued one: %t, sources %v", id, len(issued), len(issued) > 0 && stored.Equal(issued[len(issued)-1]), sources)
		}
		seqs, cids := seqsOf(t, sim, id, userTopic(id))
		checkOrder(t, id.String(), seqs, 3)
		for _, cid := range cids {
			if !strings.Contains(cid, "securemode=2") || strings.Contains(cid, "authType") {
				t.Errorf("%s: data sent on clientId %q, want a normal securemode=2 login", id, cid)
			}
		}
	}
	for _, d := range sim.Devices() {
		if !d.Activated || d.Issued != 1 {
			t.Errorf("sim device %s: activated %t, issued %d", d.DeviceName, d.Activated, d.Issued)
		}
	}
	if st := sim.Stats(); st.Activations != int64(len(devs)) || st.ProtocolErrors != 0 {
		t.Errorf("sim: %d activations (want %d), %d protocol errors", st.Activations, len(devs), st.ProtocolErrors)
	}
}

// TestActivationStoreFailureKeepsSecret: while storing the issued secret
// fails, the session keeps it and retries; it does not register again.
func TestActivationStoreFailureKeepsSecret(t *testing.T) {
	pki := testutil.NewPKI(t)
	sim := startActSim(t, secrets.Aliyun, actAliPK, actAliPSecret, pki, map[string]string{"flaky01": ""}, nil)
	r := newRig(t, "tls://"+sim.Addr(cloudsim.TLS), func(c *ManagerConfig) { c.Endpoint.CAPEM = pki.CAPEM })
	store := newMemActivation()
	store.failStores = 3
	dev := actDevice(secrets.Aliyun, actAliPK, "flaky01", actAliPSecret, store)
	r.add(dev)
	startManager(t, r.m)
	st := r.waitStatus(dev.ID, "connected", func(st SessionStatus) bool { return st.State == StateConnected })
	if !strings.Contains(st.LastError, "store issued device secret") || strings.Contains(st.LastError, sim.Issued(actAliPK, "flaky01")[0].Reveal()) {
		t.Errorf("last error %q, want the store failure (without the secret)", st.LastError)
	}
	store.mu.Lock()
	calls := store.storeCalls
	store.mu.Unlock()
	issued := sim.Issued(actAliPK, "flaky01")
	stored, _, _ := store.get(dev.ID)
	if calls != 4 || len(issued) != 1 || !stored.Equal(issued[0]) {
		t.Errorf("%d store calls (want 4), %d issued (want 1), stored equals issued: %t", calls, len(issued), len(issued) == 1 && stored.Equal(issued[0]))
	}
}

// TestActivationUsesStoredSecret: a device whose store already holds a
// secret does not activate.
func TestActivationUsesStoredSecret(t *testing.T) {
	sim := startActSim(t, secrets.EnOS, actEnOSPK, actEnOSSecret, nil, map[string]string{"meter02": "the-device-secret-02"}, nil)
	r := newRig(t, "tcp://"+sim.Addr(cloudsim.TCP))
	store := newMemActivation()
	dev := actDevice(secrets.EnOS, actEnOSPK, "meter02", actEnOSSecret, store)
	store.stored[dev.ID] = secrets.NewSecret("the-device-secret-02")
	r.add(dev)
	startManager(t, r.m)
	st := r.waitStatus(dev.ID, "connected", func(st SessionStatus) bool { return st.State == StateConnected })
	if !strings.Contains(st.ClientID, "securemode=2") || st.Attempts != 1 {
		t.Errorf("clientId %q after %d attempts, want one securemode=2 login", st.ClientID, st.Attempts)
	}
	if s := sim.Stats(); s.Activations != 0 {
		t.Errorf("%d activations", s.Activations)
	}
}

// TestActivationRefused: a refused activation puts the device in
// activation-failed with a reason and is never retried on its own (the
// parked session holds no timer, however far the clock moves); an update
// with a working productSecret starts it again.
func TestActivationRefused(t *testing.T) {
	pki := testutil.NewPKI(t)
	tests := []struct {
		name       string
		dialect    secrets.Dialect
		tls        bool
		simSecret  string // the device's secret in the cloud ("" = not activated)
		gwPSecret  string // the productSecret the gateway has
		wantReason string
		wantDials  int
		fixable    bool // an Update with the right productSecret activates it
	}{
		{"enos already activated", secrets.EnOS, false, "activated-elsewhere-1", actEnOSSecret, "CONNACK 5", 1, false},
		{"enos wrong product secret", secrets.EnOS, false, "", actWrongSecret, "CONNACK 5", 1, true},
		{"aliyun wrong product secret", secrets.Aliyun, true, "", actWrongSecret, "CONNACK 5", 1, true},
		{"aliyun registration without tls", secrets.Aliyun, false, "", actAliPSecret, "only over TLS", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pk, ps := actEnOSPK, actEnOSSecret
			if tt.dialect == secrets.Aliyun {
				pk, ps = actAliPK, actAliPSecret
			}
			var simPKI *testutil.PKI
			if tt.tls {
				simPKI = pki
			}
			sim := startActSim(t, tt.dialect, pk, ps, simPKI, map[string]string{"dev001": tt.simSecret}, nil)
			url := "tcp://" + sim.Addr(cloudsim.TCP)
			if tt.tls {
				url = "tls://" + sim.Addr(cloudsim.TLS)
			}
			fc := newFakeClock()
			r := newRig(t, url, withFakeClock(fc), func(c *ManagerConfig) { c.Endpoint.CAPEM = pki.CAPEM })
			store := newMemActivation()
			dev := actDevice(tt.dialect, pk, "dev001", tt.gwPSecret, store)
			r.add(dev)
			startManager(t, r.m)
			st := waitState(t, r.m, dev.ID, StateActivationFailed)
			_, _, reason := store.get(dev.ID)
			if !strings.Contains(reason, tt.wantReason) || st.LastError != reason {
				t.Errorf("reason %q, status error %q; want %q in both", reason, st.LastError, tt.wantReason)
			}
			for _, s := range []string{tt.gwPSecret, ps, tt.simSecret} {
				if s != "" && strings.Contains(reason, s) {
					t.Fatalf("reason %q contains a secret", reason)
				}
			}
			// Watch for a while with the clock racing ahead (past every
			// backoff and auth-retry window): nothing may dial again.
			dials := func() int {
				r.mu.Lock()
				defer r.mu.Unlock()
				return r.dials[dev.ID]
			}
			for watch := time.Now().Add(300 * time.Millisecond); time.Now().Before(watch); time.Sleep(2 * time.Millisecond) {
				fc.Advance(time.Hour)
				if n, st := dials(), sim.Stats(); n != tt.wantDials || st.ConnectsAccepted+st.ConnectsRefused[5] > int64(tt.wantDials) {
					t.Fatalf("the refused session tried again: %d dials (want %d), cloud saw %d connects", n, tt.wantDials, st.ConnectsAccepted+st.ConnectsRefused[5])
				}
			}
			if st, _ := r.m.Status(dev.ID); st.State != StateActivationFailed || fc.Armed() != 0 {
				t.Errorf("after watching: state %s, %d timers armed", st.State, fc.Armed())
			}
			if !tt.fixable {
				return
			}
			dev.ProductSecret = secrets.NewSecret(ps)
			if err := r.m.Update(dev); err != nil {
				t.Fatal(err)
			}
			waitState(t, r.m, dev.ID, StateConnected)
			stored, _, _ := store.get(dev.ID)
			if issued := sim.Issued(pk, "dev001"); len(issued) != 1 || !stored.Equal(issued[0]) {
				t.Errorf("after the update: %d issued, stored matches: %t", len(issued), len(issued) == 1 && stored.Equal(issued[0]))
			}
		})
	}
}

func TestActivationDeviceValidation(t *testing.T) {
	r := newRig(t, "tcp://127.0.0.1:1")
	store := newMemActivation()
	tests := []struct {
		name string
		dev  Device
		want string
	}{
		{"no secret at all", Device{ID: secrets.DeviceID{ProductKey: "pk1", DeviceName: "d1"}, Dialect: secrets.EnOS}, "no productSecret"},
		{"no store", Device{ID: secrets.DeviceID{ProductKey: "pk1", DeviceName: "d2"}, Dialect: secrets.EnOS,
			ProductSecret: secrets.NewSecret("ps")}, "activation store"},
		{"bad sign method", Device{ID: secrets.DeviceID{ProductKey: "pk1", DeviceName: "d3"}, Dialect: secrets.Aliyun,
			ProductSecret: secrets.NewSecret("ps"), Activation: store, SignMethod: secrets.SHA256}, "sign method"},
	}
	for _, tt := range tests {
		if err := r.m.Add(tt.dev); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: Add = %v, want an error mentioning %q", tt.name, err, tt.want)
		}
	}
	if err := r.m.Add(actDevice(secrets.EnOS, "pk1", "d4", "ps", store)); err != nil {
		t.Errorf("a device with productSecret and store: %v", err)
	}
}

func TestParseIssued(t *testing.T) {
	enos := secrets.DeviceID{ProductKey: "pk1", DeviceName: "dk1"}
	const secret = "s3cr3t-Value"
	tests := []struct {
		name    string
		dialect secrets.Dialect
		payload string
		wantID  string
		wantErr string
	}{
		{"enos", secrets.EnOS, `{"id":"7","version":"1.0","method":"thing.activate.info","params":{"assetId":"a","productKey":"pk1","deviceKey":"dk1","deviceSecret":"` + secret + `"}}`, `"7"`, ""},
		{"enos numeric id, no identity", secrets.EnOS, `{"id":12,"params":{"deviceSecret":"` + secret + `"}}`, `12`, ""},
		{"aliyun", secrets.Aliyun, `{"productKey":"pk1","deviceName":"dk1","deviceSecret":"` + secret + `"}`, ``, ""},
		{"not json", secrets.EnOS, `{"id":`, "", "decode activation info"},
		{"no secret", secrets.EnOS, `{"id":"1","params":{"productKey":"pk1","deviceKey":"dk1"}}`, "", "no deviceSecret"},
		{"other device", secrets.Aliyun, `{"productKey":"pk1","deviceName":"other","deviceSecret":"` + secret + `"}`, "", "not this device"},
		{"secret with a space", secrets.Aliyun, `{"deviceSecret":"a b"}`, "", "offset 1"},
		{"secret not a string", secrets.Aliyun, `{"deviceSecret":5}`, "", "decode registration reply"},
		{"secret too long", secrets.Aliyun, `{"deviceSecret":"` + strings.Repeat("x", 513) + `"}`, "", "at most 512"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, id, err := parseIssued(tt.dialect, enos, []byte(tt.payload))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), secret) {
					t.Fatalf("error %q contains the secret", err)
				}
				return
			}
			if err != nil || got.Reveal() != secret || string(id) != tt.wantID {
				t.Fatalf("got id %s, err %v, secret matches %t", id, err, got.Reveal() == secret)
			}
		})
	}
}

// TestActivationFailureText: refusals name the mechanism and the code; other
// failures keep their own text.
func TestActivationFailureText(t *testing.T) {
	if got := activationFailure(secrets.Aliyun, &ConnectError{Code: 5, Err: errTest}); !strings.Contains(got, "authType=register") || !strings.Contains(got, "CONNACK 5") {
		t.Errorf("aliyun: %q", got)
	}
	if got := activationFailure(secrets.EnOS, &ConnectError{Code: 2, Err: errTest}); !strings.Contains(got, "securemode=3") || strings.Contains(got, "already activated") {
		t.Errorf("enos rc 2: %q", got)
	}
	if got := activationFailure(secrets.EnOS, errors.New("plain")); got != "plain" {
		t.Errorf("plain: %q", got)
	}
}
