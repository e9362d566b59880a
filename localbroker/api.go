package localbroker

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/edgegw/edgegw/secrets"
)

// Admin topics. Only admin identities may use anything under AdminTopicPrefix.
const (
	// AdminTopicPrefix is the namespace reserved for admin identities.
	AdminTopicPrefix = "$edgegw/admin/"
	// AdminRequestTopic is the one topic admin identities may publish to.
	AdminRequestTopic = "$edgegw/admin/v1/request"
	// AdminResponseTopic is where replies go when a request names no MQTT 5
	// Response Topic.
	AdminResponseTopic = "$edgegw/admin/v1/response"
)

// Authentication methods reported in Identity.Method.
const (
	MethodSigned   = "signed"   // cloud-style signed credentials
	MethodPassword = "password" // a local password set by the operator
	MethodCert     = "cert"     // a TLS client certificate
	MethodUnix     = "unix"     // a connection on the unix socket
	MethodAdmin    = "admin"    // an admin user name and password
)

// Transports reported in ConnectRequest.Transport.
const (
	TransportTCP  = "tcp"
	TransportTLS  = "tls"
	TransportWS   = "ws"
	TransportWSS  = "wss"
	TransportUnix = "unix"
)

// Identity is who a connection authenticated as: a device (DeviceID set,
// Admin false) or an admin (Admin true; DeviceID is ignored).
type Identity struct {
	secrets.DeviceID
	// ServerSubscribed means the connection receives every downlink for
	// its device without subscribing, as the cloud does for firmware that
	// relies on server-side subscription (Alibaba "_ss=1" in the clientId,
	// every EnOS device). Downlinks matching none of its subscriptions
	// arrive at the QoS the cloud used (at most 1).
	ServerSubscribed bool
	// Dialect is the cloud of the device's product: it may use only the
	// topic forms that cloud gives (secrets.DeviceID.TopicForm). Empty
	// allows the forms of either cloud.
	Dialect secrets.Dialect
	Admin   bool
	Name    string // admin user name, or "unix" for the unix socket
	Method  string // one of the Method constants
	// Provision, when set, makes the connection a device's self-activation
	// login (EnOS securemode=3, Alibaba authType=register) rather than a
	// session: see Provision.
	Provision *Provision
}

// DefaultProvisionHold is how long a provisioning connection stays open
// after its push when Provision.Hold is zero.
const DefaultProvisionHold = 30 * time.Second

// Provision is what a device's self-activation login gets instead of a
// session, as the clouds do it (docs/protocol.md §6): the broker pushes
// Payload on Topic at QoS 0 right after the CONNACK, to that connection
// only and without a SUBSCRIBE, and closes the connection Hold later (or
// when the device leaves first). The connection is not a session of the
// device: it receives no downlink, it is not reported to the Observer, it
// may subscribe only to Topic, and its publishes are acknowledged and
// dropped (those on Reply silently, others logged as refused). It leaves
// nothing behind: its clean session is its own, apart from the device's
// normal sessions even when the client identifier is the same, and a
// will is discarded.
type Provision struct {
	// Topic is where Payload is pushed, e.g.
	// /ext/session/{pk}/{dk}/thing/activate/info or /ext/register.
	Topic string
	// Payload carries the deviceSecret. It is a Secret so that no log line
	// or error can print it; the broker reveals it only in the PUBLISH.
	Payload secrets.Secret
	// Reply is a topic the device may answer on (EnOS
	// .../activate/info_reply); empty for none.
	Reply string
	// Hold is how long the connection stays open after the push; zero
	// means DefaultProvisionHold.
	Hold time.Duration
}

// String names the identity for logs: "pk/dn", "pk/dn (activation)" or
// "admin:name".
func (id Identity) String() string {
	if id.Admin {
		return "admin:" + id.Name
	}
	if id.Provision != nil {
		return id.DeviceID.String() + " (activation)"
	}
	return id.DeviceID.String()
}

// UnixPeer is the process at the other end of a unix socket connection, as
// the kernel reports it (SO_PEERCRED).
type UnixPeer struct {
	PID int32
	UID uint32
	GID uint32
}

// ConnectRequest is what a connecting client presented.
type ConnectRequest struct {
	ClientID        string // as sent; empty if the client asked the broker to assign one
	Username        string
	Password        secrets.Secret
	ProtocolVersion byte // 3 (3.1), 4 (3.1.1) or 5
	Keepalive       uint16
	Listener        string // listener ID (the configured URL, or "inherited:NAME/i")
	Transport       string // one of the Transport constants
	// PeerCertificates is the verified client certificate chain on tls and
	// wss listeners whose TLS config requests client certificates; nil
	// otherwise. The handshake is complete when Authenticate is called.
	PeerCertificates []*x509.Certificate
	// Peer is the connecting process on unix sockets (Linux only); nil
	// otherwise.
	Peer   *UnixPeer
	Remote string // remote address
}

// Authenticator decides who a connection is. It runs on the connection's
// goroutine before the CONNACK; it must not block for long. Errors it returns
// are logged, so they must not contain secrets.
type Authenticator interface {
	Authenticate(ConnectRequest) (Identity, error)
}

