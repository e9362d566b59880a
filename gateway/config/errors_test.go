package config

import (
	"bytes"
	"errors"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgegw/edgegw/secrets"
)

// TestParseErrors runs every error case in testdata: the first
// error must name the key and its line, and contain the message fragment.
func TestParseErrors(t *testing.T) {
	tests := []struct {
		file string
		key  string
		line int
		msg  string
	}{
		{"unknown_key.toml", "log_levle", 3, `unknown key (did you mean "log_level"?)`},
		{"unknown_nested.toml", "broker.max_client", 4, `unknown key (did you mean "max_clients"?)`},
		{"unknown_table.toml", "brokers", 3, `unknown key (did you mean "broker"?)`},
		{"unknown_dotted.toml", "metrics.port", 2, "unknown key"},
		{"unknown_implicit.toml", "telemetry", 3, "unknown key"},
		{"unknown_case.toml", "Log_Level", 1, `unknown key (did you mean "log_level"?)`},
		{"unknown_admin.toml", "broker.admin[0].role", 4, "unknown key"},
		{"secret_in_config.toml", "broker.admin[0].password", 3, "secrets do not belong in the configuration"},
		{"wrong_type.toml", "broker.max_clients", 2, "expected an integer, found a string"},
		{"wrong_type_array.toml", "broker.listeners", 2, "expected an array, found a string"},
		{"wrong_type_element.toml", "broker.auth[1]", 2, "expected a string, found an integer"},
		{"wrong_type_table.toml", "spool", 2, "expected a table, found a string"},
		{"wrong_type_admin.toml", "broker.admin[0].user", 2, "expected a string, found an integer"},
		{"wrong_type_inline_admin.toml", "broker.admin[1].user", 4, "expected a string, found a boolean"},
		{"bad_duration.toml", "cloud.keepalive", 2, `invalid duration "300": missing unit`},
		{"bad_duration_int.toml", "cloud.ack_timeout", 2, "expected a duration string"},
		{"bad_size.toml", "spool.budget", 2, `invalid size "1.5GiB"`},
		{"bad_size_unit.toml", "spool.device_budget", 2, `invalid size "64 mb"`},
		{"bad_enum.toml", "spool.overflow", 2, `invalid value "drop-newest": want one of drop-oldest, reject-new`},
		{"bad_log_level.toml", "log_level", 1, `invalid value "verbose"`},
		{"bad_listener.toml", "broker.listeners[1]", 2, `unknown scheme "mqtt"`},
		{"tls_listener_no_cert.toml", "broker.listeners[0]", 2, "needs broker.tls_cert and broker.tls_key"},
		{"bad_auth.toml", "broker.auth[1]", 2, `invalid value "token"`},
		{"keepalive_range.toml", "cloud.keepalive", 4, `invalid value "10m0s": the enos dialect accepts 1m0s to 5m0s`},
		{"keepalive_range_aliyun.toml", "cloud.keepalive", 2, "the aliyun dialect accepts 30s to 20m0s"},
		{"bad_dialect.toml", "cloud.dialect", 2, `invalid value "azure": want aliyun or enos`},
		{"bad_endpoint.toml", "cloud.endpoint", 2, `unknown scheme "https"`},
		{"bad_endpoint_placeholder.toml", "cloud.endpoint", 2, `unknown placeholder "{region}"`},
		{"enos_no_endpoint.toml", "cloud.endpoint", 1, "must be set for the enos dialect"},
		{"enos_backoff_floor.toml", "cloud.backoff_max", 7, `invalid value "5s": the enos dialect waits at least 30s after a failed connection`},
		{"negative_rate.toml", "cloud.gateway_rate", 2, "invalid value -5: must not be negative"},
		{"ttl_too_short.toml", "cloud.ntp_ttl", 3, `invalid value "10ms": must be at least 100ms`},
		{"ttl_too_long.toml", "cloud.reply_ttl", 4, `invalid value "2h0m0s": must be at most 1h0m0s`},
		{"ttl_zero.toml", "cloud.rrpc_ttl", 2, `invalid value "0s": must be at least 100ms`},
		{"budgets.toml", "spool.device_budget", 3, `invalid value "64MiB": larger than spool.budget "32MiB"`},
		{"syntax.toml", "broker.writes_pending", 3, "syntax error"},
		{"duplicate_key.toml", "spool.budget", 3, "syntax error: Key 'spool.budget' has already been defined"},
		{"pem_in_path.toml", "broker.tls_key", 3, "must be the path of a file, not its PEM content"},
		{"multiple.toml", "log_format", 1, `invalid value "xml"`},
	}
	for _, tt := range tests {
		t.Run(strings.TrimSuffix(tt.file, ".toml"), func(t *testing.T) {
			path := filepath.Join("testdata", tt.file)
			cfg, err := Load(path)
			if err == nil {
				t.Fatalf("Load(%s) = %+v, want an error", path, cfg)
			}
			if cfg != nil {
				t.Errorf("Load returned a config with its error")
			}
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("error %v (%T) is not an *Error", err, err)
			}
			if ce.Key != tt.key || ce.Line != tt.line || ce.File != path || !strings.Contains(ce.Msg, tt.msg) {
				t.Errorf("first error = {File %q Line %d Key %q Msg %q}\nwant         {File %q Line %d Key %q Msg containing %q}",
					ce.File, ce.Line, ce.Key, ce.Msg, path, tt.line, tt.key, tt.msg)
			}
			// The message a person reads names file, line and key.
			prefix := path + ":" + strconv.Itoa(tt.line) + ": " + tt.key + ": "
			if !strings.HasPrefix(ce.Error(), prefix) {
				t.Errorf("Error() = %q, want prefix %q", ce.Error(), prefix)
			}
			if strings.Contains(err.Error(), "SENTINEL") {
				t.Errorf("error shows a secret from the file: %q", err)
			}
		})
	}
}

