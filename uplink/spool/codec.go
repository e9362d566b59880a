package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"time"

	"github.com/edgegw/edgegw/secrets"
)

// The spool file layout (format version 1):
//
//	meta      "magic" → "edgegw-spool", "version" → "1"
//	messages  seq (8 bytes big-endian) → message record (names its device)
//	          bucket sequence = the last seq assigned
//	dead      devPrefix(device) ‖ seq (8 bytes BE) → dead-letter record
//	devices   "productKey/deviceName" → device counters (drops, rejections)
//
// Messages form one log in Seq order: Seq is a single counter for the
// whole spool, so it is strictly increasing per device and never reused,
// even for a device removed and added again. Appends of many devices land
// on the last pages of the tree, and a commit writes a few pages instead
// of one page per device (measured: with device-prefixed keys a commit of
// 76 messages from 76 devices took 24 ms, random page writes). The
// per-device order is kept by an index in memory (8 bytes per queued
// message), rebuilt by Open from the log.
//
// devPrefix is a 2-byte big-endian length followed by the device string,
// so no device's prefix is a prefix of another's.
var (
	bucketMeta     = []byte("meta")
	bucketDevices  = []byte("devices")
	bucketMessages = []byte("messages")
	bucketDead     = []byte("dead")

	metaMagicKey   = []byte("magic")
	metaVersionKey = []byte("version")
	metaMagic      = []byte("edgegw-spool")
)

const (
	formatVersion = "1"
	recordV1      = 1
)

var errRecord = errors.New("malformed record")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// DeadLetter is a message the cloud will never accept, kept for
// inspection instead of blocking its device's queue.
type DeadLetter struct {
	Message
	Reason string    // why it was dead-lettered
	At     time.Time // when
}

func devPrefix(id secrets.DeviceID) []byte {
	s := id.String()
	b := make([]byte, 2+len(s), 2+len(s)+8)
	binary.BigEndian.PutUint16(b, uint16(len(s)))
	copy(b[2:], s)
	return b
}

func seqKey(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, seq) }

func deadKey(prefix []byte, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(append(make([]byte, 0, len(prefix)+8), prefix...), seq)
}

func keySeq(k []byte) uint64 { return binary.BigEndian.Uint64(k[len(k)-8:]) }

func isDevKey(k, prefix []byte) bool {
	return len(k) == len(prefix)+8 && string(k[:len(prefix)]) == string(prefix)
}

func putTime(b []byte, t time.Time) {
	n := int64(math.MinInt64)
	if !t.IsZero() {
		n = t.UnixNano()
	}
	binary.BigEndian.PutUint64(b, uint64(n))
}

