package cloudsim_test

import (
	"crypto/tls"
	"fmt"
	"testing"
	"time"

	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink/cloudsim"
)

func secondsDuration(n int) time.Duration { return time.Duration(n) * time.Second }

func encrypted(kind string) bool { return kind == cloudsim.TLS || kind == cloudsim.WSS }

// TestTransports connects a paho client over TCP, TLS, WebSocket and
// secure WebSocket in both dialects, publishes, and checks the record.
func TestTransports(t *testing.T) {
	for _, dialect := range []secrets.Dialect{secrets.Aliyun, secrets.EnOS} {
		t.Run(string(dialect), func(t *testing.T) {
			var sim *cloudsim.Sim
			pk, dn, secret := aliPK, aliDN, aliSecret
			if dialect == secrets.EnOS {
				sim, _ = enosSim(t)
				pk, dn, secret = enosPK, enosDK, enosSecret
			} else {
				sim, _ = aliyunSim(t)
			}
			pki := pkiOf(t, sim)
			for i, kind := range []string{cloudsim.TCP, cloudsim.TLS, cloudsim.WS, cloudsim.WSS} {
				t.Run(kind, func(t *testing.T) {
					mode := 2
					if dialect == secrets.Aliyun && !encrypted(kind) {
						mode = 3
					}
					cr := sign(t, dialect, pk, dn, secret, mode, "")
					opts := []clientOpt{withKeepAlive(keepaliveFor(dialect))}
					if encrypted(kind) {
						opts = append(opts, withTLS(pki.ClientTLS()))
					}
					c := mustConnect(t, urlFor(sim, kind), cr, opts...)
					topic := fmt.Sprintf("/sys/%s/%s/thing/event/property/post", pk, dn)
					payload := fmt.Sprintf(`{"id":"%d","params":{"kind":%q}}`, i+1, kind)
					mustPublish(t, c, topic, 1, payload)
					recs := waitRecords(t, sim, i+1)
					got := recs[i]
					want := cloudsim.Record{Seq: got.Seq, Device: cloudsim.DeviceRef{ProductKey: pk, DeviceName: dn},
						ClientID: cr.ClientID, Transport: kind, Topic: topic, Payload: []byte(payload), QoS: 1, Time: got.Time}
					if fmt.Sprint(got) != fmt.Sprint(want) {
						t.Errorf("record\n got %+v\nwant %+v", got, want)
					}
					if got.Time.IsZero() {
						t.Error("record has no time")
					}
				})
			}
		})
	}
}

// TestMutualTLS: with a client CA configured, a client must present a
// certificate signed by it; the MQTT credentials are still checked.
func TestMutualTLS(t *testing.T) {
	pki := testutil.NewPKI(t)
	srvCert, srvKey := pki.WriteCert(t, pki.Server, "server")
	srvTLS, err := cloudsim.LoadTLSConfig(srvCert, srvKey, pki.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	sim, _ := enosSim(t, func(c *cloudsim.Config) { c.TLSConfig = srvTLS })
	cr := sign(t, secrets.EnOS, enosPK, enosDK, enosSecret, 2, "")
	withCert := pki.ClientTLS(pki.ClientCert(t, "device-client"))
	otherCA := pki.ClientTLS(testutil.NewNamedPKI(t, "unrelated CA").ClientCert(t, "intruder"))
	for _, kind := range []string{cloudsim.TLS, cloudsim.WSS} {
		t.Run(kind, func(t *testing.T) {
			for _, tc := range []struct {
				name string
				cfg  *tls.Config
				ok   bool
			}{
				{"no client certificate", pki.ClientTLS(), false},
				{"certificate of another CA", otherCA, false},
				{"certificate of the client CA", withCert, true},
			} {
				t.Run(tc.name, func(t *testing.T) {
					_, code, err := connect(t, urlFor(sim, kind), cr.ClientID, cr.Username, cr.Password.Reveal(), withTLS(tc.cfg))
					if tc.ok && err != nil {
						t.Fatalf("connect: code %d: %v", code, err)
					}
					if !tc.ok && err == nil {
						t.Fatal("connected without an acceptable client certificate")
					}
				})
			}
		})
	}
	// A good certificate does not replace the MQTT credentials.
	bad := sign(t, secrets.EnOS, enosPK, enosDK, "wrong", 2, "")
	if _, code, _ := connect(t, urlFor(sim, cloudsim.TLS), bad.ClientID, bad.Username, bad.Password.Reveal(), withTLS(withCert)); code != 5 {
		t.Errorf("bad signature over mutual TLS: code %d, want 5", code)
	}
}

// TestLoadTLSConfigErrors names the failing file.
func TestLoadTLSConfigErrors(t *testing.T) {
	pki := testutil.NewPKI(t)
	srvCert, srvKey := pki.WriteCert(t, pki.Server, "server")
	_, cliKey := pki.WriteCert(t, pki.ClientCert(t, "device-client"), "client")
	if _, err := cloudsim.LoadTLSConfig(srvCert, cliKey, ""); err == nil {
		t.Error("mismatched key pair accepted")
	}
	if _, err := cloudsim.LoadTLSConfig(srvCert, srvKey, srvKey); err == nil {
		t.Error("client CA file without a certificate accepted")
	}
	if _, err := cloudsim.LoadTLSConfig(srvCert, srvKey, pki.Dir+"/missing.pem"); err == nil {
		t.Error("missing client CA file accepted")
	}
}
