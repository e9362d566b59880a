package uplink

import (
	"errors"
	"fmt"
	"time"

	"github.com/eclipse/paho.mqtt.golang/packets"
	"github.com/edgegw/edgegw/secrets"
)

// State is where a device's cloud session is.
type State string

// Session states.
const (
	StateIdle       State = "idle"        // registered; the manager is not running yet
	StateConnecting State = "connecting"  // an attempt is in progress (or waiting for the connect budget)
	StateConnected  State = "connected"   // the session is up and draining
	StateBackoff    State = "backoff"     // waiting before the next attempt
	StateAuthFailed State = "auth-failed" // the cloud refused the login; retried slowly
	StateStopped    State = "stopped"     // removed, or the manager stopped
)

// SessionStatus is a snapshot of one device's session. It holds no secret.
type SessionStatus struct {
	Device  secrets.DeviceID
	Dialect secrets.Dialect
	State   State
	// LastError is the last connection or delivery error (empty when none).
	LastError string
	// Attempts counts connection attempts, Connects the successful ones.
	Attempts, Connects uint64
	// LastConnect is when the last successful connection came up.
	LastConnect time.Time
	// NextAttempt is when the next attempt is due (backoff, auth-failed).
	NextAttempt time.Time
	// ClientID is the MQTT clientId of the current or last attempt.
	ClientID string
	// InFlight is the number of messages published but not yet
	// acknowledged on the current connection.
	InFlight int
	// LastPuback is when the cloud last acknowledged a message.
	LastPuback time.Time
	// Sent counts messages delivered (QoS 1: PUBACKed; QoS 0: written).
	Sent uint64
	// Resent counts messages published again after a reconnect because
	// their acknowledgement had not arrived: the cloud may see them twice.
	Resent uint64
	// DeadLettered counts messages the cloud would never accept.
	DeadLettered uint64
	// Expired counts time-critical messages dropped, by class, because
	// their TTL passed before they could be sent (express.go).
	Expired ExpiredCounts
	// Subscriptions is the number of topic filters mirrored to the cloud.
	Subscriptions int
}

// ConnectError is a failed connection attempt: a CONNACK refusal (Code is
// the MQTT 3.1.1 return code) or a failure before any CONNACK (Code 0:
// network, TLS, timeout).
type ConnectError struct {
	Code byte
	Err  error
}

func (e *ConnectError) Error() string {
	if e.Code != 0 {
		return fmt.Sprintf("connect: refused with CONNACK %d (%s)", e.Code, connackText(e.Code))
	}
	return "connect: " + e.Err.Error()
}

func (e *ConnectError) Unwrap() error { return e.Err }

// Refused reports whether the cloud refused the login itself (return codes
// 1 protocol, 2 identifier, 4 credentials, 5 not authorized): retrying
// without a change does not help.
func (e *ConnectError) Refused() bool {
	switch e.Code {
	case packets.ErrRefusedBadProtocolVersion, packets.ErrRefusedIDRejected,
		packets.ErrRefusedBadUsernameOrPassword, packets.ErrRefusedNotAuthorised:
		return true
	}
	return false
}

// Unavailable reports CONNACK 3, server unavailable (on Alibaba also a
// malformed clientId or a keepalive out of range).
func (e *ConnectError) Unavailable() bool { return e.Code == packets.ErrRefusedServerUnavailable }

func connackText(rc byte) string {
	if s, ok := packets.ConnackReturnCodes[rc]; ok {
		return s
	}
	return "unknown return code"
}

// Errors returned by the Manager.
var (
	ErrUnknownDevice = errors.New("device is not registered")
	ErrDeviceExists  = errors.New("device is already registered")
	ErrStopped       = errors.New("uplink manager has stopped")
	// errStalled ends a connection whose in-flight messages got no PUBACK
	// within StallTimeout.
	errStalled = errors.New("no PUBACK within the stall timeout")
)
