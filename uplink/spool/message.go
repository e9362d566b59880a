package spool

import (
	"time"
)

// Message is one device publish waiting to be forwarded to the cloud.
type Message struct {
	// Seq is assigned by the queue on Append: per device, strictly
	// increasing in publish order, never reused (also across restarts).
	Seq      uint64
	Topic    string
	Payload  []byte
	QoS      byte
	Received time.Time // when the local broker accepted it
}
