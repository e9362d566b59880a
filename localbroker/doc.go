// Package localbroker is edgegw's MQTT broker for field devices, built on
// mochi-mqtt/server v2.
//
// Devices connect over TCP, TLS, WebSocket or secure WebSocket; operators
// (edgegw ctl) connect over a unix socket. Every connection is authenticated
// by the Authenticator the caller supplies, and from then on is bound to an
// Identity: a device (productKey, deviceName) or an admin.
//
// # What the broker guarantees
//
//   - Durable before acknowledged. Every publish a device makes that passes
//     the ACL is handed to the Sink inside mochi's OnPublish hook, on the
//     device's own read goroutine, which goes on reading while the sink
//     stores it. The device gets its PUBACK only after the sink reports the
//     publish stored (done(nil)), and its PUBACKs in the order it published
//     (acks.go). When the sink reports an error the publish is not
//     acknowledged (MQTT 3.1.1: no PUBACK, and the device is disconnected so
//     that it resends; MQTT 5: a PUBACK carrying the reason code of a
//     *RejectError, or DISCONNECT 0x89). At most Config.MaxInflight
//     publishes of one connection wait for the sink or their PUBACK; a
//     slow sink then stalls only that device's connection: natural
//     backpressure. A device that does not read its socket holds up only
//     its own PUBACKs.
//   - No local echo. A device's publish goes to the sink only; it is never
//     fanned out to local subscribers (the device itself included), as the
//     clouds never send a device's publish back to it.
//   - Namespaces hold. A device may publish and subscribe only to the topic
//     forms its cloud gives it for its own identity (the catalogue in
//     secrets/topics.go, for Identity.Dialect), plus receiving its product's
//     /broadcast/{productKey}/….
//     Only admin identities may use $edgegw/admin/: publish to
//     AdminRequestTopic, subscribe under $edgegw/admin/. The ACL is checked on
//     publish, on subscribe and again on every delivery.
//   - A device's refused publish is acknowledged and dropped, never answered
//     with a disconnect (which made firmware reconnect and resend for
//     ever): MQTT 5 gets PUBACK 0x87, MQTT 3.1.1 a plain PUBACK (it has no
//     negative one), QoS 0 is dropped; each refusal is counted and logged at
//     most once per device and minute. A denied subscription gets return
//     code 0x80 (3.1.1) or 0x87 (5) in the SUBACK.
//   - Downlink reaches only the addressed device: Broker.Deliver writes to the
//     sessions of that one device whose subscriptions match, or that are
//     server-subscribed (Identity.ServerSubscribed: firmware relying on
//     Alibaba's _ss=1, every EnOS device), never through the broker-wide
//     fan-out (which would also reach every other device of the product
//     subscribed to a /broadcast/ topic).
//
// # Protocol choices
//
// QoS is capped at 1, as on both clouds. A QoS 2 PUBLISH closes the
// connection (MQTT 5 clients are told the maximum QoS in the CONNACK and get
// DISCONNECT 0x9B first) rather than being acknowledged with the wrong packet.
// Retained messages are not supported, as on both clouds: a retained publish
// is accepted, handed to the Sink with Message.Retain set (the uplink must
// publish it as a normal message) and never stored. A CONNECT whose will topic lies outside the device's namespace is
// refused (CONNACK 5); admin identities may not set a will at all; wills are
// delivered locally only and are never handed to the Sink, because neither
// cloud supports them.
//
// Sessions belong to identities: mochi's session key is the identity plus
// the client identifier (sessionKey). A second connection of the same
// identity with the same client identifier takes the session over and
// disconnects the first (mochi's behaviour); another identity using the same
// client identifier gets a separate session, so no device can inherit
// another's subscriptions or queued messages, take its session over, or lock
// it out by holding its client identifier. Persistent sessions expire
// Config.SessionExpiry after their connection ends (MQTT 5 clients may ask
// for less).
//
// Subscriptions are bounded per device (Config.MaxSubscriptions), across all
// its sessions including offline persistent ones; filters beyond the bound
// are refused in the SUBACK (0x80; MQTT 5: 0x97 quota exceeded), counted and
// logged once per device and minute, and not reported to the Observer.
//
// Admin requests (publishes by an admin identity to AdminRequestTopic) are
// acknowledged, never fanned out (they may carry secrets) and handed to the
// AdminHandler after the PUBACK, on the admin connection's read goroutine. An
// MQTT 5 Response Topic must lie under $edgegw/admin/.
//
// # Lifecycle
//
// New validates the configuration; Run binds every listener (returning the
// first binding error, naming the listener), serves until its context ends,
// then shuts down within Config.ShutdownTimeout: it stops accepting,
// disconnects clients in parallel with bounded writes, closes mochi and only
// as a last resort cancels the context given to the Sink. mochi's own Close
// can hang while many clients disconnect; Run never waits on it unbounded.
//
// The broker writes its own listeners instead of mochi's: they bind in Run
// (so errors are returned, and ":0" ports can be read back with Addrs), keep
// accepting after temporary errors such as EMFILE, put a deadline on the TLS
// handshake and the CONNECT packet, and create unix sockets with the
// configured mode without a window in which they are reachable with a wider
// one.
package localbroker
