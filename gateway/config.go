package gateway

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"math"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/BurntSushi/toml"

	"github.com/edgegw/edgegw/secrets"
)

// Config is edgegw's configuration, read from a TOML file by ParseConfig or
// LoadConfig, or built in code from DefaultConfig.
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
	// WritesPending bounds each client's queue of outbound packets.
	WritesPending int `toml:"writes_pending"`
	// UnixSocketMode is the file mode of unix:// listener sockets.
	UnixSocketMode FileMode `toml:"unix_socket_mode"`
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

// maxConfigSize bounds the configuration file.
const maxConfigSize = 1 << 20

// maxMQTTPacket is the largest packet MQTT's length encoding allows.
const maxMQTTPacket = 268435455

// maxReportedErrors bounds the errors one ParseConfig reports.
const maxReportedErrors = 20

// DefaultConfig returns the configuration used for every key a file leaves
// out.
func DefaultConfig() *Config {
	return &Config{
		StateDir:  "/var/lib/edgegw",
		LogLevel:  "info",
		LogFormat: LogFormatAuto,
		Broker: BrokerConfig{
			Listeners:      []string{"tcp://0.0.0.0:1883", "unix:///run/edgegw/admin.sock"},
			Auth:           []string{AuthSigned, AuthPassword, AuthCert},
			MaxPacketSize:  256 * KiB,
			MaxClients:     20000,
			WritesPending:  256,
			UnixSocketMode: 0o660,
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

// LoadConfig reads and validates the configuration file at path.
func LoadConfig(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("load config: %w", err)
	}
	defer f.Close()
	return ParseConfig(f, path)
}

// ParseConfig reads a TOML configuration from r over DefaultConfig and
// validates it. name is the file name used in error messages.
//
// Every problem is a *ConfigError naming the key and, when the key is in
// the file, its line: syntax errors, unknown keys (compared exactly, case
// included), values of the wrong type, malformed durations and sizes, and
// everything Validate rejects. Several problems are joined with
// errors.Join (use errors.As for the first).
func ParseConfig(r io.Reader, name string) (*Config, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxConfigSize+1))
	if err != nil {
		return nil, fmt.Errorf("read config %s: %w", name, err)
	}
	p := &parser{name: name, data: string(data)}
	if len(data) > maxConfigSize {
		return nil, p.finish([]*ConfigError{{Msg: fmt.Sprintf("file is larger than %d bytes", maxConfigSize)}})
	}
	cfg := DefaultConfig()
	if errs := p.decode(cfg); len(errs) > 0 {
		return nil, p.finish(errs)
	}
	if errs := cfg.validate(); len(errs) > 0 {
		return nil, p.finish(errs)
	}
	return cfg, nil
}

// ConfigError is one problem in a configuration.
type ConfigError struct {
	// File is the name given to ParseConfig (the path, for LoadConfig).
	File string
	// Line is the 1-based line of Key in File; 0 when unknown (a default
	// value, or a Config built in code).
	Line int
	// Key is the dotted key, with [i] for array elements, for example
	// "broker.admin[1].user"; empty for a syntax error outside any key.
	Key string
	// Msg says what is wrong. It quotes a bad value where that helps, never
	// the value of an unknown key.
	Msg string
}

