package cloudsim_test

import (
	"bytes"
	"io"
	"net"
	"strings"
	"testing"

	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink/cloudsim"
)

// rawSession connects a raw 3.1.1 client for aliDN and checks CONNACK 0.
func rawSession(t *testing.T, sim *cloudsim.Sim, bareCID string) net.Conn {
	t.Helper()
	cr, err := secrets.Sign(secrets.SignParams{Dialect: secrets.Aliyun, ProductKey: aliPK, DeviceName: aliDN,
		ClientID: bareCID, SecureMode: 3}, secrets.NewSecret(aliSecret))
	if err != nil {
		t.Fatal(err)
	}
	nc := rawDial(t, sim.Addr(cloudsim.TCP), nil, fromCreds(cr, 300))
	if code := readConnack(t, nc); code != 0 {
		t.Fatalf("CONNACK %d", code)
	}
	return nc
}

// expectClosedWithoutDisconnect reads until EOF and fails if the server
// sent anything, in particular a DISCONNECT packet, which MQTT 3.1.1 only
// defines from client to server.
func expectClosedWithoutDisconnect(t *testing.T, nc net.Conn) {
	t.Helper()
	rest, err := io.ReadAll(nc)
	if err != nil && !isClosedErr(err) {
		t.Fatalf("read: %v", err)
	}
	if len(rest) > 0 {
		t.Errorf("server sent %x before closing (0xe0 = DISCONNECT)", rest)
	}
}

// TestRawProtocol checks the 3.1.1 wire behaviour where paho would hide
// it: refusals close without a DISCONNECT packet, the DUP flag is
// recorded, oversized packets close the connection.
func TestRawProtocol(t *testing.T) {
	sim, _ := aliyunSim(t)

	t.Run("forbidden publish closes without DISCONNECT", func(t *testing.T) {
		for _, qos := range []byte{0, 1} {
			nc := rawSession(t, sim, "raw")
			rawPublish(t, nc, userTopic(aliDN2, "data"), qos, false, "x")
			expectClosedWithoutDisconnect(t, nc)
		}
	})
	t.Run("takeover closes without DISCONNECT", func(t *testing.T) {
		first := rawSession(t, sim, "raw-a")
		rawSession(t, sim, "raw-b")
		expectClosedWithoutDisconnect(t, first)
	})
	t.Run("dup flag recorded", func(t *testing.T) {
		nc := rawSession(t, sim, "raw")
		rawPublish(t, nc, userTopic(aliDN, "data"), 1, true, "again")
		ack := make([]byte, 4)
		if _, err := io.ReadFull(nc, ack); err != nil || !bytes.Equal(ack, []byte{0x40, 2, 0, 1}) {
			t.Fatalf("PUBACK %x, %v", ack, err)
		}
		recs := sim.Messages()
		if last := recs[len(recs)-1]; !last.Dup || last.QoS != 1 || string(last.Payload) != "again" {
			t.Errorf("record %+v, want a QoS 1 DUP", last)
		}
	})
	t.Run("oversized publish closes", func(t *testing.T) {
		nc := rawSession(t, sim, "raw")
		rawPublish(t, nc, userTopic(aliDN, "data"), 0, false, strings.Repeat("x", 256<<10))
		expectClosedWithoutDisconnect(t, nc)
	})
}
