// Package rawmqtt encodes and decodes single MQTT packets with mochi's
// packets package, for tests that must control exactly what a client puts
// on the wire (packet ids, flags, the order of packets), as real device
// firmware does and a client library would not let a test do.
package rawmqtt

import (
	"bufio"
	"bytes"
	"fmt"
	"io"

	"github.com/mochi-mqtt/server/v2/packets"
)

// Encode returns the wire form of a client packet: CONNECT, SUBSCRIBE,
// UNSUBSCRIBE (their QoS 1 fixed-header flag is set), PUBLISH, PUBACK,
// PINGREQ or DISCONNECT.
func Encode(pk packets.Packet) ([]byte, error) {
	var buf bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&buf)
	case packets.Subscribe:
		pk.FixedHeader.Qos = 1
		err = pk.SubscribeEncode(&buf)
	case packets.Unsubscribe:
		pk.FixedHeader.Qos = 1
		err = pk.UnsubscribeEncode(&buf)
	case packets.Publish:
		err = pk.PublishEncode(&buf)
	case packets.Puback:
		err = pk.PubackEncode(&buf)
	case packets.Pingreq:
		err = pk.PingreqEncode(&buf)
	case packets.Disconnect:
		err = pk.DisconnectEncode(&buf)
	default:
		err = fmt.Errorf("rawmqtt: cannot encode packet type %d", pk.FixedHeader.Type)
	}
	return buf.Bytes(), err
}

// Read reads and decodes the next packet a broker sent: CONNACK, PUBLISH,
// SUBACK, UNSUBACK, PUBACK or PINGRESP, for protocol level 3/4 (MQTT 3.x).
func Read(r *bufio.Reader) (packets.Packet, error) {
	var pk packets.Packet
	pk.ProtocolVersion = 4
	hb, err := r.ReadByte()
	if err != nil {
		return pk, err
	}
	if err := pk.FixedHeader.Decode(hb); err != nil {
		return pk, err
	}
	n, _, err := packets.DecodeLength(r)
	if err != nil {
		return pk, err
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return pk, err
	}
	switch pk.FixedHeader.Type {
	case packets.Connack:
		err = pk.ConnackDecode(body)
	case packets.Publish:
		err = pk.PublishDecode(body)
	case packets.Suback:
		err = pk.SubackDecode(body)
	case packets.Unsuback:
		err = pk.UnsubackDecode(body)
	case packets.Puback:
		err = pk.PubackDecode(body)
	case packets.Pingresp:
	default:
		err = fmt.Errorf("rawmqtt: unexpected packet type %d from the broker", pk.FixedHeader.Type)
	}
	return pk, err
}
