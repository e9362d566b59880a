// Package spool is edgegw's store-and-forward buffer: a durable per-device
// FIFO of device publishes waiting for the cloud, kept in bbolt, plus an
// in-memory queue with the same contract for gateways run without
// durability.
//
// The contract every implementation keeps: Append returns only once the
// message is stored (for the durable spool: committed and fsynced, commits
// shared between concurrent publishers), and AppendAsync reports the same
// moment through its callback, in the order of the calls; Read returns a device's messages in
// publish order without removing them; Ack removes exactly one message, and
// is called only on the cloud's PUBACK for it.
package spool