// TestParseAllErrors checks that every problem is reported, in line
// order, each with its own line — including repeated keys in different
// elements of an array of tables.
func TestParseAllErrors(t *testing.T) {
	tests := []struct {
		file string
		want []string // "line key"
	}{
		{"unknown_admin.toml", []string{"4 broker.admin[0].role", "13 broker.admin[2].role"}},
		{"multiple.toml", []string{"1 log_format", "4 broker.max_clients", "7 cloud.inflight", "10 spool.ttl"}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			_, err := Load(filepath.Join("testdata", tt.file))
			var got []string
			for _, ce := range configErrors(t, err) {
				got = append(got, strconv.Itoa(ce.Line)+" "+ce.Key)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("errors at %q, want %q\n%v", got, tt.want, err)
			}
		})
	}
}

// TestParseInline covers cases too small for a file of their own.
func TestParseInline(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		key  string
		line int
		msg  string
	}{
		{"negative size", "[broker]\nmax_packet_size = -1\n", "broker.max_packet_size", 2, "must not be negative"},
		{"size float", "[spool]\nbudget = 1.5\n", "spool.budget", 2, "expected a size"},
		{"size too large", "[spool]\nbudget = \"9999999TiB\"\n", "spool.budget", 2, "too large"},
		{"packet too large", "[broker]\nmax_packet_size = \"256MiB\"\n", "broker.max_packet_size", 2, "MQTT's limit"},
		{"int overflow", "[broker]\nmax_clients = 99999999999\n", "broker.max_clients", 2, "must be from 1 to"},
		{"bool", "[spool]\ndurable = \"yes\"\n", "spool.durable", 2, "expected true or false, found a string"},
		{"datetime", "state_dir = 1979-05-27T07:32:00Z\n", "state_dir", 1, "found a date-time"},
		{"rate string", "[cloud]\nconnect_rate = \"fast\"\n", "cloud.connect_rate", 2, "expected a number"},
		{"zero connect rate", "[cloud]\nconnect_rate = 0\n", "cloud.connect_rate", 2, "must be greater than 0"},
		{"nan rate", "[cloud]\ndevice_rate = nan\n", "cloud.device_rate", 2, "finite"},
		{"inf rate", "[cloud]\ngateway_rate = inf\n", "cloud.gateway_rate", 2, "finite"},
		{"negative device rate", "[cloud]\ndevice_rate = -1\n", "cloud.device_rate", 2, "must not be negative"},
		{"mode int", "[broker]\nunix_socket_mode = 660\n", "broker.unix_socket_mode", 2, "expected an octal mode string"},
		{"mode range", "[broker]\nunix_socket_mode = \"01777\"\n", "broker.unix_socket_mode", 2, `invalid file mode "01777"`},
		{"mode zero", "[broker]\nunix_socket_mode = \"0\"\n", "broker.unix_socket_mode", 2, "from 0001 to 0777"},
		{"empty duration", "[shutdown]\ntimeout = \"\"\n", "shutdown.timeout", 2, "empty duration"},
		{"zero shutdown", "[shutdown]\ntimeout = \"0s\"\n", "shutdown.timeout", 2, `invalid value "0s": must be at least 1s`},
		{"keepalive fraction", "[cloud]\nkeepalive = \"300.5s\"\n", "cloud.keepalive", 2, "whole seconds"},
		{"backoff order", "[cloud]\nbackoff_min = \"1m\"\nbackoff_max = \"30s\"\n", "cloud.backoff_max", 3, "less than cloud.backoff_min"},
		{"enos backoff at the floor", "[cloud]\ndialect = \"enos\"\nendpoint = \"tcp://10.0.0.5:11883\"\nbackoff_max = \"30s\"\n",
			"cloud.backoff_max", 4, "so backoff_max must be more than 30s"},
		{"enos backoff_max before dialect", "[cloud]\nbackoff_max = \"20s\"\ndialect = \"enos\"\nendpoint = \"tcp://10.0.0.5:11883\"\n",
			"cloud.backoff_max", 2, "4 connection attempts within 2 minutes"},
		{"inflight above the uplink window", "[cloud]\ninflight = 65535\n", "cloud.inflight", 2, "must be from 1 to 65000"},
		{"sign method", "[cloud]\nsign_method = \"sha256\"\n", "cloud.sign_method", 2, "the aliyun dialect accepts hmacsha256, hmacsha1, hmacmd5"},
		{"client id template", "[cloud]\nclient_id = \"{productKey}\"\n", "cloud.client_id", 2, "must contain {deviceName}"},
		{"client id bar", "[cloud]\nclient_id = \"{deviceName}|x\"\n", "cloud.client_id", 2, "must not contain '|'"},
		{"client id brace", "[cloud]\nclient_id = \"{deviceName\"\n", "cloud.client_id", 2, "unbalanced '{'"},
		{"endpoint port", "[cloud]\nendpoint = \"tls://example.com\"\n", "cloud.endpoint", 2, "want tls://host:port"},
		{"endpoint path", "[cloud]\nendpoint = \"tcp://example.com:1883/mqtt\"\n", "cloud.endpoint", 2, "takes no path"},
		{"endpoint userinfo", "[cloud]\nendpoint = \"tls://u:SENTINEL@example.com:8883\"\n", "cloud.endpoint", 2, `"tls://REDACTED@example.com:8883": user info`},
		{"client cert alone", "[cloud]\nclient_cert = \"/c.pem\"\n", "cloud.client_cert", 2, "must be set together"},
		{"tls key alone", "[broker]\ntls_key = \"/k.pem\"\n", "broker.tls_cert", 1, "must be set together"},
		{"client ca without tls", "[broker]\nclient_ca = \"/ca.pem\"\n", "broker.client_ca", 2, "need TLS"},
		{"listener no port", "[broker]\nlisteners = [\"tcp://0.0.0.0\"]\n", "broker.listeners[0]", 2, "want tcp://host:port"},
		{"listener relative unix", "[broker]\nlisteners = [\"unix://run/x.sock\"]\n", "broker.listeners[0]", 2, "want unix:///absolute/clean/path"},
		{"listener tcp path", "[broker]\nlisteners = [\"tcp://:1883/x\"]\n", "broker.listeners[0]", 2, "takes no path"},
		{"listener duplicate", "[broker]\nlisteners = [\"tcp://:1883\", \"tcp://:1883\"]\n", "broker.listeners[1]", 2, "duplicate listener"},
		{"listener userinfo", "[broker]\nlisteners = [\"tcp://u:SENTINEL@:1883\"]\n", "broker.listeners[0]", 2, "user info"},
		{"auth empty", "[broker]\nauth = []\n", "broker.auth", 2, "at least one"},
		{"auth duplicate", "[broker]\nauth = [\"signed\", \"signed\"]\n", "broker.auth[1]", 2, "duplicate auth mode"},
		{"admin no user", "[[broker.admin]]\npassword_file = \"/p\"\n", "broker.admin[0].user", 1, "must not be empty"},
		{"admin bad user", "[[broker.admin]]\nuser = \"a&b\"\npassword_file = \"/p\"\n", "broker.admin[0].user", 2, `invalid value "a&b"`},
		{"admin no file", "[[broker.admin]]\nuser = \"ops\"\n", "broker.admin[0].password_file", 1, "must not be empty"},
		{"admin duplicate", "[[broker.admin]]\nuser = \"ops\"\npassword_file = \"/p\"\n[[broker.admin]]\nuser = \"ops\"\npassword_file = \"/q\"\n",
			"broker.admin[1].user", 5, "duplicate admin user"},
		{"admin second missing file", "[[broker.admin]]\nuser = \"a\"\npassword_file = \"/p\"\n\n[[broker.admin]]\nuser = \"b\"\n",
			"broker.admin[1].password_file", 5, "must not be empty"},
		{"admin not a table", "[broker]\nadmin = [\"ops\"]\n", "broker.admin[0]", 2, "expected a table, found a string"},
		{"array of tables for array", "[[broker.listeners]]\nx = 1\n", "broker.listeners", 1, "expected an array, found an array of tables"},
		{"metrics listen", "[metrics]\nlisten = \"9464\"\n", "metrics.listen", 2, "want host:port"},
		{"metrics port", "[metrics]\nlisten = \"127.0.0.1:http\"\n", "metrics.listen", 2, "is not a number"},
		{"packet vs device budget", "[broker]\nmax_packet_size = \"1MiB\"\n[spool]\ndevice_budget = \"512KiB\"\n", "spool.device_budget", 4, "smaller than broker.max_packet_size"},
		{"quoted unknown key", "\"a\\nb\" = 1\n", `"a\nb"`, 1, "unknown key"},
		{"unknown under admin inline", "[broker]\nadmin = [{ user = \"a\", password_file = \"/p\", extra = 1 }]\n", "broker.admin[0].extra", 2, "unknown key"},
		{"unknown nested implicit", "[cloud]\ntls.verify = true\n", "cloud.tls", 2, "unknown key"},
		{"empty state dir", "state_dir = \"\"\n", "state_dir", 1, "must not be empty"},
		{"unknown secret key", "[cloud]\ndevice_secret = \"SENTINEL\"\n", "cloud.device_secret", 2, "secrets do not belong"},
		{"misplaced password_file", "[broker]\npassword_file = \"/p\"\n", "broker.password_file", 2, "unknown key"},
		{"misspelled password_file", "[[broker.admin]]\nuser = \"ops\"\npasword_file = \"/p\"\n", "broker.admin[0].pasword_file", 3, `did you mean "password_file"?`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(strings.NewReader(tt.doc), "inline.toml")
			if err == nil {
				t.Fatalf("Parse(%q): no error", tt.doc)
			}
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("error %v (%T) is not an *Error", err, err)
			}
			if ce.Key != tt.key || ce.Line != tt.line || !strings.Contains(ce.Msg, tt.msg) {
				t.Errorf("first error = {Line %d Key %q Msg %q}\nwant         {Line %d Key %q Msg containing %q}",
					ce.Line, ce.Key, ce.Msg, tt.line, tt.key, tt.msg)
			}
			if strings.Contains(err.Error(), "SENTINEL") {
				t.Errorf("error shows a secret: %q", err)
			}
			if strings.Contains(ce.Error(), "\n") {
				t.Errorf("error spans lines: %q", ce.Error())
			}
		})
	}
}