// Error formats the error as "file:line: key: msg", leaving out what is
// unknown.
func (e *ConfigError) Error() string {
	var b strings.Builder
	switch {
	case e.File != "" && e.Line > 0:
		fmt.Fprintf(&b, "%s:%d: ", e.File, e.Line)
	case e.File != "":
		b.WriteString(e.File + ": ")
	case e.Line > 0:
		fmt.Fprintf(&b, "line %d: ", e.Line)
	}
	if e.Key != "" {
		b.WriteString(e.Key + ": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Validate checks values and their combinations. It does no I/O: files
// named by the configuration are read (and checked) by their users. Each
// problem is a *ConfigError naming the key and the bad value; several are
// joined with errors.Join.
func (c *Config) Validate() error {
	errs := c.validate()
	out := make([]error, len(errs))
	for i, e := range errs {
		out[i] = e
	}
	return errors.Join(out...)
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

// keepaliveRange returns the keepalive range a dialect's cloud accepts.
func keepaliveRange(d secrets.Dialect) (lo, hi time.Duration) {
	if d == secrets.EnOS {
		return 60 * time.Second, 300 * time.Second
	}
	return 30 * time.Second, 1200 * time.Second
}

// signMethods lists each dialect's sign methods (protocol.md §1, §2.2).
var signMethods = map[secrets.Dialect][]secrets.SignMethod{
	secrets.Aliyun: {secrets.HMACSHA256, secrets.HMACSHA1, secrets.HMACMD5},
	secrets.EnOS:   {secrets.SHA256, secrets.SHA1, secrets.MD5, secrets.HMACSHA256, secrets.HMACSHA1, secrets.HMACMD5},
}

// ---------------------------------------------------------------------------
// Value types

// Duration is a time.Duration written as a string with a unit: "30s",
// "10m", "1h30m" (units ns, us, ms, s, m, h).
type Duration time.Duration

// String formats d like time.Duration.
func (d Duration) String() string { return time.Duration(d).String() }

// Std returns d as a time.Duration.
func (d Duration) Std() time.Duration { return time.Duration(d) }

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	s := string(b)
	if strings.TrimSpace(s) == "" {
		return errors.New(`empty duration (write "0s" for none)`)
	}
	v, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		if _, nerr := strconv.ParseFloat(strings.TrimSpace(s), 64); nerr == nil {
			return fmt.Errorf("invalid duration %s: missing unit (for example \"30s\" or \"10m\")", quoteValue(s))
		}
		return fmt.Errorf("invalid duration %s: want a number with a unit such as \"30s\", \"10m\", \"1h30m\"", quoteValue(s))
	}
	*d = Duration(v)
	return nil
}

func (d *Duration) decodeTOML(v any) error {
	s, ok := v.(string)
	if !ok {
		return fmt.Errorf("expected a duration string such as \"30s\", found %s", tomlTypeName(v))
	}
	return d.UnmarshalText([]byte(s))
}

// ByteSize is a size in bytes, written as an integer (bytes) or a string
// with a unit: "256KiB", "64MiB", "1GiB" (binary: KiB MiB GiB TiB;
// decimal: kB KB MB GB TB; or B).
type ByteSize int64

// Binary size units.
const (
	KiB ByteSize = 1 << (10 * (iota + 1))
	MiB
	GiB
	TiB
)

var sizeUnits = map[string]ByteSize{
	"": 1, "B": 1,
	"KiB": KiB, "MiB": MiB, "GiB": GiB, "TiB": TiB,
	"kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
}

// ParseByteSize parses a size: a whole number with an optional unit, as in
// "256KiB", "1GiB", "1500000" or "10MB". The empty string is 0.
func ParseByteSize(s string) (ByteSize, error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return 0, nil
	}
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	unit := strings.TrimSpace(t[i:])
	mult, ok := sizeUnits[unit]
	if i == 0 || !ok {
		return 0, fmt.Errorf("invalid size %s: want a whole number with a unit such as \"256KiB\", \"64MiB\", \"1GiB\" (units B, KiB, MiB, GiB, TiB, kB, MB, GB, TB)", quoteValue(s))
	}
	n, err := strconv.ParseInt(t[:i], 10, 64)
	if err != nil || n > math.MaxInt64/int64(mult) {
		return 0, fmt.Errorf("invalid size %s: too large", quoteValue(s))
	}
	return ByteSize(n) * mult, nil
}

// String formats b with the largest unit, binary or decimal, that divides
// it exactly, else in bytes: "256KiB", "1GiB", "10GB", "1000001B", "0".
func (b ByteSize) String() string {
	if b == 0 {
		return "0"
	}
	for _, u := range []struct {
		size ByteSize
		name string
	}{{TiB, "TiB"}, {1e12, "TB"}, {GiB, "GiB"}, {1e9, "GB"}, {MiB, "MiB"}, {1e6, "MB"}, {KiB, "KiB"}, {1e3, "kB"}} {
		if b%u.size == 0 {
			return strconv.FormatInt(int64(b/u.size), 10) + u.name
		}
	}
	return strconv.FormatInt(int64(b), 10) + "B"
}

// MarshalText implements encoding.TextMarshaler.
func (b ByteSize) MarshalText() ([]byte, error) { return []byte(b.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler (see ParseByteSize).
func (b *ByteSize) UnmarshalText(text []byte) error {
	v, err := ParseByteSize(string(text))
	if err != nil {
		return err
	}
	*b = v
	return nil
}

func (b *ByteSize) decodeTOML(v any) error {
	switch x := v.(type) {
	case int64:
		if x < 0 {
			return fmt.Errorf("invalid size %d: must not be negative", x)
		}
		*b = ByteSize(x)
		return nil
	case string:
		return b.UnmarshalText([]byte(x))
	}
	return fmt.Errorf("expected a size such as \"256KiB\" or an integer number of bytes, found %s", tomlTypeName(v))
}

// FileMode is a permission mode written as an octal string: "0660".
type FileMode fs.FileMode

// String formats m as four octal digits.
func (m FileMode) String() string { return fmt.Sprintf("%04o", uint32(m)) }

// MarshalText implements encoding.TextMarshaler.
func (m FileMode) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler: octal permission bits
// (at most 0777), with or without a leading "0" or "0o".
func (m *FileMode) UnmarshalText(text []byte) error {
	s := strings.TrimPrefix(strings.TrimSpace(string(text)), "0o")
	v, err := strconv.ParseUint(s, 8, 32)
	if err != nil || s == "" || v > 0o777 {
		return fmt.Errorf("invalid file mode %s: want octal permission bits such as \"0660\"", quoteValue(string(text)))
	}
	*m = FileMode(v)
	return nil
}

func (m *FileMode) decodeTOML(v any) error {
	s, ok := v.(string)
	if !ok {
		return fmt.Errorf("expected an octal mode string such as \"0660\", found %s", tomlTypeName(v))
	}
	return m.UnmarshalText([]byte(s))
}

// valueDecoder is implemented by the value types that decode a TOML value
// themselves.
type valueDecoder interface{ decodeTOML(v any) error }

// ---------------------------------------------------------------------------
// Decoding: the file is parsed by BurntSushi/toml into a generic tree, then
// walked against Config's toml tags, so that every unknown key and every
// type error is found and reported with its key.
//
// BurntSushi/toml (v1.6.0) keeps each key's position but exposes it only
// through a ParseError raised while decoding that key. lineFinder uses
// that: it decodes the file into toml.Primitive values, walks down to the
// key and decodes it into a probe that always fails; the ParseError's
// Position is the key's line. The library records one position per dotted
// key name — for arrays of tables, that of the last element holding the
// key — so an earlier element's key is found in the shortest prefix of the
// file, cut before a "[[" line, that holds exactly as many occurrences.

type parser struct {
	name  string
	data  string
	locs  map[string]locator // display key → where it is in the file
	lines *lineFinder
}

// locator is a key in the file: its path and which occurrence (0-based,
// for keys repeated in arrays of tables).
type locator struct {
	path toml.Key
	occ  int
}

func (p *parser) decode(cfg *Config) (errs []*ConfigError) {
	var tree map[string]any
	md, err := safeDecode(p.data, &tree)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return []*ConfigError{{Line: pe.Position.Line, Key: oneLine(pe.LastKey), Msg: "syntax error: " + oneLine(pe.Message)}}
		}
		return []*ConfigError{{Msg: "syntax error: " + oneLine(err.Error())}}
	}
	d := &decoder{
		md:    &md,
		order: make(map[string]int),
		seen:  make(map[string]int),
		locs:  make(map[string]locator),
	}
	for i, k := range md.Keys() {
		if _, ok := d.order[k.String()]; !ok {
			d.order[k.String()] = i
		}
	}
	d.table(tree, reflect.ValueOf(cfg).Elem(), nil, "")
	p.locs = d.locs
	return d.errs
}

// finish fills in file names and lines, orders the errors by line and
// joins them.
//
// Only the first maxReportedErrors (in the order found: document order for
// decoding, schema order for validation) are kept, before lines are looked
// up, so that a file with thousands of errors costs no more than one with
// a few.
func (p *parser) finish(errs []*ConfigError) error {
	more := 0
	if len(errs) > maxReportedErrors {
		more = len(errs) - maxReportedErrors
		errs = errs[:maxReportedErrors]
	}
	for _, e := range errs {
		e.File = p.name
		if e.Line == 0 && e.Key != "" {
			e.Line = p.lineOf(e.Key)
		}
	}
	slices.SortStableFunc(errs, func(a, b *ConfigError) int {
		if (a.Line == 0) != (b.Line == 0) {
			return cmp.Compare(b.Line, a.Line) // known lines first
		}
		return cmp.Compare(a.Line, b.Line)
	})
	out := make([]error, 0, len(errs)+1)
	for _, e := range errs {
		out = append(out, e)
	}
	if more > 0 {
		out = append(out, fmt.Errorf("%s: %d more errors", p.name, more))
	}
	return errors.Join(out...)
}

// lineOf returns the line of a display key, or of its nearest enclosing
// key in the file ("broker.admin[1].user" → "broker.admin[1]" → ...).
func (p *parser) lineOf(key string) int {
	if p.lines == nil {
		p.lines = newLineFinder(p.data)
	}
	for key != "" {
		if loc, ok := p.locs[key]; ok {
			if n := p.lines.line(loc); n > 0 {
				return n
			}
		}
		key = parentKey(key)
	}
	return 0
}

// parentKey strips the last element of a display key: a trailing "[i]" or
// ".name".
func parentKey(key string) string {
	if strings.HasSuffix(key, "]") {
		if i := strings.LastIndexByte(key, '['); i >= 0 {
			return key[:i]
		}
	}
	// The last '.' outside quotes.
	last, inQuote := -1, false
	for i := 0; i < len(key); i++ {
		switch key[i] {
		case '\\':
			if inQuote {
				i++
			}
		case '"':
			inQuote = !inQuote
		case '.':
			if !inQuote {
				last = i
			}
		}
	}
	if last < 0 {
		return ""
	}
	return key[:last]
}

type decoder struct {
	md    *toml.MetaData
	order map[string]int // key → index of its first appearance in the file
	seen  map[string]int // key → occurrences visited so far
	locs  map[string]locator
	errs  []*ConfigError
}

func (d *decoder) fail(key, format string, args ...any) {
	d.errs = append(d.errs, &ConfigError{Key: key, Msg: fmt.Sprintf(format, args...)})
}

func (d *decoder) typeError(key, want string, v any) {
	d.fail(key, "expected %s, found %s", want, tomlTypeName(v))
}

// visit records where key (its path, display form) is.
func (d *decoder) visit(path toml.Key, key string) {
	s := path.String()
	d.locs[key] = locator{path: path, occ: d.seen[s]}
	d.seen[s]++
}

// table decodes a TOML table into the struct rv; path and key name the
// table (nil and "" for the document).
func (d *decoder) table(m map[string]any, rv reflect.Value, path toml.Key, key string) {
	fields := structFields(rv.Type())
	names := slices.Collect(maps.Keys(m))
	slices.SortFunc(names, func(a, b string) int {
		ia, ib := d.firstIndex(path, a), d.firstIndex(path, b)
		if c := cmp.Compare(ia, ib); c != 0 {
			return c
		}
		return strings.Compare(a, b)
	})
	for _, name := range names {
		sub := append(path[:len(path):len(path)], name)
		subKey := joinKey(key, name)
		d.visit(sub, subKey)
		idx, ok := fields[name]
		if !ok {
			d.fail(subKey, "unknown key%s", unknownKeyHint(name, fields))
			continue
		}
		d.value(m[name], rv.Field(idx), sub, subKey)
	}
}

func (d *decoder) firstIndex(path toml.Key, name string) int {
	if i, ok := d.order[append(path[:len(path):len(path)], name).String()]; ok {
		return i
	}
	return math.MaxInt
}

// value decodes one TOML value into fv.
func (d *decoder) value(v any, fv reflect.Value, path toml.Key, key string) {
	if dec, ok := fv.Addr().Interface().(valueDecoder); ok {
		if err := dec.decodeTOML(v); err != nil {
			d.fail(key, "%s", err)
		}
		return
	}
	switch fv.Kind() {
	case reflect.String:
		s, ok := v.(string)
		if !ok {
			d.typeError(key, "a string", v)
			return
		}
		fv.SetString(s)
	case reflect.Bool:
		b, ok := v.(bool)
		if !ok {
			d.typeError(key, "true or false", v)
			return
		}
		fv.SetBool(b)
	case reflect.Int, reflect.Int64:
		n, ok := v.(int64)
		if !ok {
			d.typeError(key, "an integer", v)
			return
		}
		if fv.OverflowInt(n) {
			d.fail(key, "%d is out of range", n)
			return
		}
		fv.SetInt(n)
	case reflect.Float64:
		switch x := v.(type) {
		case int64:
			fv.SetFloat(float64(x))
		case float64:
			fv.SetFloat(x)
		default:
			d.typeError(key, "a number", v)
		}
	case reflect.Pointer:
		nv := reflect.New(fv.Type().Elem())
		before := len(d.errs)
		d.value(v, nv.Elem(), path, key)
		if len(d.errs) == before {
			fv.Set(nv)
		}
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			d.typeError(key, "a table", v)
			return
		}
		d.table(m, fv, path, key)
	case reflect.Slice:
		if fv.Type().Elem().Kind() == reflect.Struct {
			d.tables(v, fv, path, key)
		} else {
			d.array(v, fv, path, key)
		}
	default:
		// Only reachable if a field of an unsupported kind is added to
		// Config; TestConfigFieldKinds guards against that.
		d.fail(key, "cannot decode into %s", fv.Type())
	}
}

