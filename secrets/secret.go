package secrets

import (
	"crypto/subtle"
	"fmt"
	"log/slog"
)

// Redacted is what every formatting of a Secret prints instead of its value.
const Redacted = "[REDACTED]"

// Secret holds a deviceSecret, productSecret, local password, token or key.
// Its value leaves the type only through Reveal: every way of printing,
// logging or marshalling it (fmt verbs, %#v, slog, JSON, text) yields
// Redacted, so a Secret that slips into a log line or an error string leaks
// nothing.
//
// The value sits behind a pointer on purpose: fmt cannot call methods on
// unexported struct fields and prints them by reflection, so a Secret kept in
// an unexported field would otherwise print in clear; through the pointer it
// prints as an address.
type Secret struct {
	p *string
}

// NewSecret wraps s.
func NewSecret(s string) Secret {
	if s == "" {
		return Secret{}
	}
	return Secret{p: &s}
}

// Reveal returns the secret's value. Call it only where the value is really
// needed (signing, encryption, the one output the operator asked for).
func (s Secret) Reveal() string {
	if s.p == nil {
		return ""
	}
	return *s.p
}

// IsZero reports whether the secret is empty.
func (s Secret) IsZero() bool { return s.p == nil || *s.p == "" }

// Len returns the length of the secret in bytes (for shape checks that must
// not print it).
func (s Secret) Len() int { return len(s.Reveal()) }

// Equal compares two secrets in constant time (for equal lengths).
func (s Secret) Equal(o Secret) bool {
	return subtle.ConstantTimeCompare([]byte(s.Reveal()), []byte(o.Reveal())) == 1
}

// String implements fmt.Stringer.
func (s Secret) String() string { return Redacted }

// GoString implements fmt.GoStringer (%#v).
func (s Secret) GoString() string { return "secrets.Secret(" + Redacted + ")" }

// Format implements fmt.Formatter so that every verb (%s %v %q %x %d …) redacts.
func (s Secret) Format(f fmt.State, verb rune) {
	if verb == 'v' && f.Flag('#') {
		fmt.Fprint(f, s.GoString())
		return
	}
	fmt.Fprint(f, Redacted)
}

// LogValue implements slog.LogValuer.
func (s Secret) LogValue() slog.Value { return slog.StringValue(Redacted) }

// MarshalJSON implements json.Marshaler.
func (s Secret) MarshalJSON() ([]byte, error) { return []byte(`"` + Redacted + `"`), nil }

// MarshalText implements encoding.TextMarshaler (used by TOML, XML, map keys).
func (s Secret) MarshalText() ([]byte, error) { return []byte(Redacted), nil }