func TestParseValid(t *testing.T) {
	tests := []struct {
		name  string
		doc   string
		check func(*Config) bool
	}{
		{"sizes", "[broker]\nmax_packet_size = \"1MB\"\n[spool]\nbudget = \"2 GiB\"\ndevice_budget = 1048576\n",
			func(c *Config) bool {
				return c.Broker.MaxPacketSize == 1_000_000 && c.Spool.Budget == 2*GiB && c.Spool.DeviceBudget == MiB
			}},
		{"empty listeners", "[broker]\nlisteners = []\n", func(c *Config) bool { return c.Broker.Listeners != nil && len(c.Broker.Listeners) == 0 }},
		{"dotted keys", "broker.max_clients = 7\ncloud.keepalive = \"60s\"\n",
			func(c *Config) bool { return c.Broker.MaxClients == 7 && c.Cloud.Keepalive == Duration(time.Minute) }},
		{"inline table", "spool = { overflow = \"reject-new\", ttl = \"1h\" }\n",
			func(c *Config) bool {
				return c.Spool.Overflow == OverflowRejectNew && c.Spool.TTL == Duration(time.Hour)
			}},
		{"inline admin", "[broker]\nadmin = [{ user = \"ops\", password_file = \"/p\" }]\n",
			func(c *Config) bool { return len(c.Broker.Admin) == 1 && c.Broker.Admin[0].User == "ops" }},
		{"device rate set", "[cloud]\ndevice_rate = 5\n",
			func(c *Config) bool { return c.Cloud.EffectiveDeviceRate() == 5 }},
		{"enos backoff above the floor", "[cloud]\ndialect = \"enos\"\nendpoint = \"tcp://10.0.0.5:11883\"\nbackoff_max = \"31s\"\n",
			func(c *Config) bool { return c.Cloud.BackoffMax == Duration(31*time.Second) }},
		{"aliyun short backoff", "[cloud]\nbackoff_min = \"50ms\"\nbackoff_max = \"200ms\"\n",
			func(c *Config) bool { return c.Cloud.BackoffMax == Duration(200*time.Millisecond) }},
		{"enos defaults", "[cloud]\ndialect = \"enos\"\nendpoint = \"tcp://10.0.0.5:11883\"\n",
			func(c *Config) bool {
				return c.Cloud.EffectiveDeviceRate() == 0 && c.Cloud.EffectiveMaxPayload() == 512*KiB && c.Cloud.EffectiveSignMethod() == secrets.SHA256
			}},
		{"ws endpoint without port", "[cloud]\nendpoint = \"wss://{productKey}.iot-as-mqtt.cn-shanghai.aliyuncs.com/mqtt\"\n",
			func(c *Config) bool { return strings.HasPrefix(c.Cloud.EffectiveEndpoint(), "wss://") }},
		{"metrics off", "[metrics]\nlisten = \"\"\n", func(c *Config) bool { return c.Metrics.Listen == "" }},
		{"mode forms", "[broker]\nunix_socket_mode = \"0o640\"\n", func(c *Config) bool { return c.Broker.UnixSocketMode == 0o640 }},
		{"keepalive bounds", "[cloud]\nkeepalive = \"1200s\"\n", func(c *Config) bool { return c.Cloud.Keepalive == Duration(20*time.Minute) }},
		{"slog level", "log_level = \"warn\"\n", func(c *Config) bool { return c.SlogLevel().String() == "WARN" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse(strings.NewReader(tt.doc), "valid.toml")
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.doc, err)
			}
			if !tt.check(cfg) {
				t.Errorf("Parse(%q) = %+v: check failed", tt.doc, cfg)
			}
		})
	}
}

