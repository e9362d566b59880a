package gateway

import (
	"crypto/rand"
	"log/slog"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/edgegw/edgegw/gateway/config"
	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/localbroker"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink"
)

// fakeSessions records UpdateExtra calls and keeps each device's params
// like the manager does.
type fakeSessions struct {
	mu    sync.Mutex
	extra map[secrets.DeviceID][]secrets.Param
	calls int
	err   error
}

func (f *fakeSessions) UpdateExtra(id secrets.DeviceID, extra []secrets.Param) (uplink.ExtraUpdate, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.err != nil {
		return uplink.ExtraUpdate{}, f.err
	}
	up := uplink.ExtraUpdate{Prev: f.extra[id]}
	if reflect.DeepEqual(up.Prev, extra) {
		return up, nil
	}
	f.extra[id] = extra
	up.Changed, up.Reconnected = true, secrets.ConnectParamsChangeSession(up.Prev, extra)
	return up, nil
}

func (f *fakeSessions) get(id secrets.DeviceID) (string, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return secrets.FormatConnectParams(f.extra[id]), f.calls
}

// A signed Alibaba login stores the extension params the device presented
// (whitelisted and checked) and hands them to its cloud session; a change
// is logged at info without secrets. EnOS logins and local passwords carry
// nothing.
func TestAuthenticateCarriesConnectParams(t *testing.T) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	reg, err := secrets.OpenRegistry(filepath.Join(t.TempDir(), "registry.db"), key,
		&secrets.RegistryOptions{PasswordIterations: secrets.MinPasswordIterations})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	const secretText = "0123456789abcdef0123456789abcdef"
	secret := secrets.NewSecret(secretText)
	for _, p := range []secrets.Product{{ProductKey: "a1Ali", Dialect: secrets.Aliyun}, {ProductKey: "enosPK", Dialect: secrets.EnOS}} {
		if _, err := reg.PutProduct(p); err != nil {
			t.Fatal(err)
		}
		if err := reg.AddDevice(secrets.Device{ProductKey: p.ProductKey, DeviceName: "dev1", DeviceSecret: secret}); err != nil {
			t.Fatal(err)
		}
	}
	if err := reg.SetLocalPassword("a1Ali", "dev1", secrets.NewSecret("local-pw-1")); err != nil {
		t.Fatal(err)
	}
	var logs testutil.SyncBuffer
	fake := &fakeSessions{extra: map[secrets.DeviceID][]secrets.Param{}}
	a := &authenticator{reg: reg, modes: map[string]bool{config.AuthSigned: true, config.AuthPassword: true},
		log: slog.New(slog.NewTextHandler(&logs, nil)), sessions: fake}
	ali := secrets.DeviceID{ProductKey: "a1Ali", DeviceName: "dev1"}

	login := func(t *testing.T, d secrets.Dialect, pk string, extra ...secrets.Param) {
		t.Helper()
		cr, err := secrets.Sign(secrets.SignParams{Dialect: d, ProductKey: pk, DeviceName: "dev1", ClientID: pk + ".dev1",
			Timestamp: "2524608000000", SecureMode: map[secrets.Dialect]int{secrets.Aliyun: 3, secrets.EnOS: 2}[d], Extra: extra}, secret)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := a.Authenticate(localbroker.ConnectRequest{ClientID: cr.ClientID, Username: cr.Username,
			Password: cr.Password, Transport: localbroker.TransportTCP}); err != nil {
			t.Fatalf("Authenticate: %v", err)
		}
		if strings.Contains(logs.String(), secretText) || strings.Contains(logs.String(), cr.Password.Reveal()) {
			t.Fatalf("a secret reached the log:\n%s", logs.String())
		}
	}
	stored := func(pk string) (string, bool) {
		t.Helper()
		d, err := reg.GetDevice(pk, "dev1")
		if err != nil {
			t.Fatal(err)
		}
		return secrets.FormatConnectParams(d.ConnectParams), d.ConnectParams != nil
	}
	p := func(k, v string) secrets.Param { return secrets.Param{Key: k, Value: v} }

	const (
		reconnects  = "cloud session reconnects with the connect parameters the device presented"
		nextConnect = "cloud session carries the connect parameters the device presented from its next connection"
	)
	steps := []struct {
		name       string
		dialect    secrets.Dialect
		pk         string
		extra      []secrets.Param
		want       string // stored and on the session
		changedLog string // the info line about the change, if any
		dropLog    string // a warning naming a dropped param
	}{
		{"link sdk 4.1.0", secrets.Aliyun, "a1Ali", []secrets.Param{p("_ss", "1"), p("_v", "sdk-c-4.1.0"), p("ext", "3"), p("_conn", "tls_1")},
			"_ss=1,_v=sdk-c-4.1.0,ext=3", reconnects, ""},
		{"same again", secrets.Aliyun, "a1Ali", []secrets.Param{p("_ss", "1"), p("_v", "sdk-c-4.1.0"), p("ext", "3"), p("_conn", "tls_1")},
			"_ss=1,_v=sdk-c-4.1.0,ext=3", "", ""},
		{"firmware downgraded to c sdk 3", secrets.Aliyun, "a1Ali", []secrets.Param{p("_v", "sdk-c-3.0.1"), p("lan", "C"), p("gw", "0"), p("ext", "0")},
			"_v=sdk-c-3.0.1,lan=C,gw=0,ext=0", reconnects, ""},
		{"informational change", secrets.Aliyun, "a1Ali", []secrets.Param{p("_v", "sdk-c-3.0.2"), p("lan", "C"), p("gw", "0"), p("ext", "0")},
			"_v=sdk-c-3.0.2,lan=C,gw=0,ext=0", nextConnect, ""},
		{"bad value dropped", secrets.Aliyun, "a1Ali", []secrets.Param{p("_v", "sdk c"), p("_ss", "1")},
			"_ss=1", reconnects, "connect parameter _v"},
		{"none presented", secrets.Aliyun, "a1Ali", nil, "", reconnects, ""},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			before := logs.String()
			login(t, st.dialect, st.pk, st.extra...)
			got, seen := stored(st.pk)
			if got != st.want || !seen {
				t.Errorf("stored %q (seen %v), want %q", got, seen, st.want)
			}
			if onSession, _ := fake.get(ali); onSession != st.want {
				t.Errorf("session carries %q, want %q", onSession, st.want)
			}
			added := strings.TrimPrefix(logs.String(), before)
			logged := ""
			for _, line := range strings.Split(added, "\n") {
				for _, msg := range []string{reconnects, nextConnect} {
					if strings.Contains(line, `level=INFO msg="`+msg+`" device=a1Ali/dev1`) &&
						(strings.Contains(line, "params="+st.want+" ") || strings.Contains(line, `params="`+st.want+`"`)) {
						logged = msg
					}
				}
			}
			if logged != st.changedLog {
				t.Errorf("change logged %q, want %q:\n%s", logged, st.changedLog, added)
			}
			if st.dropLog != "" && !strings.Contains(added, st.dropLog) {
				t.Errorf("no warning naming %q:\n%s", st.dropLog, added)
			}
		})
	}

	t.Run("enos and local passwords carry nothing", func(t *testing.T) {
		_, calls := fake.get(ali)
		login(t, secrets.EnOS, "enosPK")
		if _, seen := stored("enosPK"); seen {
			t.Error("EnOS login stored connect params")
		}
		if _, err := a.Authenticate(localbroker.ConnectRequest{ClientID: "c1", Username: "dev1&a1Ali",
			Password: secrets.NewSecret("local-pw-1"), Transport: localbroker.TransportTCP}); err != nil {
			t.Fatal(err)
		}
		if _, after := fake.get(ali); after != calls {
			t.Errorf("%d UpdateExtra calls for an EnOS and a password login", after-calls)
		}
	})

	t.Run("no session yet", func(t *testing.T) {
		fake.err = uplink.ErrUnknownDevice
		before := logs.String()
		login(t, secrets.Aliyun, "a1Ali", p("_ss", "1"))
		if got, _ := stored("a1Ali"); got != "_ss=1" {
			t.Errorf("stored %q", got)
		}
		if added := strings.TrimPrefix(logs.String(), before); strings.Contains(added, "level=ERROR") {
			t.Errorf("a device without a session logged an error:\n%s", added)
		}
	})
}