func getTime(b []byte) time.Time {
	n := int64(binary.BigEndian.Uint64(b))
	if n == math.MinInt64 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// Message record: version, qos, received (8), CRC-32C (4) of the record
// without the CRC field, device length (2), topic length (2), device,
// topic, payload. bbolt has no checksums on data pages; the CRC turns bit
// rot into a counted drop (ReasonCorrupt) instead of garbage sent to the
// cloud.
const msgHeader = 18

func recordCRC(v []byte) uint32 {
	c := crc32.Update(0, castagnoli, v[:10])
	return crc32.Update(c, castagnoli, v[14:])
}

func encodeMessage(device string, m *Message) []byte {
	b := make([]byte, msgHeader, msgHeader+len(device)+len(m.Topic)+len(m.Payload))
	b[0] = recordV1
	b[1] = m.QoS
	putTime(b[2:], m.Received)
	binary.BigEndian.PutUint16(b[14:], uint16(len(device)))
	binary.BigEndian.PutUint16(b[16:], uint16(len(m.Topic)))
	b = append(b, device...)
	b = append(b, m.Topic...)
	b = append(b, m.Payload...)
	binary.BigEndian.PutUint32(b[10:], recordCRC(b))
	return b
}

type rawMessage struct {
	device, topic, payload []byte // sub-slices of the record
	qos                    byte
	received               time.Time
}

func parseMessage(v []byte) (rawMessage, error) {
	if len(v) < msgHeader || v[0] != recordV1 {
		return rawMessage{}, fmt.Errorf("message: %w", errRecord)
	}
	if recordCRC(v) != binary.BigEndian.Uint32(v[10:]) {
		return rawMessage{}, fmt.Errorf("message: %w: checksum mismatch", errRecord)
	}
	dl, tl := int(binary.BigEndian.Uint16(v[14:])), int(binary.BigEndian.Uint16(v[16:]))
	if dl+tl > len(v)-msgHeader {
		return rawMessage{}, fmt.Errorf("message: %w: lengths", errRecord)
	}
	rest := v[msgHeader:]
	return rawMessage{
		device:   rest[:dl],
		topic:    rest[dl : dl+tl],
		payload:  rest[dl+tl:],
		qos:      v[1],
		received: getTime(v[2:]),
	}, nil
}

func decodeMessage(seq uint64, v []byte) (Message, error) {
	r, err := parseMessage(v)
	if err != nil {
		return Message{}, err
	}
	return Message{Seq: seq, Topic: string(r.topic), Payload: clone(r.payload), QoS: r.qos, Received: r.received}, nil
}

// rawSize is the budget size of a stored message record: Size of the
// message it encodes. It is computed from lengths alone so that a damaged
// record is accounted the same way whenever it is looked at.
func rawSize(v []byte) int64 {
	if len(v) < msgHeader {
		return MessageOverhead
	}
	n := len(v) - msgHeader - int(binary.BigEndian.Uint16(v[14:]))
	return int64(max(n, 0)) + MessageOverhead
}

// rawReceived is the Received time of a message record, zero if the record
// is damaged (a damaged record sorts as the oldest).
func rawReceived(v []byte) time.Time {
	r, err := parseMessage(v)
	if err != nil {
		return time.Time{}
	}
	return r.received
}

// Dead-letter record: version, at (8), reason length (2), reason, then
// the message record.
const dlHeader = 11

func encodeDeadLetter(at time.Time, reason string, msgRecord []byte) []byte {
	b := make([]byte, dlHeader, dlHeader+len(reason)+len(msgRecord))
	b[0] = recordV1
	putTime(b[1:], at)
	binary.BigEndian.PutUint16(b[9:], uint16(len(reason)))
	b = append(b, reason...)
	return append(b, msgRecord...)
}

func splitDeadLetter(v []byte) (at time.Time, reason, msg []byte, err error) {
	if len(v) < dlHeader || v[0] != recordV1 {
		return time.Time{}, nil, nil, fmt.Errorf("dead letter: %w", errRecord)
	}
	n := int(binary.BigEndian.Uint16(v[9:]))
	if n > len(v)-dlHeader {
		return time.Time{}, nil, nil, fmt.Errorf("dead letter: %w: reason length", errRecord)
	}
	rest := v[dlHeader:]
	return getTime(v[1:]), rest[:n], rest[n:], nil
}

func decodeDeadLetter(seq uint64, v []byte) (DeadLetter, error) {
	at, reason, msg, err := splitDeadLetter(v)
	if err != nil {
		return DeadLetter{}, err
	}
	m, err := decodeMessage(seq, msg)
	if err != nil {
		return DeadLetter{}, err
	}
	return DeadLetter{Message: m, Reason: string(reason), At: at}, nil
}

// deadLetterSize is the budget size of a dead-letter record (see rawSize).
func deadLetterSize(v []byte) int64 {
	_, _, msg, err := splitDeadLetter(v)
	if err != nil {
		return MessageOverhead
	}
	return rawSize(msg)
}

// Device record: version, dropped (numReasons×8), rejected (8), dlEvicted
// (8), CRC-32C (4) of the rest. Written only when a counter changes.
const devRecordLen = 1 + numReasons*8 + 8 + 8 + 4

func encodeDevice(d *devState) []byte {
	b := make([]byte, devRecordLen)
	b[0] = recordV1
	for i, n := range d.dropped {
		binary.BigEndian.PutUint64(b[1+8*i:], n)
	}
	binary.BigEndian.PutUint64(b[1+8*numReasons:], d.rejected)
	binary.BigEndian.PutUint64(b[9+8*numReasons:], d.dlEvicted)
	binary.BigEndian.PutUint32(b[devRecordLen-4:], crc32.Checksum(b[:devRecordLen-4], castagnoli))
	return b
}

func decodeDevice(v []byte, d *devState) error {
	if len(v) != devRecordLen || v[0] != recordV1 ||
		crc32.Checksum(v[:devRecordLen-4], castagnoli) != binary.BigEndian.Uint32(v[devRecordLen-4:]) {
		return fmt.Errorf("device record: %w", errRecord)
	}
	for i := range d.dropped {
		d.dropped[i] = binary.BigEndian.Uint64(v[1+8*i:])
	}
	d.rejected = binary.BigEndian.Uint64(v[1+8*numReasons:])
	d.dlEvicted = binary.BigEndian.Uint64(v[9+8*numReasons:])
	return nil
}

// parseDeadKey parses a dead-letter key.
func parseDeadKey(k []byte) (secrets.DeviceID, uint64, error) {
	if len(k) < 2 {
		return secrets.DeviceID{}, 0, fmt.Errorf("key %x: %w: too short", k, errRecord)
	}
	n := int(binary.BigEndian.Uint16(k))
	if len(k) != 2+n+8 {
		return secrets.DeviceID{}, 0, fmt.Errorf("key %x: %w: length", k, errRecord)
	}
	id, err := secrets.ParseDeviceID(string(k[2 : 2+n]))
	if err == nil {
		err = validateDevice(id)
	}
	if err != nil {
		return secrets.DeviceID{}, 0, fmt.Errorf("key %x: %w: %v", k, errRecord, err)
	}
	return id, keySeq(k), nil
}

func clone(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append(make([]byte, 0, len(b)), b...)
}
