package gateway

import (
	"log/slog"
	"testing"

	"github.com/edgegw/edgegw/gateway/config"
	"github.com/edgegw/edgegw/localbroker"
	"github.com/edgegw/edgegw/secrets"
)

// Firmware that relies on server-side subscription is told apart at login:
// an Alibaba device by _ss=1 in its signed clientId, an EnOS device always
// (EnOS pushes commands without a SUBSCRIBE).
func TestAuthenticateServerSubscribed(t *testing.T) {
	cfg := config.Default()
	cfg.StateDir = t.TempDir()
	reg := openTestRegistry(t, cfg)
	t.Cleanup(func() { reg.Close() })
	secret := secrets.NewSecret("0123456789abcdef0123456789abcdef")
	for _, p := range []secrets.Product{{ProductKey: "a1Ali", Dialect: secrets.Aliyun}, {ProductKey: "enosPK", Dialect: secrets.EnOS}} {
		if _, err := reg.PutProduct(p); err != nil {
			t.Fatal(err)
		}
		if err := reg.AddDevice(secrets.Device{ProductKey: p.ProductKey, DeviceName: "dev1", DeviceSecret: secret}); err != nil {
			t.Fatal(err)
		}
	}
	a := &authenticator{reg: reg, modes: map[string]bool{config.AuthSigned: true}, log: slog.New(slog.DiscardHandler)}

	tests := []struct {
		name    string
		dialect secrets.Dialect
		pk      string
		extra   []secrets.Param
		want    bool
	}{
		{"alibaba plain", secrets.Aliyun, "a1Ali", nil, false},
		{"alibaba _ss=1", secrets.Aliyun, "a1Ali", []secrets.Param{{Key: "_ss", Value: "1"}, {Key: "_v", Value: "sdk-c-4.1.0"}}, true},
		{"alibaba _ss=0", secrets.Aliyun, "a1Ali", []secrets.Param{{Key: "_ss", Value: "0"}}, false},
		{"enos", secrets.EnOS, "enosPK", nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cr, err := secrets.Sign(secrets.SignParams{Dialect: tc.dialect, ProductKey: tc.pk, DeviceName: "dev1",
				Timestamp: "1700000000000", Extra: tc.extra}, secret)
			if err != nil {
				t.Fatal(err)
			}
			id, err := a.Authenticate(localbroker.ConnectRequest{ClientID: cr.ClientID, Username: cr.Username,
				Password: cr.Password, Transport: localbroker.TransportTCP})
			if err != nil {
				t.Fatalf("Authenticate: %v", err)
			}
			if id.ServerSubscribed != tc.want {
				t.Errorf("ServerSubscribed = %v, want %v (clientId %s)", id.ServerSubscribed, tc.want, cr.ClientID)
			}
		})
	}
}
