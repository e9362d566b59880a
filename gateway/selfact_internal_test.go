package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/edgegw/edgegw/gateway/config"
	"github.com/edgegw/edgegw/localbroker"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink"
)

// fakeActivator stands in for the uplink manager.
type fakeActivator struct {
	reg    *secrets.Registry
	secret string // stored and returned when err is nil
	err    error
	calls  int
}

func (f *fakeActivator) Activate(_ context.Context, id secrets.DeviceID) (secrets.Secret, error) {
	f.calls++
	if f.err != nil {
		return secrets.Secret{}, f.err
	}
	s := secrets.NewSecret(f.secret)
	return s, f.reg.StoreActivatedSecret(id.ProductKey, id.DeviceName, s, uplink.SourceEnOSActivate)
}

// A product-secret login used to be refused outright ("done by the
// gateway itself, not by devices"); firmware that activates itself now
// gets its secret. These are the refusals that remain, with their CONNACK
// codes, and none of their reasons holds a secret.
func TestProductSecretLoginRefusals(t *testing.T) {
	cfg := config.Default()
	cfg.StateDir = t.TempDir()
	reg := openTestRegistry(t, cfg)
	t.Cleanup(func() { reg.Close() })
	const ps = "theProductSecret-0001"
	for _, p := range []secrets.Product{
		{ProductKey: "enosPK", Dialect: secrets.EnOS, ProductSecret: secrets.NewSecret(ps)},
		{ProductKey: "enosNoPS", Dialect: secrets.EnOS},
		{ProductKey: "a1Ali", Dialect: secrets.Aliyun, ProductSecret: secrets.NewSecret(ps)},
	} {
		if _, err := reg.PutProduct(p); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []secrets.Device{
		{ProductKey: "enosPK", DeviceName: "await"},
		{ProductKey: "enosPK", DeviceName: "failed"},
		{ProductKey: "enosPK", DeviceName: "refused"},
		{ProductKey: "enosPK", DeviceName: "down"},
		{ProductKey: "enosNoPS", DeviceName: "dev1", DeviceSecret: secrets.NewSecret("storedSecret-0001")},
		{ProductKey: "a1Ali", DeviceName: "dev1"},
	} {
		if err := reg.AddDevice(d); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := reg.UpdateDevice("enosPK", "failed", func(d *secrets.Device) error {
		d.State, d.StateReason = secrets.StateActivationFailed, "EnOS dynamic activation (securemode=3) refused with CONNACK 5"
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	enos := func(pk, dk, secret string) localbroker.ConnectRequest {
		cr, err := secrets.Sign(secrets.SignParams{Dialect: secrets.EnOS, ProductKey: pk, DeviceName: dk,
			Timestamp: "2524608000000", SecureMode: 3}, secrets.NewSecret(secret))
		if err != nil {
			t.Fatal(err)
		}
		return localbroker.ConnectRequest{ClientID: cr.ClientID, Username: cr.Username, Password: cr.Password, Transport: localbroker.TransportTCP}
	}
	ali := func(authType, transport string) localbroker.ConnectRequest {
		pw, err := secrets.RegisterSign(secrets.HMACSHA256, "a1Ali", "dev1", "42", secrets.NewSecret(ps))
		if err != nil {
			t.Fatal(err)
		}
		return localbroker.ConnectRequest{ClientID: "dev1.a1Ali|random=42,authType=" + authType + ",securemode=2,signmethod=hmacsha256|",
			Username: "dev1&a1Ali", Password: secrets.NewSecret(pw), Transport: transport}
	}
	act := &fakeActivator{reg: reg}
	a := &authenticator{reg: reg, modes: map[string]bool{config.AuthSigned: true}, log: slog.New(slog.DiscardHandler), act: act}
	tests := []struct {
		name     string
		req      localbroker.ConnectRequest
		actErr   error
		wantCode byte
		want     string
	}{
		{"wrong product signature", enos("enosPK", "await", "notIt-0001"), nil, 5, "wrong signature"},
		{"product without productSecret", enos("enosNoPS", "dev1", ps), nil, 5, "no productSecret"},
		{"activation failed earlier", enos("enosPK", "failed", ps), nil, 5, "activation of this device failed"},
		{"activation refused now", enos("enosPK", "refused", ps), fmt.Errorf("x: %w: CONNACK 5", uplink.ErrActivationRefused), 5, "activation refused"},
		{"cloud unreachable", enos("enosPK", "down", ps), errors.New("dial tcp: connection refused"), 3, "connection refused"},
		{"registration over plain tcp", ali("register", localbroker.TransportTCP), nil, 3, "needs TLS"},
		{"regnwl", ali("regnwl", localbroker.TransportTLS), nil, 5, "regnwl is not supported"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			act.err = tc.actErr
			_, err := a.Authenticate(tc.req)
			var r *localbroker.Refusal
			if !errors.As(err, &r) || r.Code != tc.wantCode || !strings.Contains(r.Reason, tc.want) {
				t.Fatalf("err %v, want a refusal %d containing %q", err, tc.wantCode, tc.want)
			}
			if strings.Contains(err.Error(), ps) || strings.Contains(err.Error(), tc.req.Password.Reveal()) {
				t.Fatalf("refusal %q holds a secret", err)
			}
		})
	}

	// Activated on demand: the identity pushes the stored secret.
	act.err, act.secret, act.calls = nil, "issuedSecret-0001", 0
	id, err := a.Authenticate(enos("enosPK", "await", ps))
	if err != nil {
		t.Fatal(err)
	}
	p := id.Provision
	if p == nil || p.Topic != "/ext/session/enosPK/await/thing/activate/info" || p.Reply != p.Topic+"_reply" ||
		!strings.Contains(p.Payload.Reveal(), `"deviceSecret":"issuedSecret-0001"`) || act.calls != 1 {
		t.Fatalf("identity %+v, %d activations", id, act.calls)
	}
	if s := fmt.Sprintf("%v %+v %s", id, *p, id); strings.Contains(s, "issuedSecret-0001") {
		t.Fatalf("the identity prints its secret: %s", s)
	}
	// Again: from the registry, without asking the cloud.
	if _, err := a.Authenticate(enos("enosPK", "await", ps)); err != nil || act.calls != 1 {
		t.Fatalf("second activation: err %v, %d activations (want 1)", err, act.calls)
	}
	// Alibaba over TLS: /ext/register, closed soon after.
	act.secret = "aliSecret-0001"
	id, err = a.Authenticate(ali("register", localbroker.TransportTLS))
	if err != nil {
		t.Fatal(err)
	}
	if p := id.Provision; p == nil || p.Topic != "/ext/register" || p.Reply != "" || p.Hold <= 0 || p.Hold > localbroker.DefaultProvisionHold ||
		!strings.Contains(p.Payload.Reveal(), `"deviceSecret":"aliSecret-0001"`) {
		t.Fatalf("alibaba identity %+v", id)
	}
}
