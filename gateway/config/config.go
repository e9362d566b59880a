// Package config is edgegw's configuration: the types, the defaults, the
// TOML file's decoding and validation, and the value units (durations,
// byte sizes, file modes). Parse and Load read a file over Default and
// report every problem as an *Error naming file, line and key; Validate
// checks a Config built in code. docs/architecture.md describes where the
// configuration fits; packaging/edgegw.toml documents every key.
package config

import (
	"log/slog"
	"path/filepath"
	"time"

	"github.com/edgegw/edgegw/secrets"
)

// Config is edgegw's configuration, read from a TOML file by Parse or
// Load, or built in code from Default.
//
// It holds no secrets: admin passwords and private keys are named by path
// and read by whoever uses them, so a Config may be logged or printed.
// Values that depend on the cloud dialect (sign method, device rate,
// payload limit, endpoint) are left unset here and resolved by the
// Effective* methods.
type Config struct {
	// StateDir holds registry.db, spool.db and (by default) edgegw.key.
	StateDir string `toml:"state_dir"`
	// KeyFile is the registry's encryption key. Empty: see EffectiveKeyFile.
	KeyFile string `toml:"key_file"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `toml:"log_level"`
	// LogFormat is auto (colour text on a terminal, JSON otherwise), text or json.
	LogFormat string `toml:"log_format"`

	Broker   BrokerConfig   `toml:"broker"`
	Cloud    CloudConfig    `toml:"cloud"`
	Spool    SpoolConfig    `toml:"spool"`
	Metrics  MetricsConfig  `toml:"metrics"`
	Shutdown ShutdownConfig `toml:"shutdown"`
}

// BrokerConfig configures the local MQTT broker the field devices use.
type BrokerConfig struct {
	// Listeners are URLs: tcp://host:port, tls://host:port,
	// ws://host:port[/path], wss://host:port[/path], unix:///abs/path.
	// Socket-activated listeners (systemd) replace those of their transport,
	// so the list may be empty when all come from systemd.
	Listeners []string `toml:"listeners"`
	// TLSCert and TLSKey are PEM files for tls:// and wss:// listeners.
	TLSCert string `toml:"tls_cert"`
	TLSKey  string `toml:"tls_key"`
	// ClientCA, when set, makes TLS listeners request and verify client
	// certificates signed by these CAs (needed by the "cert" auth mode).
	ClientCA string `toml:"client_ca"`
	// Auth lists the accepted device authentication modes: "signed"
	// (cloud-style signed credentials), "password" (a local password) and
	// "cert" (a TLS client certificate whose CN names the device).
	Auth []string `toml:"auth"`
	// MaxPacketSize bounds every MQTT packet a client may send.
	MaxPacketSize ByteSize `toml:"max_packet_size"`
	// MaxClients bounds concurrent client connections.
	MaxClients int `toml:"max_clients"`
	// WritesPending bounds each client's queue of outbound packets (what
	// the broker fans out: admin replies, wills; downlinks are written
	// directly).
	WritesPending int `toml:"writes_pending"`
	// UnixSocketMode is the file mode of unix:// listener sockets.
	UnixSocketMode FileMode `toml:"unix_socket_mode"`
	// SessionExpiry is how long a persistent session (MQTT 3.1.1
	// clean=false, or an MQTT 5 session expiry) outlives its connection,
	// holding its subscriptions and queued downlinks in memory; MQTT 5
	// clients may ask for less.
	SessionExpiry Duration `toml:"session_expiry"`
	// MaxSubscriptions bounds the subscriptions one device holds, over all
	// its sessions, and so the filters mirrored to its cloud session;
	// filters beyond it are refused in the SUBACK.
	MaxSubscriptions int `toml:"max_subscriptions"`
	// Admin lists the admin users accepted on network listeners. The unix
	// socket is always admin (guarded by its file mode).
	Admin []AdminUser `toml:"admin"`
}

// AdminUser is an admin identity for network listeners. The password is
// read from PasswordFile; it is never part of the configuration.
type AdminUser struct {
	User         string `toml:"user"`
	PasswordFile string `toml:"password_file"`
}

// CloudConfig configures the per-device sessions to the cloud IoT platform.
type CloudConfig struct {
	// Dialect is aliyun or enos. Products in the registry may override it.
	Dialect secrets.Dialect `toml:"dialect"`
	// Endpoint is tcp|tls|ws|wss://host[:port][/path]; "{productKey}" is
	// replaced per product. Empty: see EffectiveEndpoint.
	Endpoint string `toml:"endpoint"`
	// CAFile adds trusted roots (PEM) for the cloud's server certificate.
	CAFile string `toml:"ca_file"`
	// ClientCert and ClientKey are a gateway-wide client certificate (PEM)
	// for two-way TLS.
	ClientCert string `toml:"client_cert"`
	ClientKey  string `toml:"client_key"`
	// Keepalive is the MQTT keepalive, whole seconds within the dialect's
	// range (aliyun 30s–1200s, enos 60s–300s).
	Keepalive Duration `toml:"keepalive"`
	// SignMethod is the signmethod announced in the clientId. Empty: see
	// EffectiveSignMethod.
	SignMethod secrets.SignMethod `toml:"sign_method"`
	// ClientID is the bare clientId template; {productKey} and {deviceName}
	// are replaced per device. It must contain {deviceName}.
	ClientID string `toml:"client_id"`
	// ConnectRate and ConnectBurst are the gateway-wide budget of CONNECT
	// attempts (a token bucket: per second, and at most at once).
	ConnectRate  float64 `toml:"connect_rate"`
	ConnectBurst int     `toml:"connect_burst"`
	// BackoffMin and BackoffMax bound the jittered exponential backoff
	// between connection attempts of one device.
	BackoffMin Duration `toml:"backoff_min"`
	BackoffMax Duration `toml:"backoff_max"`
	// AuthRetry is how long a device refused for bad credentials (CONNACK
	// 4/5) waits before it is tried again.
	AuthRetry Duration `toml:"auth_retry"`
	// Inflight is each device's window of unacknowledged QoS 1 publishes.
	Inflight int `toml:"inflight"`
	// DeviceRate is messages per second per device, 0 = unlimited. Nil: see
	// EffectiveDeviceRate.
	DeviceRate *float64 `toml:"device_rate,omitempty"`
	// GatewayRate is messages per second across all devices, 0 = unlimited.
	GatewayRate float64 `toml:"gateway_rate"`
	// GatewayBandwidth is payload bytes per second across all devices,
	// 0 = unlimited.
	GatewayBandwidth ByteSize `toml:"gateway_bandwidth"`
	// AckTimeout: a session with messages in flight and no PUBACK for this
	// long is torn down and reconnected.
	AckTimeout Duration `toml:"ack_timeout"`
	// MaxPayload is the largest payload the cloud accepts; larger messages
	// go to the dead-letter store. 0: see EffectiveMaxPayload.
	MaxPayload ByteSize `toml:"max_payload"`
	// NTPTTL, RRPCTTL and ReplyTTL are how long a device's time-critical
	// message may wait for its cloud session: NTP requests, RRPC responses
	// (system and /ext/rrpc), and replies to cloud requests (…_reply). They
	// bypass the device's backlog, and are dropped and counted once older.
	NTPTTL   Duration `toml:"ntp_ttl"`
	RRPCTTL  Duration `toml:"rrpc_ttl"`
	ReplyTTL Duration `toml:"reply_ttl"`
}

// SpoolConfig configures the store-and-forward spool.
type SpoolConfig struct {
	// Durable keeps the spool on disk, committed before a device's PUBACK.
	// false keeps it in memory (lost on restart).
	Durable bool `toml:"durable"`
	// Path is the spool file. Empty: see EffectiveSpoolPath.
	Path string `toml:"path"`
	// Budget bounds the spool's bytes across devices; DeviceBudget per device.
	Budget       ByteSize `toml:"budget"`
	DeviceBudget ByteSize `toml:"device_budget"`
	// Overflow is drop-oldest or reject-new: what happens when a budget is full.
	Overflow string `toml:"overflow"`
	// TTL drops messages older than this; 0 keeps them until delivered.
	TTL Duration `toml:"ttl"`
	// QoS0 spools QoS 0 publishes too (QoS 1 always is).
	QoS0 bool `toml:"qos0"`
	// LiveFirst sends a device's fresh messages ahead of its backlog.
	LiveFirst bool `toml:"live_first"`
}

// MetricsConfig configures the HTTP server for /metrics, /healthz, /readyz.
type MetricsConfig struct {
	// Listen is host:port; empty disables the server.
	Listen string `toml:"listen"`
}

// ShutdownConfig bounds a stop.
type ShutdownConfig struct {
	// Timeout bounds the stop (keep it below systemd's TimeoutStopSec).
	Timeout Duration `toml:"timeout"`
}

// Allowed enumeration values.
const (
	LogFormatAuto = "auto"
	LogFormatText = "text"
	LogFormatJSON = "json"

	AuthSigned   = "signed"
	AuthPassword = "password"
	AuthCert     = "cert"

	OverflowDropOldest = "drop-oldest"
	OverflowRejectNew  = "reject-new"
)

// DefaultAliyunEndpoint is the cloud endpoint used for the aliyun dialect
// when none is configured (the legacy public instance in cn-shanghai).
const DefaultAliyunEndpoint = "tls://{productKey}.iot-as-mqtt.cn-shanghai.aliyuncs.com:8883"

// Default returns the configuration used for every key a file leaves
// out.
func Default() *Config {
	return &Config{
		StateDir:  "/var/lib/edgegw",
		LogLevel:  "info",
		LogFormat: LogFormatAuto,
		Broker: BrokerConfig{
			Listeners:        []string{"tcp://0.0.0.0:1883", "unix:///run/edgegw/admin.sock"},
			Auth:             []string{AuthSigned, AuthPassword, AuthCert},
			MaxPacketSize:    256 * KiB,
			MaxClients:       20000,
			WritesPending:    128,
			UnixSocketMode:   0o660,
			SessionExpiry:    Duration(time.Hour),
			MaxSubscriptions: 100,
		},
		Cloud: CloudConfig{
			Dialect:      secrets.Aliyun,
			Keepalive:    Duration(300 * time.Second),
			ClientID:     "{deviceName}",
			ConnectRate:  50,
			ConnectBurst: 50,
			BackoffMin:   Duration(time.Second),
			BackoffMax:   Duration(2 * time.Minute),
			AuthRetry:    Duration(10 * time.Minute),
			Inflight:     16,
			AckTimeout:   Duration(30 * time.Second),
			NTPTTL:       Duration(5 * time.Second),
			RRPCTTL:      Duration(8 * time.Second),
			ReplyTTL:     Duration(30 * time.Second),
		},
		Spool: SpoolConfig{
			Durable:      true,
			Budget:       1 * GiB,
			DeviceBudget: 64 * MiB,
			Overflow:     OverflowDropOldest,
			QoS0:         true,
		},
		Metrics:  MetricsConfig{Listen: "127.0.0.1:9464"},
		Shutdown: ShutdownConfig{Timeout: Duration(20 * time.Second)},
	}
}

// EffectiveKeyFile returns KeyFile or, when empty,
// $CREDENTIALS_DIRECTORY/edgegw.key when systemd passes credentials, else
// <state_dir>/edgegw.key.
func (c *Config) EffectiveKeyFile() string {
	if c.KeyFile != "" {
		return c.KeyFile
	}
	return secrets.DefaultKeyPath(c.StateDir)
}

// RegistryPath returns the device registry's file, <state_dir>/registry.db.
func (c *Config) RegistryPath() string { return filepath.Join(c.StateDir, "registry.db") }

// EffectiveSpoolPath returns Spool.Path or, when empty, <state_dir>/spool.db.
func (c *Config) EffectiveSpoolPath() string {
	if c.Spool.Path != "" {
		return c.Spool.Path
	}
	return filepath.Join(c.StateDir, "spool.db")
}

// SlogLevel returns LogLevel as a slog.Level (Info for an invalid value,
// which Validate rejects).
func (c *Config) SlogLevel() slog.Level {
	switch c.LogLevel {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}

// EffectiveEndpoint returns Endpoint or, when empty, DefaultAliyunEndpoint
// for aliyun. EnOS has no public default: Validate requires an endpoint.
func (c *CloudConfig) EffectiveEndpoint() string {
	if c.Endpoint == "" && c.Dialect == secrets.Aliyun {
		return DefaultAliyunEndpoint
	}
	return c.Endpoint
}

// EffectiveSignMethod returns SignMethod or, when empty, the dialect's
// default (hmacsha256 for aliyun, sha256 for enos).
func (c *CloudConfig) EffectiveSignMethod() secrets.SignMethod {
	if c.SignMethod != "" {
		return c.SignMethod
	}
	return secrets.DefaultSignMethod(c.Dialect)
}

// EffectiveDeviceRate returns DeviceRate or, when unset, the dialect's
// default: 30 msg/s for aliyun (its per-device upstream limit), 0
// (unlimited) for enos.
func (c *CloudConfig) EffectiveDeviceRate() float64 {
	if c.DeviceRate != nil {
		return *c.DeviceRate
	}
	if c.Dialect == secrets.Aliyun {
		return 30
	}
	return 0
}

// EffectiveMaxPayload returns MaxPayload or, when 0, the dialect's limit:
// 256KiB for aliyun, 512KiB for enos.
func (c *CloudConfig) EffectiveMaxPayload() ByteSize {
	if c.MaxPayload != 0 {
		return c.MaxPayload
	}
	if c.Dialect == secrets.EnOS {
		return 512 * KiB
	}
	return 256 * KiB
}
