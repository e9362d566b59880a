package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/edgegw/edgegw/gateway/adminapi"
	"github.com/edgegw/edgegw/internal/logsafe"
	"github.com/edgegw/edgegw/secrets"
)

// Reading and checking request params. Problems name the parameter and
// never quote a secret.

// checkSecretShape checks a deviceSecret or productSecret without ever
// quoting it: 1-512 bytes of printable ASCII without spaces (the registry's
// rule; a trailing newline pasted from a file is the usual mistake).
func checkSecretShape(field, v string) error {
	if v == "" {
		return badRequest("%s: must not be empty", field)
	}
	if len(v) > secretShapeMax {
		return badRequest("%s: is %d bytes, at most %d allowed", field, len(v), secretShapeMax)
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; c <= ' ' || c >= 0x7f {
			return badRequest("%s: byte %d is whitespace, a control character or not ASCII", field, i)
		}
	}
	return nil
}

// checkPasswordShape checks a local password without quoting it: 1-256
// bytes of UTF-8 without control characters.
func checkPasswordShape(field, v string) error {
	if v == "" {
		return badRequest("%s: must not be empty", field)
	}
	if len(v) > localPasswordMax {
		return badRequest("%s: is %d bytes, at most %d allowed", field, len(v), localPasswordMax)
	}
	if !utf8.ValidString(v) {
		return badRequest("%s: not valid UTF-8", field)
	}
	for i, r := range v {
		if r < ' ' || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return badRequest("%s: byte %d is a control character", field, i)
		}
	}
	return nil
}

// params reads a request's params object. The first problem is kept and
// reported by finish, which also refuses parameters no getter asked for.
type params struct {
	raw    map[string]json.RawMessage
	used   map[string]bool
	prefix string
	err    *apiError
}

func newParams(raw json.RawMessage) (*params, error) {
	p := &params{raw: map[string]json.RawMessage{}, used: map[string]bool{}, prefix: "params."}
	if len(raw) == 0 || isNull(raw) {
		return p, nil
	}
	if err := json.Unmarshal(raw, &p.raw); err != nil || p.raw == nil {
		return nil, badRequest("params: want a JSON object")
	}
	return p, nil
}

func isNull(raw json.RawMessage) bool { return string(bytes.TrimSpace(raw)) == "null" }

func (p *params) fail(name, format string, args ...any) {
	if p.err == nil {
		p.err = badRequest("%s%s: %s", p.prefix, name, fmt.Sprintf(format, args...))
	}
}

// get returns the raw value of name; ok is false when absent or null.
func (p *params) get(name string) (json.RawMessage, bool) {
	p.used[name] = true
	raw, ok := p.raw[name]
	if !ok || isNull(raw) {
		return nil, false
	}
	return raw, true
}

func (p *params) has(name string) bool {
	_, ok := p.raw[name]
	return ok
}

// str returns a string parameter ("" when absent or null).
func (p *params) str(name string) string {
	raw, ok := p.get(name)
	if !ok {
		return ""
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		p.fail(name, "want a string")
		return ""
	}
	return s
}

// nullable returns a string parameter and whether it was given, and given
// as null.
func (p *params) nullable(name string) (v string, set, null bool) {
	p.used[name] = true
	raw, ok := p.raw[name]
	if !ok {
		return "", false, false
	}
	if isNull(raw) {
		return "", true, true
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		p.fail(name, "want a string or null")
		return "", false, false
	}
	return v, true, false
}

func (p *params) boolean(name string) (v, set bool) {
	raw, ok := p.get(name)
	if !ok {
		return false, false
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		p.fail(name, "want true or false")
		return false, false
	}
	return v, true
}

func (p *params) integer(name string, def, lo, hi int) int {
	raw, ok := p.get(name)
	if !ok {
		return def
	}
	var f float64
	if err := json.Unmarshal(raw, &f); err != nil || f != float64(int64(f)) {
		p.fail(name, "want a whole number")
		return def
	}
	if f < float64(lo) || f > float64(hi) {
		p.fail(name, "%v is out of range %d-%d", f, lo, hi)
		return def
	}
	return int(f)
}

// duration accepts a Go duration string ("90s", "5m") or a number of
// seconds.
func (p *params) duration(name string, def, lo, hi time.Duration) (time.Duration, bool) {
	raw, ok := p.get(name)
	if !ok {
		return def, false
	}
	var d time.Duration
	var s string
	var f float64
	switch {
	case json.Unmarshal(raw, &s) == nil:
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			p.fail(name, "%q is not a duration (e.g. \"90s\", \"5m\")", logsafe.Clip(s))
			return def, true
		}
	case json.Unmarshal(raw, &f) == nil:
		d = time.Duration(f * float64(time.Second))
	default:
		p.fail(name, "want a duration such as \"90s\", or seconds")
		return def, true
	}
	if d < lo || d > hi {
		p.fail(name, "%s is out of range %s-%s", d, lo, hi)
		return def, true
	}
	return d, true
}

// device reads productKey and deviceName, both required.
func (p *params) device() secrets.DeviceID {
	pk := p.str("productKey")
	dn := p.str("deviceName")
	for _, f := range []struct{ name, v string }{{"productKey", pk}, {"deviceName", dn}} {
		switch {
		case p.err != nil:
		case f.v == "":
			p.fail(f.name, "required")
		case len(f.v) > adminIdentMax:
			p.fail(f.name, "is %d bytes, at most %d allowed", len(f.v), adminIdentMax)
		case strings.ContainsAny(f.v, "/\x00"):
			p.fail(f.name, "%q: must not contain '/'", logsafe.Clip(f.v))
		}
	}
	return secrets.DeviceID{ProductKey: pk, DeviceName: dn}
}

// rows reads device.import's rows: an array of 1 to adminapi.ImportMax
// objects, decoded one by one later so that a bad row fails alone.
func (p *params) rows(name string) []json.RawMessage {
	raw, ok := p.get(name)
	if !ok {
		p.fail(name, "required (an array of {line, productKey, deviceName, deviceSecret})")
		return nil
	}
	var rows []json.RawMessage
	if err := json.Unmarshal(raw, &rows); err != nil {
		p.fail(name, "want an array of {line, productKey, deviceName, deviceSecret}")
		return nil
	}
	if len(rows) == 0 || len(rows) > adminapi.ImportMax {
		p.fail(name, "%d rows; want 1 to %d per request", len(rows), adminapi.ImportMax)
		return nil
	}
	return rows
}

// finish reports the first problem, or a parameter nobody asked for.
func (p *params) finish() error {
	if p.err != nil {
		return p.err
	}
	var unknown []string
	for k := range p.raw {
		if !p.used[k] {
			unknown = append(unknown, strconvQuote(logsafe.Clip(k)))
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		known := make([]string, 0, len(p.used))
		for k := range p.used {
			known = append(known, k)
		}
		sort.Strings(known)
		want := strings.Join(known, ", ")
		if want == "" {
			want = "none"
		}
		return badRequest("%s%s: unknown parameter (want %s)", p.prefix, strings.Join(unknown, ", "), want)
	}
	return nil
}

func strconvQuote(s string) string { return fmt.Sprintf("%q", s) }

// jsonProblem describes a JSON decoding error without quoting the input
// (which may hold a secret).
func jsonProblem(err error, want string) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("invalid JSON at byte %d (want %s)", se.Offset, want)
	case errors.As(err, &te):
		return fmt.Sprintf("want %s, got a JSON %s", want, te.Value)
	}
	return "invalid JSON (want " + want + ")"
}
