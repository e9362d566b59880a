package gateway_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgegw/edgegw/gateway/config"
	"github.com/edgegw/edgegw/internal/testutil"
)

// TestClientCertificateAuth: a device presenting a client certificate whose
// CN is productKey/deviceName, signed by the configured client CA, logs in
// without a password on a tls:// listener and its messages reach the cloud
// under its identity; a certificate from another CA, or naming an unknown
// device, is refused.
func TestClientCertificateAuth(t *testing.T) {
	ca := testutil.NewPKI(t)
	certFile, keyFile := ca.WriteCert(t, ca.Server, "server")
	caFile := ca.CAFile

	r := newRig(t, 2, 0, func(c *config.Config) {
		c.Broker.Listeners = append(c.Broker.Listeners, "tls://127.0.0.1:0")
		c.Broker.TLSCert, c.Broker.TLSKey, c.Broker.ClientCA = certFile, keyFile, caFile
	})
	var tlsAddr string
	for id, a := range r.gw.Addrs() {
		if strings.HasPrefix(id, "tls://") {
			tlsAddr = a.String()
		}
	}
	if tlsAddr == "" {
		t.Fatalf("no tls listener in %v", r.gw.Addrs())
	}
	dial := func(cn string, signer *testutil.PKI) (mqtt.Client, error) {
		o := mqtt.NewClientOptions().AddBroker("tls://" + tlsAddr).SetClientID("cert-" + strings.ReplaceAll(cn, "/", "-")).
			SetProtocolVersion(4).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second).
			SetTLSConfig(ca.ClientTLS(signer.ClientCert(t, cn)))
		c := mqtt.NewClient(o)
		tok := c.Connect()
		if !tok.WaitTimeout(10 * time.Second) {
			return nil, fmt.Errorf("connect timed out")
		}
		if tok.Error() == nil {
			t.Cleanup(func() { c.Disconnect(0) })
		}
		return c, tok.Error()
	}

	d := r.devices[0]
	c, err := dial(d.ProductKey+"/"+d.DeviceName, ca)
	if err != nil {
		t.Fatalf("device certificate refused: %v", err)
	}
	for i := 1; i <= 3; i++ {
		tok := c.Publish(d.UplinkTopic(), 1, false, fmt.Sprintf(`{"id":"%d","params":{"seq":%d}}`, i, i))
		if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish %d: %v", i, tok.Error())
		}
	}
	testutil.Eventually(t, 20*time.Second, func() bool { return len(r.seqs(d)) >= 3 }, "certificate device's messages in the cloud")
	if got := fmt.Sprint(r.seqs(d)); got != "[1 2 3]" {
		t.Errorf("cloud got %s", got)
	}

	if _, err := dial(testPK+"/nobody", ca); err == nil {
		t.Error("certificate naming an unknown device was accepted")
	}
	if _, err := dial(d.ProductKey+"/"+d.DeviceName, testutil.NewNamedPKI(t, "rogue CA")); err == nil {
		t.Error("certificate from another CA was accepted")
	}
}