// array decodes an array of values (strings).
func (d *decoder) array(v any, fv reflect.Value, path toml.Key, key string) {
	arr, ok := v.([]any)
	if !ok {
		d.typeError(key, "an array", v)
		return
	}
	// An explicit empty array stays non-nil: it replaces a non-empty
	// default, and an encoder writes it back as [] rather than leaving the
	// key out.
	sl := reflect.MakeSlice(fv.Type(), len(arr), len(arr))
	before := len(d.errs)
	for i, e := range arr {
		d.value(e, sl.Index(i), path, fmt.Sprintf("%s[%d]", key, i))
	}
	if len(d.errs) == before {
		fv.Set(sl)
	}
}

// tables decodes an array of tables ([[x]] or x = [{...}, ...]).
func (d *decoder) tables(v any, fv reflect.Value, path toml.Key, key string) {
	var elems []map[string]any
	switch x := v.(type) {
	case []map[string]any:
		elems = x
	case []any:
		for i, e := range x {
			m, ok := e.(map[string]any)
			if !ok {
				d.typeError(fmt.Sprintf("%s[%d]", key, i), "a table", e)
				return
			}
			elems = append(elems, m)
		}
	default:
		d.typeError(key, "an array of tables", v)
		return
	}
	if len(elems) == 0 {
		fv.Set(reflect.Zero(fv.Type()))
		return
	}
	// [[x]] headers repeat the key once per element; x = [...] holds it once.
	headers := d.md.Type(path...) == "ArrayHash"
	sl := reflect.MakeSlice(fv.Type(), len(elems), len(elems))
	for i, m := range elems {
		elemKey := fmt.Sprintf("%s[%d]", key, i)
		loc := locator{path: path}
		if headers {
			loc.occ = i
		}
		d.locs[elemKey] = loc
		d.table(m, sl.Index(i), path, elemKey)
	}
	fv.Set(sl)
}

