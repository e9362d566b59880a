// Package cloudsim is a simulated cloud IoT platform (Alibaba Cloud IoT
// Platform or EnOS IoT Hub) built on the mochi MQTT broker. It is as strict
// as the real clouds, so that a gateway which passes against it means
// something:
//
//   - CONNECT credentials are parsed and verified with package secrets,
//     for both dialects and every sign method. CONNACK return codes are the
//     clouds' 3.1.1 codes: 3 for a malformed clientId, an out-of-range
//     keepalive or a securemode that does not fit the transport, 4 for
//     malformed credential fields (for example an unknown signmethod), 5
//     for a wrong signature or an unknown device.
//   - Only MQTT 3.1 and 3.1.1 are accepted; a 5.0 CONNECT is refused with
//     reason 0x84 (unsupported protocol version). Persistent sessions are
//     not simulated: a clean-session=0 CONNECT is accepted with session
//     present 0 and nothing is kept after the connection ends. Like the
//     clouds, the simulator never sends a DISCONNECT packet (3.1.1 has
//     none from server to client): it closes the connection.
//   - A second CONNECT for the same device (productKey, deviceName), even
//     with another clientId, kicks the first session (a takeover).
//   - A device may only use its own topics, as the simulated cloud's
//     catalogue gives them, in their direction (secrets.DeviceID.TopicForm
//     for the Sim's cloud only, unless Config.AnyDialectTopics:
//     /ota/device/…, /ext/ntp/…, /shadow/…, /ext/rrpc/… and custom topics
//     are Alibaba's only). Filters with '+'
//     for the identity ("/sys/+/+/thing/service/+") are granted and only
//     ever deliver the device's own topics. A forbidden PUBLISH closes the
//     connection, at QoS 0 and 1 alike; a forbidden SUBSCRIBE filter is
//     answered with 0x80. A device's own publishes are never echoed back
//     to it. QoS 2 is not
//     supported: a QoS 2 PUBLISH closes the connection and subscriptions are
//     granted at most QoS 1.
//   - Will messages are not supported (Alibaba documents this for 3.1.1):
//     a CONNECT carrying a will is refused with return code 3. Refusing,
//     rather than silently ignoring it, surfaces a gateway that sets a will
//     although neither cloud supports wills (docs/protocol.md §8). Retained messages are not
//     supported either: the retain flag of every PUBLISH is cleared and
//     nothing is stored.
//   - Alink request topics under /sys/{pk}/{dn}/ (property and event posts,
//     EnOS measurepoint posts, …) are answered on "<topic>_reply" when the
//     device subscribed to that topic, unless the request says sys.ack=0.
//     Malformed JSON is answered with the cloud's error code (Alibaba 460,
//     EnOS 1220).
//   - Dynamic activation: EnOS securemode=3 (productSecret) for a
//     registered device without a secret publishes a fresh deviceSecret on
//     /ext/session/{pk}/{dk}/thing/activate/info right after the CONNACK;
//     the device counts as activated from then on and a second securemode=3
//     login is refused with 5. Alibaba authType=register (TLS or wss only)
//     publishes {"productKey","deviceName","deviceSecret"} on /ext/register
//     and closes the connection shortly after; registering again before the
//     first normal login issues a new secret, afterwards it is refused with
//     5. EnOS devices are pushed their downstream command topics
//     (thing/service/#, rrpc/request/+, …) without a SUBSCRIBE, as EnOS
//     does. An Alibaba session whose clientId carries _ss=1 is subscribed
//     server-side to the catalogue's system downlinks (/sys/{pk}/{dn}/#
//     with replies, OTA notices, shadow, NTP responses, synchronous RRPC,
//     errors); without _ss it gets only what it subscribed to.
//   - NTP (Alibaba): /ext/ntp/{pk}/{dn}/request {"deviceSendTime":"ms"} is
//     answered on …/response with deviceSendTime, serverRecvTime and
//     serverSendTime (ms strings, from Config.Now).
//   - RRPC (Sim.RRPC, POST /rrpc): synchronous service and raw calls on
//     /ext/rrpc/{id}/sys/{pk}/{dn}/…, custom-topic RRPC on
//     /ext/rrpc/{id}/{pk}/{dn}/user/… (only to sessions with ext bit 0) and
//     system RRPC on /sys/{pk}/{dn}/rrpc/request/{id}; the reply is matched
//     by its topic (message id), the caller waits at most 8 s.
//   - A per-device upstream rate limit (token bucket; Alibaba default 30
//     messages/s) acknowledges excess messages but drops and counts them.
//
// An observer account (Config.ObserverUser) may subscribe to anything
// (e.g. '#') and publish to any device's topics; it is how tests and people
// watch and drive the "cloud". It is not a device: its messages are not
// recorded, and the Refuse and Drop knobs leave it alone (Down does not).
// Every accepted device message is recorded (Messages, WaitFor) and
// counted (Stats); counters are updated before the client can observe the
// effect (CONNACK, PUBACK, reply), so a test may check them right after. Fault knobs (Refuse, Drop,
// Stall, Delay, Down, Up) are available on the Sim and over a small HTTP
// JSON API (ControlHandler), which the "edgegw cloudsim" subcommand (Main)
// serves on -control.
package cloudsim