// TestValidateInCode checks Validate on configurations built in code: keys
// and values named, no lines.
func TestValidateInCode(t *testing.T) {
	cfg := Default()
	cfg.Cloud.Dialect = secrets.EnOS
	cfg.Cloud.Endpoint = "tls://enos.example.com:18883"
	cfg.Cloud.Keepalive = Duration(30 * time.Second)
	cfg.Spool.Overflow = "keep-all"
	err := cfg.Validate()
	got := configErrors(t, err)
	if len(got) != 2 {
		t.Fatalf("Validate() = %v, want 2 errors", err)
	}
	if got[0].Key != "cloud.keepalive" || !strings.Contains(got[0].Msg, `"30s"`) || got[0].Line != 0 ||
		got[0].Error() != `cloud.keepalive: invalid value "30s": the enos dialect accepts 1m0s to 5m0s` {
		t.Errorf("first error = %#v (%q)", got[0], got[0].Error())
	}
	if got[1].Key != "spool.overflow" || !strings.Contains(got[1].Msg, `"keep-all"`) {
		t.Errorf("second error = %#v", got[1])
	}

	// A zero Config is reported, not trusted (and Validate does not panic).
	if n := len(configErrors(t, (&Config{}).Validate())); n < 10 {
		t.Errorf("Validate of a zero Config found %d problems, want many", n)
	}
}