// structFields maps toml tag names to field indexes.
func structFields(t reflect.Type) map[string]int {
	fields := make(map[string]int, t.NumField())
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if name == "" || name == "-" || !f.IsExported() {
			continue
		}
		fields[name] = i
	}
	return fields
}

// unknownKeyHint suggests a known key close to an unknown one, and points
// misplaced secrets to their file-based keys.
func unknownKeyHint(name string, fields map[string]int) string {
	lower := strings.ToLower(name)
	for _, secret := range []string{"password", "secret", "private_key", "token"} {
		if strings.Contains(lower, secret) && !strings.HasSuffix(lower, "_file") {
			hint := "; secrets do not belong in the configuration"
			if _, ok := fields["password_file"]; ok {
				hint += ": put the password in a file and name it with password_file"
			}
			return hint
		}
	}
	best, bestDist := "", 3
	for known := range fields {
		dist := editDistance(lower, known)
		if dist < bestDist || (dist == bestDist && known < best) {
			best, bestDist = known, dist
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

// editDistance is the Levenshtein distance of two short strings.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return math.MaxInt
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// joinKey appends a key part to a display key, quoting it unless bare.
func joinKey(parent, name string) string {
	part := name
	if !isBareKey(name) {
		part = strconv.Quote(name)
	}
	if parent == "" {
		return part
	}
	return parent + "." + part
}

func isBareKey(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if !(r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

// tomlTypeName names the TOML type of a decoded value for messages.
func tomlTypeName(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case int64:
		return "an integer"
	case float64:
		return "a float"
	case bool:
		return "a boolean"
	case time.Time:
		return "a date-time"
	case []map[string]any:
		return "an array of tables"
	case []any:
		return "an array"
	case map[string]any:
		return "a table"
	}
	return fmt.Sprintf("a %T", v)
}

// quoteValue quotes a value for a message: Go-quoted (control characters
// escaped) and shortened.
func quoteValue(s string) string {
	const maxLen = 80
	if len(s) > maxLen {
		cut := maxLen
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		return strconv.Quote(s[:cut]) + "…"
	}
	return strconv.Quote(s)
}

// oneLine makes a library message safe for a one-line log record.
func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
}

// safeDecode parses data; the parser's internal panics become errors.
func safeDecode(data string, v any) (md toml.MetaData, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("TOML parser failed: %v", r)
		}
	}()
	return toml.Decode(data, v)
}

// lineFinder finds the line of a key in a TOML document.
type lineFinder struct {
	data    string
	doc     *primDoc // nil if the document does not parse
	cuts    []int    // offsets of the lines starting with "[[", once computed
	budget  int      // bytes left for parsing prefixes
	hasCuts bool
}

type primDoc struct {
	md     toml.MetaData
	top    map[string]toml.Primitive
	text   string         // the document as the parser saw it (without a BOM)
	counts map[string]int // key → occurrences, once computed
}

func parsePrimDoc(data string) *primDoc {
	var top map[string]toml.Primitive
	md, err := safeDecode(data, &top)
	if err != nil {
		return nil
	}
	return &primDoc{md: md, top: top, text: stripBOM(data)}
}

// stripBOM removes a byte order mark the way the TOML parser does, so that
// byte offsets agree.
func stripBOM(s string) string {
	switch {
	case strings.HasPrefix(s, "\xff\xfe"), strings.HasPrefix(s, "\xfe\xff"):
		return s[2:]
	case strings.HasPrefix(s, "\xef\xbb\xbf"):
		return s[3:]
	}
	return s
}

func newLineFinder(data string) *lineFinder {
	return &lineFinder{data: data, doc: parsePrimDoc(data), budget: prefixParseBudget}
}

// prefixParseBudget bounds the bytes parsed to place earlier occurrences
// of keys in arrays of tables, for one document. Placing one costs about
// log2(elements) parses of a prefix, so the budget is never reached by a
// configuration a person wrote; past it, such errors carry the line of the
// nearest enclosing key found, or none.
const prefixParseBudget = 4 << 20

// line returns the 1-based line of loc, or 0 if it cannot be found.
func (lf *lineFinder) line(loc locator) int {
	if lf.doc == nil || len(loc.path) == 0 {
		return 0
	}
	n := lf.doc.count(loc.path)
	if loc.occ >= n-1 { // the last, or a table implied by dotted keys (n == 0)
		return lf.doc.lastLine(loc.path)
	}
	// An earlier occurrence, in an array of tables. The element after ours
	// starts at a "[[" line, and the document cut there parses and holds
	// exactly occ+1 occurrences, the last being ours. Over the cuts that
	// parse (a "[[" inside a multi-line string or array does not), the
	// count never decreases: binary-search the first cut holding occ+1.
	cuts := lf.arrayTableCuts()
	lo, hi := 0, len(cuts)
	var found *primDoc
	for lo < hi {
		i, doc := lf.parseNear(cuts, (lo+hi)/2, lo, hi)
		if doc == nil {
			break
		}
		if doc.count(loc.path) >= loc.occ+1 {
			found, hi = doc, i
		} else {
			lo = i + 1
		}
	}
	if found == nil || found.count(loc.path) != loc.occ+1 {
		return 0
	}
	return found.lastLine(loc.path)
}

// arrayTableCuts returns the offsets of the lines that start with "[[".
func (lf *lineFinder) arrayTableCuts() []int {
	if lf.hasCuts {
		return lf.cuts
	}
	lf.hasCuts = true
	for off := 0; off < len(lf.data); {
		next := strings.IndexByte(lf.data[off:], '\n')
		if next < 0 {
			break
		}
		off += next + 1
		if strings.HasPrefix(strings.TrimLeft(lf.data[off:], " \t"), "[[") {
			lf.cuts = append(lf.cuts, off)
		}
	}
	return lf.cuts
}

// parseNear parses the document cut at cuts[mid] or, if that does not
// parse, at the nearest cut in [lo, hi) that does, looking forward first.
// It returns nil when none does or the parse budget is spent.
func (lf *lineFinder) parseNear(cuts []int, mid, lo, hi int) (int, *primDoc) {
	try := func(i int) *primDoc {
		if lf.budget < cuts[i] {
			lf.budget = 0
			return nil
		}
		lf.budget -= cuts[i]
		return parsePrimDoc(lf.data[:cuts[i]])
	}
	for i := mid; i < hi && lf.budget > 0; i++ {
		if doc := try(i); doc != nil {
			return i, doc
		}
	}
	for i := mid - 1; i >= lo && lf.budget > 0; i-- {
		if doc := try(i); doc != nil {
			return i, doc
		}
	}
	return 0, nil
}

// count returns how often key appears in the document.
func (d *primDoc) count(key toml.Key) int {
	if d.counts == nil {
		d.counts = make(map[string]int)
		for _, k := range d.md.Keys() {
			d.counts[k.String()]++
		}
	}
	return d.counts[key.String()]
}

// lastLine returns the line the parser recorded for key or, for a table
// implied by dotted keys (which has none), for its first key that occurs
// once (the parser keeps only the last position of a repeated key).
func (d *primDoc) lastLine(key toml.Key) int {
	if n := d.probe(key); n > 0 {
		return n
	}
	for _, k := range d.md.Keys() {
		if len(k) > len(key) && slices.Equal(k[:len(key)], key) && d.count(k) == 1 {
			if n := d.probe(k); n > 0 {
				return n
			}
		}
	}
	return 0
}

// errLineProbe is returned by lineProbe to make the decoder report where it
// is.
var errLineProbe = errors.New("line probe")

type lineProbe struct{}

func (*lineProbe) UnmarshalTOML(any) error { return errLineProbe }

// probe decodes the value at key into a lineProbe and returns the line of
// the resulting ParseError.
func (d *primDoc) probe(key toml.Key) (line int) {
	defer func() {
		if recover() != nil {
			line = 0
		}
	}()
	if len(key) == 0 {
		return 0
	}
	prim, ok := d.top[key[0]]
	for _, part := range key[1:] {
		if !ok {
			return 0
		}
		prim, ok = d.child(prim, part)
	}
	if !ok {
		return 0
	}
	var pe toml.ParseError
	if err := d.md.PrimitiveDecode(prim, &lineProbe{}); !errors.As(err, &pe) || pe.Position.Line == 0 {
		return 0
	}
	// Position.Line is where the parser was when it recorded the key: for
	// a multi-line string value, the string's last line. Position.Start is
	// the byte offset of the value (or table header), on the key's line.
	start := min(pe.Position.Start, len(d.text))
	return 1 + strings.Count(d.text[:start], "\n")
}

// child returns part of a table, or of the last element of an array of
// tables that has it.
func (d *primDoc) child(prim toml.Primitive, part string) (toml.Primitive, bool) {
	var m map[string]toml.Primitive
	// toml leaves m nil (and returns no error) for a non-table value.
	if err := d.md.PrimitiveDecode(prim, &m); err == nil && m != nil {
		c, ok := m[part]
		return c, ok
	}
	var arr []map[string]toml.Primitive
	if err := d.md.PrimitiveDecode(prim, &arr); err == nil {
		for i := len(arr) - 1; i >= 0; i-- {
			if c, ok := arr[i][part]; ok {
				return c, true
			}
		}
	}
	return toml.Primitive{}, false
}

// ---------------------------------------------------------------------------
// Validation

type validator struct{ errs []*ConfigError }

func (v *validator) add(key, format string, args ...any) {
	v.errs = append(v.errs, &ConfigError{Key: key, Msg: fmt.Sprintf(format, args...)})
}

func (v *validator) oneOf(key, val string, allowed ...string) {
	if !slices.Contains(allowed, val) {
		v.add(key, "invalid value %s: want one of %s", quoteValue(val), strings.Join(allowed, ", "))
	}
}

// path checks a file path that may be empty unless required. The value is
// never echoed: a path field is where a secret pasted by mistake would be.
func (v *validator) path(key, p string, required bool) {
	switch {
	case p == "":
		if required {
			v.add(key, "must not be empty")
		}
	case strings.Contains(p, "-----BEGIN"):
		v.add(key, "must be the path of a file, not its PEM content")
	case strings.ContainsAny(p, "\x00\n\r"):
		v.add(key, "must be a file path (it contains a NUL or newline)")
	}
}

func (v *validator) duration(key string, d Duration, lo time.Duration) {
	if time.Duration(d) < lo {
		if lo == 0 {
			v.add(key, "invalid value %s: must not be negative", quoteValue(d.String()))
		} else {
			v.add(key, "invalid value %s: must be at least %v", quoteValue(d.String()), lo)
		}
	}
}

func (v *validator) rate(key string, r float64, positive bool) {
	switch {
	case math.IsNaN(r) || math.IsInf(r, 0):
		v.add(key, "invalid value %v: must be a finite number", r)
	case positive && r <= 0:
		v.add(key, "invalid value %v: must be greater than 0", r)
	case r < 0:
		v.add(key, "invalid value %v: must not be negative (0 means unlimited)", r)
	}
}

func (v *validator) intRange(key string, n, lo, hi int) {
	if n < lo || n > hi {
		v.add(key, "invalid value %d: must be from %d to %d", n, lo, hi)
	}
}

func (c *Config) validate() []*ConfigError {
	v := &validator{}
	v.path("state_dir", c.StateDir, true)
	v.path("key_file", c.KeyFile, false)
	v.oneOf("log_level", c.LogLevel, "debug", "info", "warn", "error")
	v.oneOf("log_format", c.LogFormat, LogFormatAuto, LogFormatText, LogFormatJSON)
	c.Broker.validate(v)
	c.Cloud.validate(v)
	c.Spool.validate(v)
	if c.Spool.DeviceBudget > 0 && c.Broker.MaxPacketSize > c.Spool.DeviceBudget {
		v.add("spool.device_budget", "invalid value %s: smaller than broker.max_packet_size %s, so the largest publish could never be spooled",
			quoteValue(c.Spool.DeviceBudget.String()), quoteValue(c.Broker.MaxPacketSize.String()))
	}
	if c.Metrics.Listen != "" {
		if msg := checkHostPort(c.Metrics.Listen); msg != "" {
			v.add("metrics.listen", "invalid value %s: %s", quoteValue(c.Metrics.Listen), msg)
		}
	}
	v.duration("shutdown.timeout", c.Shutdown.Timeout, time.Second)
	return v.errs
}

func (b *BrokerConfig) validate(v *validator) {
	tlsListener := ""
	seen := make(map[string]int)
	for i, raw := range b.Listeners {
		key := fmt.Sprintf("broker.listeners[%d]", i)
		scheme, msg := checkListener(raw)
		if msg != "" {
			v.add(key, "invalid listener %s: %s", quoteValue(redactURL(raw)), msg)
			continue
		}
		if j, dup := seen[raw]; dup {
			v.add(key, "duplicate listener %s (also broker.listeners[%d])", quoteValue(raw), j)
		}
		seen[raw] = i
		if (scheme == "tls" || scheme == "wss") && tlsListener == "" {
			tlsListener = key
		}
	}
	v.path("broker.tls_cert", b.TLSCert, false)
	v.path("broker.tls_key", b.TLSKey, false)
	v.path("broker.client_ca", b.ClientCA, false)
	switch {
	case tlsListener != "" && (b.TLSCert == "" || b.TLSKey == ""):
		v.add(tlsListener, "a tls:// or wss:// listener needs broker.tls_cert and broker.tls_key")
	case (b.TLSCert == "") != (b.TLSKey == ""):
		v.add("broker.tls_cert", "broker.tls_cert and broker.tls_key must be set together")
	}
	if b.ClientCA != "" && b.TLSCert == "" {
		v.add("broker.client_ca", "client certificates need TLS: set broker.tls_cert and broker.tls_key")
	}
	if len(b.Auth) == 0 {
		v.add("broker.auth", "must list at least one of %s, %s, %s", AuthSigned, AuthPassword, AuthCert)
	}
	for i, mode := range b.Auth {
		key := fmt.Sprintf("broker.auth[%d]", i)
		v.oneOf(key, mode, AuthSigned, AuthPassword, AuthCert)
		if slices.Index(b.Auth, mode) < i {
			v.add(key, "duplicate auth mode %s", quoteValue(mode))
		}
	}
	if b.MaxPacketSize < 1*KiB || b.MaxPacketSize > maxMQTTPacket {
		v.add("broker.max_packet_size", "invalid value %s: must be from 1KiB to %d bytes (MQTT's limit)", quoteValue(b.MaxPacketSize.String()), maxMQTTPacket)
	}
	v.intRange("broker.max_clients", b.MaxClients, 1, math.MaxInt32)
	v.intRange("broker.writes_pending", b.WritesPending, 1, 65535)
	if b.UnixSocketMode == 0 || b.UnixSocketMode > 0o777 {
		v.add("broker.unix_socket_mode", "invalid value %s: want permission bits from 0001 to 0777", quoteValue(b.UnixSocketMode.String()))
	}
	users := make(map[string]int)
	for i, a := range b.Admin {
		key := fmt.Sprintf("broker.admin[%d]", i)
		switch {
		case a.User == "":
			v.add(key+".user", "must not be empty")
		case !validAdminUser(a.User):
			v.add(key+".user", "invalid value %s: use 1 to 64 letters, digits, '.', '_' or '-'", quoteValue(a.User))
		default:
			if j, dup := users[a.User]; dup {
				v.add(key+".user", "duplicate admin user %s (also broker.admin[%d])", quoteValue(a.User), j)
			}
			users[a.User] = i
		}
		v.path(key+".password_file", a.PasswordFile, true)
	}
}

func validAdminUser(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

// maxUnixPath is the longest unix socket path Linux accepts.
const maxUnixPath = 107

// checkListener validates a listener URL (the same rules as localbroker)
// and returns its scheme, or a problem.
func checkListener(raw string) (scheme, problem string) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", "not a URL"
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return "", "user info, query and fragment are not allowed"
	}
	switch u.Scheme {
	case "tcp", "tls", "ws", "wss":
		if msg := checkHostPort(u.Host); msg != "" {
			return "", fmt.Sprintf("want %s://host:port: %s", u.Scheme, msg)
		}
		if (u.Scheme == "tcp" || u.Scheme == "tls") && u.Path != "" {
			return "", fmt.Sprintf("a %s listener takes no path", u.Scheme)
		}
	case "unix":
		if u.Host != "" || !filepath.IsAbs(u.Path) || filepath.Clean(u.Path) != u.Path {
			return "", "want unix:///absolute/clean/path"
		}
		if len(u.Path) > maxUnixPath {
			return "", fmt.Sprintf("socket path longer than %d bytes", maxUnixPath)
		}
	case "":
		return "", "missing scheme (want tcp, tls, ws, wss or unix)"
	default:
		return "", fmt.Sprintf("unknown scheme %s (want tcp, tls, ws, wss or unix)", quoteValue(u.Scheme))
	}
	return u.Scheme, ""
}

