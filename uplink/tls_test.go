package uplink

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/secrets"
)

func TestTransports(t *testing.T) {
	pki := testutil.NewPKI(t)
	caFile := pki.CAFile
	client := pki.ClientCert(t, "dev0001")
	wsAddr := func() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t))) }
	tests := []struct {
		name       string
		dialect    secrets.Dialect
		server     mochiOptions
		endpoint   func(url string) Endpoint
		clientCert bool
		secureMode int
		wantErr    string // empty: connects
	}{
		{"tls with CA PEM", secrets.Aliyun, mochiOptions{tls: pki.ServerTLS(tls.NoClientCert)},
			func(u string) Endpoint { return Endpoint{URL: u, CAPEM: pki.CAPEM} }, false, 2, ""},
		{"tls with CA file", secrets.Aliyun, mochiOptions{tls: pki.ServerTLS(tls.NoClientCert)},
			func(u string) Endpoint { return Endpoint{URL: u, CAFile: caFile} }, false, 2, ""},
		{"tls with vendor roots hook", secrets.Aliyun, mochiOptions{tls: pki.ServerTLS(tls.NoClientCert)},
			func(u string) Endpoint { return Endpoint{URL: u, ExtraRoots: []*x509.Certificate{pki.CA}} }, false, 2, ""},
		{"tls verifies the server by default", secrets.Aliyun, mochiOptions{tls: pki.ServerTLS(tls.NoClientCert)},
			func(u string) Endpoint { return Endpoint{URL: u} }, false, 0, "certificate"},
		{"EnOS two-way tls with client certificate", secrets.EnOS, mochiOptions{tls: pki.ServerTLS(tls.RequireAndVerifyClientCert)},
			func(u string) Endpoint { return Endpoint{URL: u, CAPEM: pki.CAPEM} }, true, 2, ""},
		{"EnOS two-way tls without client certificate", secrets.EnOS, mochiOptions{tls: pki.ServerTLS(tls.RequireAndVerifyClientCert)},
			func(u string) Endpoint { return Endpoint{URL: u, CAPEM: pki.CAPEM} }, false, 0, "certificate required"},
		{"EnOS over plain tcp signs with securemode 2", secrets.EnOS, mochiOptions{},
			func(u string) Endpoint { return Endpoint{URL: u} }, false, 2, ""},
		{"ws", secrets.Aliyun, mochiOptions{ws: wsAddr()},
			func(u string) Endpoint { return Endpoint{URL: u} }, false, 3, ""},
		{"wss", secrets.Aliyun, mochiOptions{ws: wsAddr(), tls: pki.ServerTLS(tls.NoClientCert)},
			func(u string) Endpoint { return Endpoint{URL: u, CAPEM: pki.CAPEM} }, false, 2, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cloud := startMochi(t, tt.dialect, tt.server)
			url := cloud.url
			if tt.server.ws != "" {
				// mochi's WebSocket listener starts asynchronously.
				testutil.Eventually(t, 5*time.Second, func() bool {
					c, err := net.Dial("tcp", tt.server.ws)
					if err == nil {
						c.Close()
					}
					return err == nil
				}, "websocket listener")
			}
			r := newRig(t, url, func(c *ManagerConfig) {
				c.Endpoint = tt.endpoint(url)
				c.ConnectTimeout = 5 * time.Second
				l := DefaultLimits(tt.dialect)
				l.Backoff = Backoff{Initial: 5 * time.Millisecond, Max: 50 * time.Millisecond}
				l.MessageRate = Rate{} // the transport is under test, not the rate
				c.Limits = map[secrets.Dialect]DialectLimits{tt.dialect: l}
			})
			dev := testDevice(1)
			dev.Dialect = tt.dialect
			if tt.clientCert {
				dev.ClientCert = &client
			}
			cloud.register(dev.ID, dev.Secret)
			r.add(dev)
			startManager(t, r.m)
			if tt.wantErr != "" {
				st := r.waitStatus(dev.ID, "a failed attempt", func(st SessionStatus) bool { return st.State == StateBackoff && st.Attempts >= 1 })
				if !strings.Contains(st.LastError, tt.wantErr) || st.Connects != 0 {
					t.Fatalf("state %s, connects %d, last error %q; want a failure mentioning %q", st.State, st.Connects, st.LastError, tt.wantErr)
				}
				return
			}
			r.waitStatus(dev.ID, "connected", func(st SessionStatus) bool { return st.State == StateConnected })
			recs := cloud.hook.connectRecords()
			if len(recs) == 0 || recs[0].Presented == nil || recs[0].Presented.SecureMode != tt.secureMode {
				t.Fatalf("CONNECT records %+v, want securemode %d", recs, tt.secureMode)
			}
			r.q.appendN(t, dev.ID, userTopic(dev.ID), 1, 20)
			r.waitStatus(dev.ID, "delivered", func(st SessionStatus) bool { return st.Sent == 20 })
			checkOrder(t, "cloud", cloud.hook.receivedBy(dev.ID), 20)
		})
	}
}
