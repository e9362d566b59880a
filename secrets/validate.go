package secrets

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// Identifier limits. Product keys, device names and client ids end up in
// MQTT usernames ("dn&pk"), client ids ("cid|k=v,...|") and topic segments
// ("/sys/pk/dn/..."), so besides the clouds' own rules none of them may
// contain '&', '|', ',', '/', '+', '#', whitespace or control characters.
// The character sets below exclude all of those.
const (
	// aliyunProductKeyMax is generous: real Alibaba product keys are 11
	// characters (e.g. "a1B2c3D4e5F").
	aliyunProductKeyMax = 32
	aliyunDeviceNameMin = 4
	aliyunDeviceNameMax = 32
	// enosIdentMax bounds EnOS productKey and deviceKey; the documentation
	// gives no hard limit, real keys are 8-32 characters.
	enosIdentMax = 64
	// clientIDMax is the clouds' limit on the bare clientId (the part of
	// the MQTT clientId before the first '|').
	clientIDMax = 64
	// secretValueMax bounds stored deviceSecrets, productSecrets and
	// tokens. Real ones are 20-64 characters.
	secretValueMax = 512
	// stateReasonMax bounds Device.StateReason.
	stateReasonMax = 512
	// activationSourceMax bounds ActivationRecord.Source.
	activationSourceMax = 64
	// quotedValueMax is how much of an invalid (non-secret) value an error
	// message quotes.
	quotedValueMax = 64
)

// ValidateDialect reports whether d is a dialect the registry knows.
func ValidateDialect(d Dialect) error {
	switch d {
	case Aliyun, EnOS:
		return nil
	}
	return fmt.Errorf("dialect %s: unknown (want %s or %s)", quoteIdent(string(d)), Aliyun, EnOS)
}

// ValidateProductKey checks a productKey against the rules of dialect d:
// Alibaba allows 1-32 ASCII letters and digits, EnOS 1-64 ASCII letters,
// digits and "-_.". The error names the field, the value and the rule, for
// example `productKey "a b": invalid character ' ' at offset 1 (allowed:
// letters and digits)`.
func ValidateProductKey(d Dialect, pk string) error {
	switch d {
	case Aliyun:
		return checkIdent("productKey", pk, 1, aliyunProductKeyMax, isIdentAlnum, "letters and digits")
	case EnOS:
		return checkIdent("productKey", pk, 1, enosIdentMax, isEnOSIdentChar, "letters, digits and -_.")
	}
	return ValidateDialect(d)
}

// ValidateDeviceName checks a device's name against the rules of dialect d:
// an Alibaba deviceName is 4-32 ASCII letters, digits and "-_@.:"; an EnOS
// deviceKey is 1-64 ASCII letters, digits and "-_.". Errors name the field
// as the cloud calls it (deviceName or deviceKey), e.g.
// `deviceName "ab": must be 4-32 characters`.
func ValidateDeviceName(d Dialect, dn string) error {
	switch d {
	case Aliyun:
		return checkIdent("deviceName", dn, aliyunDeviceNameMin, aliyunDeviceNameMax, isAliyunDeviceNameChar, "letters, digits and -_@.:")
	case EnOS:
		return checkIdent("deviceKey", dn, 1, enosIdentMax, isEnOSIdentChar, "letters, digits and -_.")
	}
	return ValidateDialect(d)
}

// ValidateClientID checks a bare MQTT clientId (the part before the first
// '|'): 1-64 printable ASCII characters without '|' or ',' (they delimit
// the signing parameters), whitespace or control characters. '&', '.' and
// '-' are allowed because the clouds' SDKs build clientIds such as
// "pk&dn" and "pk.dn".
func ValidateClientID(cid string) error {
	return checkIdent("clientId", cid, 1, clientIDMax, isClientIDChar, "printable ASCII except | and ,")
}

// validateSecretValue checks the shape of a deviceSecret, productSecret or
// token without ever printing it: non-empty, at most secretValueMax bytes,
// printable ASCII (a trailing newline pasted from a file is the usual
// mistake this catches).
func validateSecretValue(field string, s Secret) error {
	if s.IsZero() {
		return fmt.Errorf("%s: must not be empty", field)
	}
	if s.Len() > secretValueMax {
		return fmt.Errorf("%s: is %d bytes, at most %d allowed", field, s.Len(), secretValueMax)
	}
	v := s.Reveal()
	for i := 0; i < len(v); i++ {
		if c := v[i]; c <= ' ' || c >= 0x7f {
			return fmt.Errorf("%s: byte %d is whitespace, a control character or not ASCII", field, i)
		}
	}
	return nil
}

// validateStateReason checks Device.StateReason.
func validateStateReason(s string) error {
	if len(s) > stateReasonMax {
		return fmt.Errorf("stateReason: is %d bytes, at most %d allowed", len(s), stateReasonMax)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("stateReason: not valid UTF-8")
	}
	return nil
}

// validateActivationSource checks the source label of an activation record
// (e.g. "enos-activate"): 1-64 characters of letters, digits and "-_@.:".
func validateActivationSource(src string) error {
	return checkIdent("source", src, 1, activationSourceMax, isAliyunDeviceNameChar, "letters, digits and -_@.:")
}

// checkIdent is the common length-and-charset check. The length is counted
// in bytes, which equals characters because every allowed set is ASCII.
func checkIdent(field, v string, minLen, maxLen int, ok func(byte) bool, allowed string) error {
	if len(v) < minLen || len(v) > maxLen {
		if minLen == 1 && v == "" {
			return fmt.Errorf("%s: must not be empty", field)
		}
		return fmt.Errorf("%s %s: must be %d-%d characters", field, quoteIdent(v), minLen, maxLen)
	}
	for i := 0; i < len(v); i++ {
		if !ok(v[i]) {
			r, _ := utf8.DecodeRuneInString(v[i:])
			return fmt.Errorf("%s %s: invalid character %q at offset %d (allowed: %s)", field, quoteIdent(v), r, i, allowed)
		}
	}
	return nil
}

// quoteIdent quotes a non-secret value for an error message, shortened so
// that a megabyte of garbage does not end up in a log line.
func quoteIdent(v string) string {
	if len(v) <= quotedValueMax {
		return fmt.Sprintf("%q", v)
	}
	cut := quotedValueMax
	for cut > 0 && !utf8.RuneStart(v[cut]) {
		cut--
	}
	return fmt.Sprintf("%q…(%d bytes)", v[:cut], len(v))
}

func isIdentAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

func isEnOSIdentChar(c byte) bool {
	return isIdentAlnum(c) || c == '-' || c == '_' || c == '.'
}

func isAliyunDeviceNameChar(c byte) bool {
	return isIdentAlnum(c) || strings.IndexByte("-_@.:", c) >= 0
}

func isClientIDChar(c byte) bool {
	return c > ' ' && c < 0x7f && c != '|' && c != ','
}

// validIdentifierAnyDialect reports whether pk and dn are acceptable under
// at least one dialect. The record decoder uses it: it cannot know the
// product's dialect, but must still reject keys no writer could have made.
func validIdentifierAnyDialect(pk, dn string) bool {
	return (ValidateProductKey(Aliyun, pk) == nil && ValidateDeviceName(Aliyun, dn) == nil) ||
		(ValidateProductKey(EnOS, pk) == nil && ValidateDeviceName(EnOS, dn) == nil)
}
