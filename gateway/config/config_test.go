package config

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/edgegw/edgegw/secrets"
)

const examplePath = "../../packaging/edgegw.toml"

// configErrors flattens a Parse/Validate error into its Errors.
func configErrors(t testing.TB, err error) []*Error {
	t.Helper()
	var out []*Error
	var walk func(error)
	walk = func(err error) {
		if ce, ok := err.(*Error); ok {
			out = append(out, ce)
			return
		}
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
		}
	}
	walk(err)
	return out
}

func mustParseFile(t *testing.T, path string) *Config {
	t.Helper()
	cfg, err := Load(path)
	if err != nil {
		t.Fatalf("Load(%s): %v", path, err)
	}
	return cfg
}

func ptr[T any](v T) *T { return &v }

func TestParseGood(t *testing.T) {
	got := mustParseFile(t, "testdata/good.toml")
	want := &Config{
		StateDir:  "/srv/edgegw",
		KeyFile:   "/etc/credstore/edgegw.key",
		LogLevel:  "debug",
		LogFormat: "json",
		Broker: BrokerConfig{
			Listeners: []string{
				"tcp://127.0.0.1:1883",
				"tls://0.0.0.0:8883",
				"ws://[::1]:8080/mqtt",
				"wss://:8443",
				"unix:///run/edgegw/admin.sock",
			},
			TLSCert:          "/etc/edgegw/server.crt",
			TLSKey:           "/etc/edgegw/server.key",
			ClientCA:         "/etc/edgegw/devices-ca.crt",
			Auth:             []string{"cert", "signed"},
			MaxPacketSize:    128 * KiB,
			MaxClients:       5000,
			WritesPending:    128,
			UnixSocketMode:   0o600,
			SessionExpiry:    Duration(time.Hour), // defaults: good.toml leaves them out
			MaxSubscriptions: 100,
			Admin: []AdminUser{
				{User: "ops", PasswordFile: "/etc/edgegw/ops.pass"},
				{User: "scada-1", PasswordFile: "/etc/edgegw/scada.pass"},
			},
		},
		Cloud: CloudConfig{
			Dialect:          secrets.EnOS,
			Endpoint:         "tls://mqtt.enos.example.com:18883",
			CAFile:           "/etc/edgegw/enos-ca.pem",
			ClientCert:       "/etc/edgegw/gw.crt",
			ClientKey:        "/etc/edgegw/gw.key",
			Keepalive:        Duration(2 * time.Minute),
			SignMethod:       secrets.SHA1,
			ClientID:         "{productKey}.{deviceName}",
			ConnectRate:      12.5,
			ConnectBurst:     20,
			BackoffMin:       Duration(500 * time.Millisecond),
			BackoffMax:       Duration(5 * time.Minute),
			AuthRetry:        Duration(30 * time.Minute),
			Inflight:         32,
			DeviceRate:       ptr(0.0),
			GatewayRate:      2000,
			GatewayBandwidth: 8 * MiB,
			AckTimeout:       Duration(45 * time.Second),
			MaxPayload:       128 * KiB,
			NTPTTL:           Duration(2 * time.Second),
			RRPCTTL:          Duration(6500 * time.Millisecond),
			ReplyTTL:         Duration(time.Minute),
		},
		Spool: SpoolConfig{
			Durable:      false,
			Path:         "/data/spool.db",
			Budget:       10_000_000_000,
			DeviceBudget: 100 * MiB,
			Overflow:     OverflowRejectNew,
			TTL:          Duration(168 * time.Hour),
			QoS0:         false,
			LiveFirst:    true,
		},
		Metrics:  MetricsConfig{Listen: ""},
		Shutdown: ShutdownConfig{Timeout: Duration(10 * time.Second)},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("good.toml decoded to\n%+v\nwant\n%+v", got, want)
	}
	if got.Cloud.EffectiveDeviceRate() != 0 || got.Cloud.EffectiveMaxPayload() != 128*KiB ||
		got.Cloud.EffectiveSignMethod() != secrets.SHA1 || got.EffectiveSpoolPath() != "/data/spool.db" ||
		got.EffectiveKeyFile() != "/etc/credstore/edgegw.key" || got.Cloud.EffectiveEndpoint() != "tls://mqtt.enos.example.com:18883" {
		t.Errorf("Effective values of good.toml are not the configured ones")
	}
}

