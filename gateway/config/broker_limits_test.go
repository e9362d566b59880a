package config

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// Issue #13: how long an offline persistent session lives and how many
// subscriptions a device may hold are the operator's to set, with short,
// cloud-like defaults.
func TestBrokerSessionAndSubscriptionLimits(t *testing.T) {
	d := Default().Broker
	if time.Duration(d.SessionExpiry) != time.Hour || d.MaxSubscriptions != 100 {
		t.Errorf("defaults: session_expiry %v, max_subscriptions %d; want 1h, 100", d.SessionExpiry, d.MaxSubscriptions)
	}
	cfg, err := Parse(strings.NewReader("[broker]\nsession_expiry = \"10m\"\nmax_subscriptions = 250\n"), "inline.toml")
	if err != nil {
		t.Fatal(err)
	}
	if time.Duration(cfg.Broker.SessionExpiry) != 10*time.Minute || cfg.Broker.MaxSubscriptions != 250 {
		t.Errorf("parsed session_expiry %v, max_subscriptions %d", cfg.Broker.SessionExpiry, cfg.Broker.MaxSubscriptions)
	}
	for _, tt := range []struct {
		doc, key string
		line     int
		msg      string
	}{
		{"[broker]\nsession_expiry = \"0s\"\n", "broker.session_expiry", 2, `invalid value "0s": must be at least 1s`},
		{"[broker]\nsession_expiry = \"500ms\"\n", "broker.session_expiry", 2, "must be at least 1s"},
		{"[broker]\n\nsession_expiry = \"200000h\"\n", "broker.session_expiry", 3, "must be at most"},
		{"[broker]\nsession_expiry = 3600\n", "broker.session_expiry", 2, "expected a duration string"},
		{"[broker]\nmax_subscriptions = 0\n", "broker.max_subscriptions", 2, "must be from 1 to 100000"},
		{"[broker]\nmax_subscriptions = 1000000\n", "broker.max_subscriptions", 2, "must be from 1 to 100000"},
		{"[broker]\nmax_subscriptions = \"100\"\n", "broker.max_subscriptions", 2, "expected an integer"},
	} {
		_, err := Parse(strings.NewReader(tt.doc), "inline.toml")
		var ce *Error
		if !errors.As(err, &ce) {
			t.Errorf("Parse(%q): %v, want an *Error", tt.doc, err)
			continue
		}
		if ce.File != "inline.toml" || ce.Key != tt.key || ce.Line != tt.line || !strings.Contains(ce.Msg, tt.msg) {
			t.Errorf("Parse(%q): {File %q Line %d Key %q Msg %q}, want {inline.toml %d %q containing %q}",
				tt.doc, ce.File, ce.Line, ce.Key, ce.Msg, tt.line, tt.key, tt.msg)
		}
	}
}
