package cloudsim_test

import (
	"crypto/tls"
	"fmt"
	"testing"
	"time"

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
						opts = append(opts, withTLS(pki.clientTLS))
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
	pki := newPKI(t)
	srvTLS, err := cloudsim.LoadTLSConfig(pki.serverCert, pki.srvKey, pki.caFile)
	if err != nil {
		t.Fatal(err)
	}
	sim, _ := enosSim(t, func(c *cloudsim.Config) { c.TLSConfig = srvTLS })
	cr := sign(t, secrets.EnOS, enosPK, enosDK, enosSecret, 2, "")
	for _, kind := range []string{cloudsim.TLS, cloudsim.WSS} {
		t.Run(kind, func(t *testing.T) {
			for _, tc := range []struct {
				name string
				cfg  *tls.Config
				ok   bool
			}{
				{"no client certificate", pki.clientTLS, false},
				{"certificate of another CA", pki.otherCAClientTLS, false},
				{"certificate of the client CA", pki.clientTLSWithCert, true},
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
	if _, code, _ := connect(t, urlFor(sim, cloudsim.TLS), bad.ClientID, bad.Username, bad.Password.Reveal(), withTLS(pki.clientTLSWithCert)); code != 5 {
		t.Errorf("bad signature over mutual TLS: code %d, want 5", code)
	}
}

// TestLoadTLSConfigErrors names the failing file.
func TestLoadTLSConfigErrors(t *testing.T) {
	pki := newPKI(t)
	if _, err := cloudsim.LoadTLSConfig(pki.serverCert, pki.cliKey, ""); err == nil {
		t.Error("mismatched key pair accepted")
	}
	if _, err := cloudsim.LoadTLSConfig(pki.serverCert, pki.srvKey, pki.srvKey); err == nil {
		t.Error("client CA file without a certificate accepted")
	}
	if _, err := cloudsim.LoadTLSConfig(pki.serverCert, pki.srvKey, pki.dir+"/missing.pem"); err == nil {
		t.Error("missing client CA file accepted")
	}
}
