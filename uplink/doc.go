// Package uplink keeps one signed MQTT session per registered device to the
// cloud IoT platform (Alibaba Cloud IoT Platform or EnOS IoT Hub) and drains
// each device's queue to it, in order, deleting a message only when the
// cloud acknowledged that exact message.
//
// # Sessions
//
// A Manager owns one session per device and never more: the sessions of one
// identity are strictly sequential (the old paho client is disconnected and
// its socket closed before the next one dials), also across Update and
// Remove/Add. Each connection attempt builds a new paho.mqtt.golang client
// with fresh credentials (the clientId's timestamp is the injected clock's
// now in milliseconds and the password is signed again), configured for
// exact acknowledgements (docs/architecture.md §5.2): AutoReconnect off,
// CleanSession on, MQTT 3.1.1, OrderMatters off, ConnectRetry off; one
// function builds these options for sessions and activation alike.
// Reconnection is the session's own loop: exponential backoff with full
// jitter, reset after a connection that stayed up (or saw a PUBACK);
// CONNACK refusals (return codes 1, 2, 4, 5) put the device in state
// auth-failed and are retried slowly; return code 3 backs off long. A
// gateway-wide token bucket paces all connection attempts, and EnOS devices
// additionally keep under the cloud's "4 connects in 2 minutes" block.
//
// # Drain
//
// A connected session reads its device's Queue in order and publishes with
// a bounded in-flight window. A QoS 1 message is acknowledged to the queue
// (Queue.Ack) only when its paho token completes without error, which with
// this configuration happens only on the real PUBACK; when the connection is
// lost every pending token fails, and the next connection resends from the
// oldest unacknowledged message (at least once: duplicates are possible,
// reordering is not; each connection starts with Queue.Read after 0, so
// sequence numbers start at 1). paho's Publish can block for WriteTimeout
// when a connection dies under it, so each connection publishes from a
// helper goroutine and the drain loop always sees loss, stalls and
// shutdown at once; after a Publish that fails immediately nothing more is
// published on that connection. A QoS 0 message is published at QoS 0 and acknowledged
// once paho wrote it to the connection. Publishing is paced by a per-device
// rate (the cloud's limit, 30 msg/s on Alibaba) and optional gateway-wide
// message and byte rates shared fairly by all devices (reservations are
// served in request order, so backlogged devices take turns). A session with
// messages in flight that sees no PUBACK within StallTimeout is torn down and
// reconnected even though TCP looks up. A message the cloud can never accept
// (larger than the dialect's limit, or an invalid or foreign topic) is moved
// to the queue's dead letters (Queue.DeadLetter, one step, no Ack), so it
// does not block the queue.
//
// # Downlink
//
// Subscriptions a device makes locally are mirrored on its cloud session with
// Manager.Subscribe, remembered, and restored on every reconnect. Messages the
// cloud sends are handed to the Downlink callback.
package uplink