func TestParseEmptyIsDefault(t *testing.T) {
	for _, doc := range []string{"", "# only a comment\n", "\ufeff[broker]\n[cloud]\n"} {
		cfg, err := Parse(strings.NewReader(doc), "empty.toml")
		if err != nil {
			t.Fatalf("Parse(%q): %v", doc, err)
		}
		if !reflect.DeepEqual(cfg, Default()) {
			t.Errorf("Parse(%q) = %+v, want Default()", doc, cfg)
		}
	}
}

func TestDefault(t *testing.T) {
	cfg := Default()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("Default().Validate(): %v", err)
	}
	if Default() == cfg || &Default().Broker.Listeners[0] == &cfg.Broker.Listeners[0] {
		t.Fatal("Default shares memory between calls")
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"state_dir", cfg.StateDir, "/var/lib/edgegw"},
		{"listeners", cfg.Broker.Listeners, []string{"tcp://0.0.0.0:1883", "unix:///run/edgegw/admin.sock"}},
		{"auth", cfg.Broker.Auth, []string{"signed", "password", "cert"}},
		{"max_packet_size", cfg.Broker.MaxPacketSize, 256 * KiB},
		{"unix_socket_mode", cfg.Broker.UnixSocketMode, FileMode(0o660)},
		{"keepalive", cfg.Cloud.Keepalive, Duration(300 * time.Second)},
		{"budget", cfg.Spool.Budget, GiB},
		{"device_budget", cfg.Spool.DeviceBudget, 64 * MiB},
		{"registry", cfg.RegistryPath(), "/var/lib/edgegw/registry.db"},
		{"spool path", cfg.EffectiveSpoolPath(), "/var/lib/edgegw/spool.db"},
		{"endpoint", cfg.Cloud.EffectiveEndpoint(), DefaultAliyunEndpoint},
		{"aliyun sign method", cfg.Cloud.EffectiveSignMethod(), secrets.HMACSHA256},
		{"aliyun device rate", cfg.Cloud.EffectiveDeviceRate(), 30.0},
		{"aliyun max payload", cfg.Cloud.EffectiveMaxPayload(), 256 * KiB},
		{"slog level", cfg.SlogLevel().String(), "INFO"},
		{"shutdown", cfg.Shutdown.Timeout, Duration(20 * time.Second)},
	}
	for _, c := range checks {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}

	enos := Default().Cloud
	enos.Dialect = secrets.EnOS
	if enos.EffectiveSignMethod() != secrets.SHA256 || enos.EffectiveDeviceRate() != 0 ||
		enos.EffectiveMaxPayload() != 512*KiB || enos.EffectiveEndpoint() != "" {
		t.Errorf("enos effective values: sign %s rate %v payload %v endpoint %q",
			enos.EffectiveSignMethod(), enos.EffectiveDeviceRate(), enos.EffectiveMaxPayload(), enos.EffectiveEndpoint())
	}
}

func TestEffectiveKeyFile(t *testing.T) {
	cfg := Default()
	t.Setenv("CREDENTIALS_DIRECTORY", "")
	if got := cfg.EffectiveKeyFile(); got != "/var/lib/edgegw/edgegw.key" {
		t.Errorf("without credentials: %q", got)
	}
	t.Setenv("CREDENTIALS_DIRECTORY", "/run/credentials/edgegw.service")
	if got := cfg.EffectiveKeyFile(); got != "/run/credentials/edgegw.service/edgegw.key" {
		t.Errorf("with credentials: %q", got)
	}
	cfg.KeyFile = "/etc/edgegw/key"
	if got := cfg.EffectiveKeyFile(); got != "/etc/edgegw/key" {
		t.Errorf("explicit: %q", got)
	}
}

func TestLoadMissing(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "absent.toml"))
	if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "absent.toml") {
		t.Fatalf("Load(absent) = %v, want a not-exist error naming the file", err)
	}
}