// checkHostPort validates host:port with a numeric port from 0 to 65535.
func checkHostPort(hp string) string {
	_, port, err := net.SplitHostPort(hp)
	if err != nil {
		return "want host:port"
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Sprintf("port %s is not a number from 0 to 65535", quoteValue(port))
	}
	return ""
}

// redactURL hides user info (a password, perhaps) before a URL is echoed.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		if strings.Contains(raw, "@") {
			return "<unparsable URL>"
		}
		return raw
	}
	if u.User != nil {
		u.User = url.User("REDACTED")
		return u.String()
	}
	return raw
}

// checkTemplate checks a template's {placeholders} against allowed and
// returns the template with each replaced by sample.
func checkTemplate(tmpl string, allowed []string, sample string) (string, string) {
	var out strings.Builder
	for rest := tmpl; rest != ""; {
		open := strings.IndexAny(rest, "{}")
		if open < 0 {
			out.WriteString(rest)
			break
		}
		if rest[open] == '}' {
			return "", "unbalanced '}'"
		}
		end := strings.IndexByte(rest[open:], '}')
		if end < 0 {
			return "", "unbalanced '{'"
		}
		name := rest[open : open+end+1]
		if !slices.Contains(allowed, name) {
			return "", fmt.Sprintf("unknown placeholder %s (want %s)", quoteValue(name), strings.Join(allowed, " or "))
		}
		out.WriteString(rest[:open])
		out.WriteString(sample)
		rest = rest[open+end+1:]
	}
	return out.String(), ""
}

