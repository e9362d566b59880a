package bench

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"
)

// A minimal MQTT 3.1.1 client: CONNECT, PUBLISH at QoS 0 and 1, PUBACK,
// SUBSCRIBE, PINGREQ and DISCONNECT. The load generator and the taps use it
// instead of paho so that the generator costs as little CPU as possible on
// a 2-core box (one goroutine per connection for reading, no goroutine or
// token per message) and so that the in-flight window is exactly what the
// benchmark says.

// MQTT 3.1.1 control packet types (high nibble of the first byte).
const (
	pktConnect    = 1
	pktConnack    = 2
	pktPublish    = 3
	pktPuback     = 4
	pktSubscribe  = 8
	pktSuback     = 9
	pktPingreq    = 12
	pktPingresp   = 13
	pktDisconnect = 14
)

// maxPacket bounds a packet the client accepts from a broker.
const maxPacket = 1 << 20

// connectParams are the fields of a CONNECT.
type connectParams struct {
	ClientID  string
	Username  string
	Password  string // the password or signature; never logged
	Keepalive time.Duration
}

// refusedError is a CONNACK with a non-zero return code.
type refusedError struct{ code byte }

func (e *refusedError) Error() string {
	return fmt.Sprintf("connection refused with CONNACK return code %d", e.code)
}

// mqttConn is one MQTT connection. Writes are serialised by wmu; reads
// belong to the single goroutine that calls readPacket.
type mqttConn struct {
	nc  net.Conn
	br  *bufio.Reader
	wmu sync.Mutex
	buf []byte // readPacket's body buffer, reused
}

// dialMQTT connects to addr (host:port, or unix:PATH), sends CONNECT and
// waits for the CONNACK within the context's deadline (or 10 s).
func dialMQTT(ctx context.Context, addr string, p connectParams) (*mqttConn, error) {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(10 * time.Second)
	}
	d := net.Dialer{Deadline: deadline}
	network, address := "tcp", addr
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		network, address = "unix", path
	}
	nc, err := d.DialContext(ctx, network, address)
	if err != nil {
		return nil, fmt.Errorf("dial MQTT broker %s: %w", addr, err)
	}
	c := &mqttConn{nc: nc, br: bufio.NewReaderSize(nc, 16<<10)}
	_ = nc.SetDeadline(deadline)
	if err := c.write(appendConnect(nil, p)); err != nil {
		nc.Close()
		return nil, fmt.Errorf("send CONNECT to %s: %w", addr, err)
	}
	typ, body, err := c.readPacket()
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("read CONNACK from %s: %w", addr, err)
	}
	if typ>>4 != pktConnack || len(body) != 2 {
		nc.Close()
		return nil, fmt.Errorf("read CONNACK from %s: got packet type %d", addr, typ>>4)
	}
	if body[1] != 0 {
		nc.Close()
		return nil, fmt.Errorf("connect to %s as %q: %w", addr, p.ClientID, &refusedError{body[1]})
	}
	_ = nc.SetDeadline(time.Time{})
	return c, nil
}

// write sends one or more complete packets.
func (c *mqttConn) write(b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_, err := c.nc.Write(b)
	return err
}

// close sends DISCONNECT (best effort) and closes the connection.
func (c *mqttConn) close() {
	c.wmu.Lock()
	_ = c.nc.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	_, _ = c.nc.Write([]byte{pktDisconnect << 4, 0})
	c.wmu.Unlock()
	_ = c.nc.Close()
}

// readPacket reads one packet; body is valid until the next call.
func (c *mqttConn) readPacket() (first byte, body []byte, err error) {
	first, err = c.br.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	var n, shift int
	for i := 0; ; i++ {
		b, err := c.br.ReadByte()
		if err != nil {
			return 0, nil, noEOF(err)
		}
		n |= int(b&0x7f) << shift
		if b&0x80 == 0 {
			break
		}
		if shift += 7; i == 3 {
			return 0, nil, errors.New("malformed remaining length")
		}
	}
	if n > maxPacket {
		return 0, nil, fmt.Errorf("packet of %d bytes is larger than %d", n, maxPacket)
	}
	if cap(c.buf) < n {
		c.buf = make([]byte, n, max(n, 256))
	}
	body = c.buf[:n]
	if _, err := io.ReadFull(c.br, body); err != nil {
		return 0, nil, noEOF(err)
	}
	return first, body, nil
}

