package localbroker_test

import (
	"bufio"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"runtime/metrics"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/edgegw/edgegw/internal/memreport"
	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/internal/testutil/rawmqtt"
	"github.com/edgegw/edgegw/localbroker"
)

// liveHeap collects garbage and returns the bytes of live heap.
func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

func stackBytes() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/stacks:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// TestIdleConnectionMemory bounds what one idle device connection costs the
// broker (mochi's client and edgegw's record of it) in heap and
// goroutines: at 10,000 devices every KiB here is 10 MiB.
func TestIdleConnectionMemory(t *testing.T) {
	// No debug log kept in memory: it would grow with every connection.
	h := startBroker(t, func(c *localbroker.Config) { c.Logger = slog.New(slog.DiscardHandler) })
	addr := strings.TrimPrefix(h.url(t, "tcp"), "tcp://")
	baseG := memreport.Goroutines()[memreport.PartMochi]
	base := liveHeap()
	baseStacks := stackBytes()

	const n = 200
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		b, err := rawmqtt.Encode(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 4,
			Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), ClientIdentifier: fmt.Sprintf("mem-%d", i), Clean: true,
				Keepalive: 300, UsernameFlag: true, Username: []byte(dnA), PasswordFlag: true, Password: []byte(passA)}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		ack, err := rawmqtt.Read(bufio.NewReaderSize(c, 16)) // no buffer kept per client
		if err != nil || ack.FixedHeader.Type != packets.Connack || ack.ReasonCode != 0 {
			t.Fatalf("connection %d: CONNACK %+v, %v", i, ack.FixedHeader, err)
		}
	}
	testutil.Eventually(t, 10*time.Second, func() bool { return h.b.Stats().ClientsConnected == n }, "%d clients connected", n)
	after := liveHeap()
	perConn := float64(after-min(base, after)) / n
	// Not bounded here, for it is mochi's: its reader grows to 16 KiB
	// while it handles the CONNECT and cannot shrink back, its writer
	// keeps 4 KiB.
	t.Logf("%d idle connections: %.0f bytes of goroutine stacks each", n, float64(stackBytes()-baseStacks)/n)
	var goroutines int
	testutil.Eventually(t, 10*time.Second, func() bool {
		goroutines = memreport.Goroutines()[memreport.PartMochi] - baseG
		return goroutines <= 2*n+2 // the broker's own may start after base was taken
	}, "mochi's 2 goroutines per connection")
	// The test's own side of each connection (its socket) is counted too.
	t.Logf("%d idle connections: %.0f bytes of live heap each, %d mochi goroutines", n, perConn, goroutines)
	const budget = 7 << 10
	if perConn > budget {
		t.Errorf("%.0f bytes of heap per idle connection, budget %d", perConn, budget)
	}
}