func (c *CloudConfig) validate(v *validator) {
	dialectOK := c.Dialect == secrets.Aliyun || c.Dialect == secrets.EnOS
	if !dialectOK {
		v.add("cloud.dialect", "invalid value %s: want aliyun or enos", quoteValue(string(c.Dialect)))
	}
	switch {
	case c.Endpoint == "" && c.Dialect == secrets.EnOS:
		v.add("cloud.endpoint", "must be set for the enos dialect (EnOS has no public default endpoint)")
	case c.Endpoint != "":
		if msg := checkEndpoint(c.Endpoint); msg != "" {
			v.add("cloud.endpoint", "invalid endpoint %s: %s", quoteValue(redactURL(c.Endpoint)), msg)
		}
	}
	v.path("cloud.ca_file", c.CAFile, false)
	v.path("cloud.client_cert", c.ClientCert, false)
	v.path("cloud.client_key", c.ClientKey, false)
	if (c.ClientCert == "") != (c.ClientKey == "") {
		v.add("cloud.client_cert", "cloud.client_cert and cloud.client_key must be set together")
	}
	ka := time.Duration(c.Keepalive)
	if dialectOK {
		lo, hi := keepaliveRange(c.Dialect)
		switch {
		case ka < lo || ka > hi:
			v.add("cloud.keepalive", "invalid value %s: the %s dialect accepts %v to %v", quoteValue(c.Keepalive.String()), c.Dialect, lo, hi)
		case ka%time.Second != 0:
			v.add("cloud.keepalive", "invalid value %s: must be whole seconds", quoteValue(c.Keepalive.String()))
		}
		if c.SignMethod != "" && !slices.Contains(signMethods[c.Dialect], c.SignMethod) {
			names := make([]string, len(signMethods[c.Dialect]))
			for i, m := range signMethods[c.Dialect] {
				names[i] = string(m)
			}
			v.add("cloud.sign_method", "invalid value %s: the %s dialect accepts %s", quoteValue(string(c.SignMethod)), c.Dialect, strings.Join(names, ", "))
		}
	}
	if cid, msg := checkTemplate(c.ClientID, []string{"{productKey}", "{deviceName}"}, "x"); msg != "" {
		v.add("cloud.client_id", "invalid template %s: %s", quoteValue(c.ClientID), msg)
	} else if !strings.Contains(c.ClientID, "{deviceName}") {
		v.add("cloud.client_id", "invalid template %s: must contain {deviceName}, so that every device has its own client id", quoteValue(c.ClientID))
	} else if strings.ContainsAny(cid, "|,") || strings.IndexFunc(cid, func(r rune) bool { return r <= ' ' || r == 0x7f }) >= 0 {
		v.add("cloud.client_id", "invalid template %s: must not contain '|', ',', spaces or control characters", quoteValue(c.ClientID))
	}
	v.rate("cloud.connect_rate", c.ConnectRate, true)
	v.intRange("cloud.connect_burst", c.ConnectBurst, 1, math.MaxInt32)
	v.duration("cloud.backoff_min", c.BackoffMin, time.Millisecond)
	v.duration("cloud.backoff_max", c.BackoffMax, time.Millisecond)
	if c.BackoffMax < c.BackoffMin {
		v.add("cloud.backoff_max", "invalid value %s: less than cloud.backoff_min %s", quoteValue(c.BackoffMax.String()), quoteValue(c.BackoffMin.String()))
	}
	v.duration("cloud.auth_retry", c.AuthRetry, time.Second)
	v.intRange("cloud.inflight", c.Inflight, 1, 65535)
	if c.DeviceRate != nil {
		v.rate("cloud.device_rate", *c.DeviceRate, false)
	}
	v.rate("cloud.gateway_rate", c.GatewayRate, false)
	if c.GatewayBandwidth < 0 {
		v.add("cloud.gateway_bandwidth", "invalid value %s: must not be negative (0 means unlimited)", quoteValue(c.GatewayBandwidth.String()))
	}
	v.duration("cloud.ack_timeout", c.AckTimeout, time.Second)
	if c.MaxPayload < 0 || c.MaxPayload > maxMQTTPacket {
		v.add("cloud.max_payload", "invalid value %s: must be from 0 (the dialect's limit) to %d bytes", quoteValue(c.MaxPayload.String()), maxMQTTPacket)
	}
}