func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// ---- encoding ----

func appendLength(b []byte, n int) []byte {
	for {
		d := byte(n & 0x7f)
		n >>= 7
		if n > 0 {
			d |= 0x80
		}
		b = append(b, d)
		if n == 0 {
			return b
		}
	}
}

func appendString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

// appendConnect encodes a clean-session 3.1.1 CONNECT.
func appendConnect(b []byte, p connectParams) []byte {
	flags := byte(0x02) // clean session
	n := 10 + 2 + len(p.ClientID)
	if p.Username != "" {
		flags |= 0x80
		n += 2 + len(p.Username)
	}
	if p.Password != "" {
		flags |= 0x40
		n += 2 + len(p.Password)
	}
	ka := int(p.Keepalive / time.Second)
	b = append(b, pktConnect<<4)
	b = appendLength(b, n)
	b = appendString(b, "MQTT")
	b = append(b, 4, flags)
	b = binary.BigEndian.AppendUint16(b, uint16(ka))
	b = appendString(b, p.ClientID)
	if p.Username != "" {
		b = appendString(b, p.Username)
	}
	if p.Password != "" {
		b = appendString(b, p.Password)
	}
	return b
}

// appendPublish encodes a PUBLISH; pid is used only at QoS 1.
func appendPublish(b []byte, topic string, payload []byte, qos byte, pid uint16) []byte {
	n := 2 + len(topic) + len(payload)
	if qos > 0 {
		n += 2
	}
	b = append(b, pktPublish<<4|qos<<1)
	b = appendLength(b, n)
	b = appendString(b, topic)
	if qos > 0 {
		b = binary.BigEndian.AppendUint16(b, pid)
	}
	return append(b, payload...)
}

func appendPuback(b []byte, pid uint16) []byte {
	return binary.BigEndian.AppendUint16(append(b, pktPuback<<4, 2), pid)
}

func appendSubscribe(b []byte, pid uint16, filter string, qos byte) []byte {
	b = append(b, pktSubscribe<<4|0x02)
	b = appendLength(b, 2+2+len(filter)+1)
	b = binary.BigEndian.AppendUint16(b, pid)
	b = appendString(b, filter)
	return append(b, qos)
}

// parsePublish splits a PUBLISH body into topic, packet id (QoS > 0) and
// payload.
func parsePublish(first byte, body []byte) (topic, payload []byte, qos byte, pid uint16, err error) {
	qos = (first >> 1) & 3
	if len(body) < 2 {
		return nil, nil, 0, 0, errors.New("short PUBLISH")
	}
	tl := int(binary.BigEndian.Uint16(body))
	if len(body) < 2+tl {
		return nil, nil, 0, 0, errors.New("short PUBLISH topic")
	}
	topic, rest := body[2:2+tl], body[2+tl:]
	if qos > 0 {
		if len(rest) < 2 {
			return nil, nil, 0, 0, errors.New("short PUBLISH packet id")
		}
		pid, rest = binary.BigEndian.Uint16(rest), rest[2:]
	}
	return topic, rest, qos, pid, nil
}

// subscribe sends a SUBSCRIBE and waits for its SUBACK; it must be called
// before the connection's read loop starts.
func (c *mqttConn) subscribe(ctx context.Context, filter string, qos byte) error {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(10 * time.Second)
	}
	_ = c.nc.SetDeadline(deadline)
	defer c.nc.SetDeadline(time.Time{})
	if err := c.write(appendSubscribe(nil, 1, filter, qos)); err != nil {
		return fmt.Errorf("subscribe to %q: %w", filter, err)
	}
	for {
		first, body, err := c.readPacket()
		if err != nil {
			return fmt.Errorf("subscribe to %q: read SUBACK: %w", filter, err)
		}
		if first>>4 != pktSuback {
			continue // a retained or early message; the tap does not need it
		}
		if len(body) != 3 || body[2] > 2 {
			return fmt.Errorf("subscribe to %q: refused (SUBACK %x)", filter, body)
		}
		return nil
	}
}