func TestParseTooLarge(t *testing.T) {
	doc := bytes.Repeat([]byte("# padding\n"), maxConfigSize/10+1)
	_, err := Parse(bytes.NewReader(doc), "big.toml")
	var ce *Error
	if !errors.As(err, &ce) || !strings.Contains(ce.Msg, "larger than") {
		t.Fatalf("Parse(large) = %v, want a size error", err)
	}
}

func TestParseTooManyErrors(t *testing.T) {
	var doc strings.Builder
	for i := range 50 {
		doc.WriteString("unknown_" + strconv.Itoa(i) + " = 1\n")
	}
	_, err := Parse(strings.NewReader(doc.String()), "many.toml")
	if n := len(configErrors(t, err)); n != maxReportedErrors {
		t.Errorf("%d errors reported, want %d", n, maxReportedErrors)
	}
	if !strings.Contains(err.Error(), "many.toml: 30 more errors") {
		t.Errorf("error does not say how many were left out: %v", err)
	}
	if first := configErrors(t, err)[0]; first.Key != "unknown_0" || first.Line != 1 {
		t.Errorf("first error = %#v, want unknown_0 at line 1", first)
	}
}

// TestParseManyArrayElements checks the lines of keys repeated in a
// long array of tables, and that thousands of errors cost no more than the
// reported few.
func TestParseManyArrayElements(t *testing.T) {
	var doc strings.Builder
	var want []string
	line := 1
	for i := range 1000 {
		doc.WriteString("[[broker.admin]]\nuser = \"u" + strconv.Itoa(i) + "\"\npassword_file = \"/p\"\n")
		line += 3
		if i%3 == 1 {
			doc.WriteString("extra = 1\n")
			if len(want) < maxReportedErrors {
				want = append(want, strconv.Itoa(line)+" broker.admin["+strconv.Itoa(i)+"].extra")
			}
			line++
		}
	}
	_, err := Parse(strings.NewReader(doc.String()), "admins.toml")
	var got []string
	for _, ce := range configErrors(t, err) {
		got = append(got, strconv.Itoa(ce.Line)+" "+ce.Key)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("errors at\n%q\nwant\n%q", got, want)
	}
}