// MQTT 3.1.1 CONNACK return codes for Refusal.Code. MQTT 5 clients receive
// the matching 5.0 reason code (0x84, 0x85, 0x88, 0x86, 0x87).
const (
	RefuseProtocolVersion    byte = 1
	RefuseIdentifierRejected byte = 2
	RefuseServerUnavailable  byte = 3
	RefuseBadCredentials     byte = 4
	RefuseNotAuthorized      byte = 5
)

// Refusal is an error an Authenticator returns (or wraps) to choose the
// CONNACK code. Any other error refuses with RefuseNotAuthorized.
type Refusal struct {
	Code   byte   // an MQTT 3.1.1 CONNACK return code, 1–5
	Reason string // logged; never sent to the client; no secrets
}

func (r *Refusal) Error() string {
	return fmt.Sprintf("connection refused (code %d): %s", r.Code, r.Reason)
}

// Message is one publish a device made, as handed to the Sink.
type Message struct {
	Device   Identity
	ClientID string
	Topic    string
	// Payload is the broker's own copy; the sink may keep it but must not
	// modify it.
	Payload []byte
	QoS     byte // 0 or 1
	// Retain is the flag the device set. The broker never retains; the
	// uplink should forward the message as a normal one.
	Retain   bool
	Received time.Time
}

// Sink receives every accepted device publish. Publish is called inside
// mochi's OnPublish hook on the device's read goroutine and should return
// as soon as the message is handed over (it may block, e.g. on a full
// queue: that stalls only this device's connection). It reports the
// outcome by calling done exactly once, from any goroutine, possibly before
// Publish returns: nil once the message is stored (durably, for a spool),
// or the reason it was not (see RejectError). done must not block: it may
// run on a goroutine every device waits for, such as a spool's writer.
// The device's PUBACK is written only after done(nil), and PUBACKs go out
// in the order the device published, whatever order the calls to done
// come in; after an error the publish is not acknowledged (a QoS 0 message
// is simply dropped). ctx is cancelled only when a shutdown runs out of
// time.
type Sink interface {
	Publish(ctx context.Context, m Message, done func(error))
}

// MQTT 5 PUBACK reason codes a Sink may report through RejectError.
const (
	ReasonUnspecifiedError       byte = 0x80
	ReasonImplementationSpecific byte = 0x83
	ReasonNotAuthorized          byte = 0x87
	ReasonTopicNameInvalid       byte = 0x90
	ReasonQuotaExceeded          byte = 0x97
	ReasonPayloadFormatInvalid   byte = 0x99
)

// RejectError is an error a Sink reports (or wraps) to refuse a publish from
// an MQTT 5 client with a PUBACK carrying Code (one of the Reason constants;
// anything else is sent as ReasonUnspecifiedError). The client then treats
// the message as finished and will not resend it, so use it for permanent
// refusals such as a full spool under a reject policy. Any other sink error,
// and every sink error towards an MQTT 3.1.1 client, suppresses the PUBACK
// so that the client resends after reconnecting.
type RejectError struct {
	Code byte
	Err  error
}

// Reject returns a *RejectError with the given MQTT 5 reason code.
func Reject(code byte, err error) error { return &RejectError{Code: code, Err: err} }

func (e *RejectError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("publish rejected (reason 0x%02x)", e.Code)
	}
	return fmt.Sprintf("publish rejected (reason 0x%02x): %v", e.Code, e.Err)
}

func (e *RejectError) Unwrap() error { return e.Err }

// Observer is told about connections and subscriptions, e.g. to mirror a
// device's subscriptions on its cloud session. Calls are made on broker
// goroutines and must not block. Events about one connection arrive in order;
// the same filter may be reported more than once (treat events as
// idempotent). When a clean session ends, Unsubscribed for its remaining
// filters follows Disconnected; a persistent session keeps its subscriptions
// across disconnects until it expires, then Unsubscribed is reported.
type Observer interface {
	Connected(id Identity, clientID string)
	Disconnected(id Identity, clientID string, err error)
	Subscribed(id Identity, clientID string, filters []string)
	Unsubscribed(id Identity, clientID string, filters []string)
}

// AdminRequest is one publish by an admin identity to AdminRequestTopic.
type AdminRequest struct {
	ClientID        string
	Topic           string
	Payload         []byte
	ResponseTopic   string // MQTT 5 Response Topic; empty on 3.1.1; always under AdminTopicPrefix
	CorrelationData []byte // MQTT 5 Correlation Data, echo it in the reply
}

// AdminHandler handles admin requests. HandleAdmin runs after the request's
// PUBACK on the admin connection's read goroutine, so requests from one
// connection are handled in order; it may block that connection only.
// Reply with Broker.PublishAdmin.
type AdminHandler interface {
	HandleAdmin(id Identity, req AdminRequest)
}

// Errors returned by Deliver, PublishAdmin and Run (wrapped with context).
var (
	ErrNotRunning      = errors.New("broker not running")
	ErrNotConnected    = errors.New("device has no session on the broker")
	ErrNotSubscribed   = errors.New("no session of the device is subscribed to the topic")
	ErrTopicNotAllowed = errors.New("topic outside the namespace")
	ErrInflightFull    = errors.New("too many unacknowledged messages for the device")
	ErrAlreadyStarted  = errors.New("broker already started")
)
