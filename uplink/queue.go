package uplink

import (
	"context"

	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink/spool"
)

// Queue is the per-device FIFO a session drains: the seam between the local
// broker's sink and the cloud sessions. The durable implementation is
// spool.Spool; spool.Mem keeps messages in memory only.
type Queue interface {
	// Append stores m for device and returns once it is stored (durably,
	// for the spool). It assigns m.Seq and returns it.
	Append(ctx context.Context, device secrets.DeviceID, m spool.Message) (uint64, error)
	// Read returns up to max messages of device with Seq > after, oldest
	// first, without removing them.
	Read(device secrets.DeviceID, after uint64, max int) ([]spool.Message, error)
	// Ack removes the message seq of device; it is called only when the
	// cloud acknowledged that exact message. Acking an unknown seq is not
	// an error (it may have been acked before a restart).
	Ack(device secrets.DeviceID, seq uint64) error
	// DeadLetter moves the message seq of device, which the cloud would
	// never accept, to the queue's dead-letter store with reason (no
	// secret in it), in one step: it leaves the queue and needs no Ack.
	// Dead-lettering an unknown seq is not an error.
	DeadLetter(device secrets.DeviceID, seq uint64, reason string) error
	// Notify returns a channel that receives a value (non-blocking send,
	// capacity 1) whenever a message is appended for device.
	Notify(device secrets.DeviceID) <-chan struct{}
}

// LiveQueue is a Queue that can tell the messages already queued from those
// appended later, which ManagerConfig.LiveFirst needs. spool.Spool and
// spool.Mem implement it.
type LiveQueue interface {
	Queue
	// Watermark returns a Seq w such that every message of device queued
	// when Watermark is called (its Append returned) has Seq <= w and is
	// visible to Read, and every message appended after Watermark returns
	// gets a Seq > w.
	Watermark(device secrets.DeviceID) (uint64, error)
}