// checkEndpoint validates a cloud endpoint URL template.
func checkEndpoint(raw string) string {
	s, msg := checkTemplate(raw, []string{"{productKey}"}, "pk")
	if msg != "" {
		return msg
	}
	u, err := url.Parse(s)
	if err != nil {
		return "not a URL"
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return "user info, query and fragment are not allowed"
	}
	switch u.Scheme {
	case "tcp", "tls", "ws", "wss":
	case "":
		return "missing scheme (want tcp, tls, ws or wss)"
	default:
		return fmt.Sprintf("unknown scheme %s (want tcp, tls, ws or wss)", quoteValue(u.Scheme))
	}
	if u.Hostname() == "" {
		return "missing host"
	}
	if port := u.Port(); port != "" {
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
			return fmt.Sprintf("port %s is not a number from 1 to 65535", quoteValue(port))
		}
	} else if u.Scheme == "tcp" || u.Scheme == "tls" || strings.HasSuffix(u.Host, ":") {
		return fmt.Sprintf("want %s://host:port", u.Scheme)
	}
	if (u.Scheme == "tcp" || u.Scheme == "tls") && u.Path != "" {
		return fmt.Sprintf("a %s endpoint takes no path", u.Scheme)
	}
	return ""
}

func (s *SpoolConfig) validate(v *validator) {
	v.path("spool.path", s.Path, false)
	if s.Budget <= 0 {
		v.add("spool.budget", "invalid value %s: must be greater than 0", quoteValue(s.Budget.String()))
	}
	switch {
	case s.DeviceBudget <= 0:
		v.add("spool.device_budget", "invalid value %s: must be greater than 0", quoteValue(s.DeviceBudget.String()))
	case s.Budget > 0 && s.DeviceBudget > s.Budget:
		v.add("spool.device_budget", "invalid value %s: larger than spool.budget %s", quoteValue(s.DeviceBudget.String()), quoteValue(s.Budget.String()))
	}
	v.oneOf("spool.overflow", s.Overflow, OverflowDropOldest, OverflowRejectNew)
	v.duration("spool.ttl", s.TTL, 0)
}
