package secrets

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

// leakCheck fails if any of the forms of s contain the value.
func leakCheck(t *testing.T, what, s string, values ...string) {
	t.Helper()
	for _, v := range values {
		if v != "" && strings.Contains(s, v) {
			t.Errorf("%s leaks a secret: %q", what, s)
		}
	}
}

// TestSecretNeverPrints covers every way a Secret (alone, in exported and
// unexported fields, in Credentials and Presented) can be printed, logged or
// marshalled.
func TestSecretNeverPrints(t *testing.T) {
	const value = "Sup3rSecretValue!"
	s := NewSecret(value)
	type holder struct {
		Exported   Secret
		unexported Secret
		Ptr        *Secret
	}
	h := holder{Exported: s, unexported: s, Ptr: &s}
	c, err := Sign(SignParams{Dialect: Aliyun, ProductKey: "pk1", DeviceName: "dev1", Timestamp: "1"}, s)
	if err != nil {
		t.Fatal(err)
	}
	p, err := ParseConnect(Aliyun, c.ClientID, c.Username, c.Password)
	if err != nil {
		t.Fatal(err)
	}
	pw := c.Password.Reveal()
	for _, v := range []any{s, &s, h, &h, c, &c, p, *p} {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d", "%T %v"} {
			leakCheck(t, fmt.Sprintf("Sprintf(%q, %T)", verb, v), fmt.Sprintf(verb, v), value, pw)
		}
		leakCheck(t, "Sprint", fmt.Sprint(v), value, pw)
		leakCheck(t, "Sprintln", fmt.Sprintln(v), value, pw)
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		leakCheck(t, "json", string(b), value, pw)
		var buf bytes.Buffer
		slog.New(slog.NewTextHandler(&buf, nil)).Info("m", "v", v, "s", s)
		slog.New(slog.NewJSONHandler(&buf, nil)).Info("m", "v", v, "s", s)
		leakCheck(t, "slog", buf.String(), value, pw)
		leakCheck(t, "error", fmt.Errorf("wrap %v: %w", v, errors.New("x")).Error(), value, pw)
	}
	if !strings.Contains(fmt.Sprint(s), Redacted) {
		t.Errorf("Sprint(secret) = %q, want %q", fmt.Sprint(s), Redacted)
	}
	if s.Reveal() != value || s.Len() != len(value) || s.IsZero() || !s.Equal(NewSecret(value)) || s.Equal(NewSecret(value+"x")) {
		t.Error("Secret accessors broken")
	}
	if !NewSecret("").IsZero() || !(Secret{}).IsZero() || NewSecret("").Reveal() != "" {
		t.Error("zero Secret broken")
	}
}