// TestExampleConfig checks the documented example: it parses, it states
// exactly the defaults, and it mentions every key of the schema.
func TestExampleConfig(t *testing.T) {
	cfg := mustParseFile(t, examplePath)
	if !reflect.DeepEqual(cfg, Default()) {
		t.Errorf("%s does not state the defaults:\n got %+v\nwant %+v", examplePath, cfg, Default())
	}
	data, err := os.ReadFile(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	var tree map[string]any
	md, err := toml.Decode(string(data), &tree)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range schemaKeys(reflect.TypeFor[Config](), nil) {
		if md.IsDefined(key...) {
			continue
		}
		// Keys without a literal default (device_rate, the admin users)
		// are shown commented out.
		re := regexp.MustCompile(`(?m)^#\s*(` + regexp.QuoteMeta(key[len(key)-1]) + `\s*=|\[\[` + regexp.QuoteMeta(strings.Join(key, ".")) + `\]\])`)
		if !re.Match(data) {
			t.Errorf("%s does not document %s", examplePath, key)
		}
	}
	// Every documented line has a comment.
	for i, line := range strings.Split(string(data), "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.Contains(trimmed, "=") && !strings.HasPrefix(trimmed, "#") && !strings.Contains(trimmed, "#") {
			t.Errorf("%s:%d: key without a comment: %s", examplePath, i+1, trimmed)
		}
	}
}

// schemaKeys lists every key path of the configuration schema.
func schemaKeys(t reflect.Type, prefix []string) [][]string {
	var keys [][]string
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if name == "" {
			continue
		}
		path := append(append([]string(nil), prefix...), name)
		ft := f.Type
		switch {
		case ft.Kind() == reflect.Struct:
			keys = append(keys, schemaKeys(ft, path)...)
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
			keys = append(keys, path)
			keys = append(keys, schemaKeys(ft.Elem(), path)...)
		default:
			keys = append(keys, path)
		}
	}
	return keys
}

// TestConfigFieldKinds guards the decoder: every field of the schema is of a
// kind it decodes.
func TestConfigFieldKinds(t *testing.T) {
	var check func(reflect.Type, string)
	check = func(t2 reflect.Type, prefix string) {
		for i := range t2.NumField() {
			f := t2.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
			if name == "" || !f.IsExported() {
				t.Errorf("%s%s has no toml tag", prefix, f.Name)
				continue
			}
			ft := f.Type
			if reflect.PointerTo(ft).Implements(reflect.TypeFor[valueDecoder]()) {
				continue
			}
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			switch ft.Kind() {
			case reflect.String, reflect.Bool, reflect.Int, reflect.Int64, reflect.Float64:
			case reflect.Struct:
				check(ft, prefix+name+".")
			case reflect.Slice:
				if ft.Elem().Kind() == reflect.Struct {
					check(ft.Elem(), prefix+name+".")
				} else if ft.Elem().Kind() != reflect.String {
					t.Errorf("%s%s: unsupported slice %s", prefix, name, ft)
				}
			default:
				t.Errorf("%s%s: unsupported kind %s", prefix, name, ft)
			}
		}
	}
	check(reflect.TypeFor[Config](), "")
}

// TestConfigRoundTrip encodes configurations with the TOML encoder and parses
// them back: the key names and the value types' text forms agree.
func TestConfigRoundTrip(t *testing.T) {
	for _, cfg := range []*Config{Default(), mustParseFile(t, "testdata/good.toml")} {
		roundTrip(t, cfg)
	}
}

func roundTrip(t testing.TB, cfg *Config) {
	t.Helper()
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(cfg); err != nil {
		t.Fatalf("encode %+v: %v", cfg, err)
	}
	back, err := Parse(&buf, "encoded.toml")
	if err != nil {
		t.Fatalf("parse encoded config: %v\n%s", err, buf.String())
	}
	if !reflect.DeepEqual(back, cfg) {
		t.Fatalf("round trip changed the config:\n got %+v\nwant %+v\n%s", back, cfg, buf.String())
	}
}
