package secrets

import (
	"crypto/subtle"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Reason classifies why presented credentials were refused.
type Reason string

// Refusal reasons. Each maps to the CONNACK code the clouds answer with
// (see ConnackCode).
const (
	ReasonMalformedClientID Reason = "malformed clientId"     // the |…| block is broken
	ReasonClientIDTooLong   Reason = "clientId too long"      // bare clientId over 64 characters
	ReasonMalformedUsername Reason = "malformed username"     // not deviceName&productKey
	ReasonUsernameMismatch  Reason = "username mismatch"      // a different identity than expected
	ReasonUnknownSignMethod Reason = "unknown signmethod"     // not a method of the dialect
	ReasonSecureMode        Reason = "unsupported securemode" // missing, or not valid in this dialect
	ReasonTimestamp         Reason = "timestamp mismatch"     // missing where required, not a number, or outside the allowed skew
	ReasonMissingPassword   Reason = "missing password"
	ReasonBadSignature      Reason = "wrong signature"
)

// VerifyError says precisely why credentials were refused. It never
// contains the password or any secret.
type VerifyError struct {
	Reason Reason
	Detail string
}

func (e *VerifyError) Error() string {
	if e.Detail == "" {
		return string(e.Reason)
	}
	return string(e.Reason) + ": " + e.Detail
}

// ConnackCode is the MQTT 3.1.1 CONNACK return code the clouds send for
// this reason: 3 (server unavailable) for a malformed clientId, 4 (bad
// username or password) for malformed credential fields, 5 (not authorized)
// for a wrong signature.
func (e *VerifyError) ConnackCode() byte {
	switch e.Reason {
	case ReasonMalformedClientID, ReasonClientIDTooLong, ReasonSecureMode:
		return 3
	case ReasonBadSignature, ReasonUsernameMismatch:
		return 5
	}
	return 4
}

func refuse(r Reason, format string, args ...any) error {
	return &VerifyError{Reason: r, Detail: fmt.Sprintf(format, args...)}
}

// Presented is a CONNECT's credentials parsed, before verification.
type Presented struct {
	Dialect    Dialect
	ClientID   string  // the bare clientId, before '|'
	Params     []Param // the |…| block in the order presented
	ProductKey string
	DeviceName string // EnOS: deviceKey
	SecureMode int
	SignMethod SignMethod
	Timestamp  string // empty when absent
	AuthType   string // Alibaba: register, regnwl, connwl; empty for the normal login
	Random     string // Alibaba dynamic registration nonce
	password   Secret
}

// Param returns the value of the |…| block parameter key.
func (p *Presented) Param(key string) (string, bool) {
	for _, kv := range p.Params {
		if kv.Key == key {
			return kv.Value, true
		}
	}
	return "", false
}

// UsesProductSecret reports whether the signature is keyed with the
// productSecret instead of the deviceSecret: EnOS securemode 3 (dynamic
// activation) and Alibaba authType register/regnwl (dynamic registration).
func (p *Presented) UsesProductSecret() bool {
	if p.Dialect == EnOS {
		return p.SecureMode == 3
	}
	return p.AuthType == "register" || p.AuthType == "regnwl"
}

// ParseConnect parses the clientId, username and password of a CONNECT in
// dialect d. It checks shape only (field syntax, known sign method and
// securemode); Verify checks the signature.
func ParseConnect(d Dialect, clientID, username string, password Secret) (*Presented, error) {
	if d != Aliyun && d != EnOS {
		return nil, fmt.Errorf("parse connect: unknown dialect %q", d)
	}
	p := &Presented{Dialect: d, password: password}
	bar := strings.IndexByte(clientID, '|')
	if bar < 0 {
		return nil, refuse(ReasonMalformedClientID, "no |…| parameter block")
	}
	p.ClientID = clientID[:bar]
	if len(p.ClientID) > MaxClientIDLen {
		return nil, refuse(ReasonClientIDTooLong, "%d characters, at most %d", len(p.ClientID), MaxClientIDLen)
	}
	if p.ClientID == "" {
		return nil, refuse(ReasonMalformedClientID, "empty clientId before '|'")
	}
	if err := checkBareClientID(p.ClientID); err != nil {
		return nil, refuse(ReasonMalformedClientID, "%v", err)
	}
	block := clientID[bar+1:]
	if !strings.HasSuffix(block, "|") {
		return nil, refuse(ReasonMalformedClientID, "parameter block not closed with '|'")
	}
	block = block[:len(block)-1]
	if strings.ContainsRune(block, '|') {
		return nil, refuse(ReasonMalformedClientID, "'|' inside the parameter block")
	}
	if block == "" {
		return nil, refuse(ReasonMalformedClientID, "empty parameter block")
	}
	seen := make(map[string]bool)
	for _, field := range strings.Split(block, ",") {
		k, v, ok := strings.Cut(field, "=")
		if !ok || k == "" {
			return nil, refuse(ReasonMalformedClientID, "parameter %q is not key=value", truncate(field))
		}
		if seen[k] {
			return nil, refuse(ReasonMalformedClientID, "parameter %q given twice", truncate(k))
		}
		seen[k] = true
		p.Params = append(p.Params, Param{k, v})
	}

	dn, pk, ok := strings.Cut(username, "&")
	if !ok || dn == "" || pk == "" || strings.Contains(pk, "&") {
		return nil, refuse(ReasonMalformedUsername, "want deviceName&productKey")
	}
	p.DeviceName, p.ProductKey = dn, pk

	p.AuthType, _ = p.Param("authType")
	p.Random, _ = p.Param("random")
	sm, ok := p.Param("securemode")
	if !ok {
		return nil, refuse(ReasonSecureMode, "securemode missing")
	}
	n, err := strconv.Atoi(sm)
	if err != nil {
		return nil, refuse(ReasonSecureMode, "securemode %q is not a number", truncate(sm))
	}
	p.SecureMode = n
	if err := p.checkSecureMode(); err != nil {
		return nil, err
	}

	method, ok := p.Param("signmethod")
	switch {
	case ok:
		p.SignMethod = SignMethod(strings.ToLower(method))
	case d == Aliyun && p.AuthType != "connwl":
		p.SignMethod = HMACMD5 // Alibaba's documented default
	case d == EnOS:
		return nil, refuse(ReasonUnknownSignMethod, "signmethod missing")
	}
	if p.AuthType != "connwl" && hashFor(d, p.SignMethod) == nil {
		return nil, refuse(ReasonUnknownSignMethod, "%q is not one of %s", truncate(method), methodList(d))
	}

	if ts, ok := p.Param("timestamp"); ok {
		if _, err := strconv.ParseUint(ts, 10, 64); err != nil {
			return nil, refuse(ReasonTimestamp, "timestamp %q is not a decimal millisecond epoch", truncate(ts))
		}
		p.Timestamp = ts
	} else if d == EnOS {
		return nil, refuse(ReasonTimestamp, "timestamp missing (EnOS requires it)")
	}
	if (p.AuthType == "register" || p.AuthType == "regnwl") && p.Random == "" {
		return nil, refuse(ReasonMalformedClientID, "authType=%s without random", p.AuthType)
	}
	if p.password.IsZero() {
		return nil, refuse(ReasonMissingPassword, "no password")
	}
	return p, nil
}

func (p *Presented) checkSecureMode() error {
	if p.Dialect == EnOS {
		if p.SecureMode != 2 && p.SecureMode != 3 {
			return refuse(ReasonSecureMode, "EnOS securemode %d (want 2 = deviceSecret or 3 = productSecret activation)", p.SecureMode)
		}
		if p.AuthType != "" {
			return refuse(ReasonMalformedClientID, "authType is not an EnOS parameter")
		}
		return nil
	}
	switch p.AuthType {
	case "":
		if p.SecureMode != 2 && p.SecureMode != 3 {
			return refuse(ReasonSecureMode, "securemode %d (want 2 for TLS or 3 for plain TCP)", p.SecureMode)
		}
	case "register", "regnwl", "connwl":
		if p.SecureMode != 2 && p.SecureMode != -2 {
			return refuse(ReasonSecureMode, "authType=%s needs securemode 2 or -2, not %d", p.AuthType, p.SecureMode)
		}
	default:
		return refuse(ReasonMalformedClientID, "unknown authType %q", truncate(p.AuthType))
	}
	return nil
}

// VerifyOptions tune Verify. The zero value is what both clouds do today:
// no timestamp freshness check (the official SDKs send a constant 2050
// timestamp).
type VerifyOptions struct {
	// MaxSkew, when positive, refuses timestamps further than this from Now.
	MaxSkew time.Duration
	Now     func() time.Time
}

// Verify checks the signature against secret (see UsesProductSecret for
// which one) in constant time; either hex case is accepted. For Alibaba
// authType=connwl the secret is the deviceToken and the password must equal
// it.
func (p *Presented) Verify(secret Secret, opts VerifyOptions) error {
	if p.Timestamp != "" && opts.MaxSkew > 0 {
		now := time.Now
		if opts.Now != nil {
			now = opts.Now
		}
		ms, _ := strconv.ParseInt(p.Timestamp, 10, 64)
		skew := now().Sub(time.UnixMilli(ms))
		if skew > opts.MaxSkew || -skew > opts.MaxSkew {
			return refuse(ReasonTimestamp, "timestamp is %s away from now, more than %s", skew.Round(time.Second), opts.MaxSkew)
		}
	}
	var want string
	switch {
	case secret.IsZero():
		return refuse(ReasonBadSignature, "no secret to verify against")
	case p.AuthType == "connwl":
		if secret.Equal(p.password) {
			return nil
		}
		return refuse(ReasonBadSignature, "device token does not match")
	case p.AuthType == "register" || p.AuthType == "regnwl":
		want = digest(Aliyun, hashFor(Aliyun, p.SignMethod), registerContent(p.ProductKey, p.DeviceName, p.Random), secret)
	default:
		want = digest(p.Dialect, hashFor(p.Dialect, p.SignMethod),
			Content(p.Dialect, p.ClientID, p.DeviceName, p.ProductKey, p.Timestamp), secret)
	}
	if subtle.ConstantTimeCompare([]byte(strings.ToLower(want)), []byte(strings.ToLower(p.password.Reveal()))) != 1 {
		return refuse(ReasonBadSignature, "%s signature does not match for %s&%s", p.SignMethod, p.DeviceName, p.ProductKey)
	}
	return nil
}

// truncate keeps attacker-controlled text in error messages short.
func truncate(s string) string {
	const max = 40
	if len(s) > max {
		return s[:max] + "…"
	}
	return s
}
