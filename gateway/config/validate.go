package config

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/url"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/edgegw/edgegw/secrets"
)

// Validate checks values and their combinations. It does no I/O: files
// named by the configuration are read (and checked) by their users. Each
// problem is an *Error naming the key and the bad value; several are
// joined with errors.Join.
func (c *Config) Validate() error {
	errs := c.validate()
	out := make([]error, len(errs))
	for i, e := range errs {
		out[i] = e
	}
	return errors.Join(out...)
}

// maxMQTTPacket is the largest packet MQTT's length encoding allows.
const maxMQTTPacket = 268435455

// The bounds of cloud.ntp_ttl, rrpc_ttl and reply_ttl.
const (
	minTimeCriticalTTL = 100 * time.Millisecond
	maxTimeCriticalTTL = time.Hour
)

// keepaliveRange returns the keepalive range a dialect's cloud accepts.
func keepaliveRange(d secrets.Dialect) (lo, hi time.Duration) {
	if d == secrets.EnOS {
		return 60 * time.Second, 300 * time.Second
	}
	return 30 * time.Second, 1200 * time.Second
}

// EnOSBackoffFloor is the least wait of an EnOS session after a failed
// connection attempt (uplink.DefaultLimits): EnOS accepts one connection
// per second per device and blocks a device for 5 minutes after 4
// connection requests within 2 minutes (docs/protocol.md §5.4, §8).
// cloud.backoff_min and cloud.backoff_max shape the jitter above it, so
// backoff_max must exceed it.
const EnOSBackoffFloor = 30 * time.Second

// maxInflight is the largest cloud.inflight the cloud sessions accept.
const maxInflight = 65000

// signMethods lists each dialect's sign methods (docs/protocol.md §1 and §3).
var signMethods = map[secrets.Dialect][]secrets.SignMethod{
	secrets.Aliyun: {secrets.HMACSHA256, secrets.HMACSHA1, secrets.HMACMD5},
	secrets.EnOS:   {secrets.SHA256, secrets.SHA1, secrets.MD5, secrets.HMACSHA256, secrets.HMACSHA1, secrets.HMACMD5},
}

type validator struct{ errs []*Error }

func (v *validator) add(key, format string, args ...any) {
	v.errs = append(v.errs, &Error{Key: key, Msg: fmt.Sprintf(format, args...)})
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

func (c *Config) validate() []*Error {
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
			v.add(key, "invalid listener %s: %s", quoteValue(RedactURL(raw)), msg)
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
	v.duration("broker.session_expiry", b.SessionExpiry, time.Second)
	if time.Duration(b.SessionExpiry) > maxSessionExpiry {
		v.add("broker.session_expiry", "invalid value %s: must be at most %v (an offline session holds its subscriptions and queued messages in memory)",
			quoteValue(b.SessionExpiry.String()), maxSessionExpiry)
	}
	v.intRange("broker.max_subscriptions", b.MaxSubscriptions, 1, maxSubscriptions)
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

// maxSessionExpiry bounds broker.session_expiry; maxSubscriptions bounds
// broker.max_subscriptions (the clouds allow about 100 per device).
const (
	maxSessionExpiry = 30 * 24 * time.Hour
	maxSubscriptions = 100000
)

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

// RedactURL hides user info (a password, perhaps) before a URL is echoed.
func RedactURL(raw string) string {
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
			v.add("cloud.endpoint", "invalid endpoint %s: %s", quoteValue(RedactURL(c.Endpoint)), msg)
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
	switch {
	case c.BackoffMax < c.BackoffMin:
		v.add("cloud.backoff_max", "invalid value %s: less than cloud.backoff_min %s", quoteValue(c.BackoffMax.String()), quoteValue(c.BackoffMin.String()))
	case c.Dialect == secrets.EnOS && time.Duration(c.BackoffMax) <= EnOSBackoffFloor:
		v.add("cloud.backoff_max", "invalid value %s: the enos dialect waits at least %v after a failed connection "+
			"(EnOS blocks a device for 5 minutes after 4 connection attempts within 2 minutes), so backoff_max must be more than %v",
			quoteValue(c.BackoffMax.String()), EnOSBackoffFloor, EnOSBackoffFloor)
	}
	v.duration("cloud.auth_retry", c.AuthRetry, time.Second)
	v.intRange("cloud.inflight", c.Inflight, 1, maxInflight)
	if c.DeviceRate != nil {
		v.rate("cloud.device_rate", *c.DeviceRate, false)
	}
	v.rate("cloud.gateway_rate", c.GatewayRate, false)
	if c.GatewayBandwidth < 0 {
		v.add("cloud.gateway_bandwidth", "invalid value %s: must not be negative (0 means unlimited)", quoteValue(c.GatewayBandwidth.String()))
	}
	v.duration("cloud.ack_timeout", c.AckTimeout, time.Second)
	for _, ttl := range []struct {
		key string
		d   Duration
	}{{"cloud.ntp_ttl", c.NTPTTL}, {"cloud.rrpc_ttl", c.RRPCTTL}, {"cloud.reply_ttl", c.ReplyTTL}} {
		v.duration(ttl.key, ttl.d, minTimeCriticalTTL)
		if time.Duration(ttl.d) > maxTimeCriticalTTL {
			v.add(ttl.key, "invalid value %s: must be at most %v (a message that may wait longer is not time-critical)", quoteValue(ttl.d.String()), maxTimeCriticalTTL)
		}
	}
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
