package secrets

// Connect parameters: the Alibaba clientId extension parameters a device's
// own cloud session carries as the device presented them, so the cloud
// treats the gateway's session as that firmware (docs/protocol.md §2.2,
// §7.9): _ss=1 makes the cloud subscribe the session server-side, ext bit 0
// enables RRPC on custom topics.

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
)

// MaxConnectParamLen bounds the value of a connect parameter. Real values
// are short (`sdk-c-4.1.0`, `NodeJS`, `3`); the bound keeps the cloud
// clientId within what the clouds accept.
const MaxConnectParamLen = 32

// connectParamKeys are the parameters carried over: the device's firmware
// identity and the options that change what the cloud sends. securemode,
// signmethod and timestamp are edgegw's own (they describe the cloud
// connection); authType, random and instanceId select login modes; _conn
// describes the device's own transport.
var connectParamKeys = []string{"_ss", "ext", "_v", "lan", "gw"}

// ConnectParamKeys returns the keys a cloud session carries over from a
// device's signed login, in no particular order.
func ConnectParamKeys() []string { return slices.Clone(connectParamKeys) }

// CheckConnectParam reports whether p may be carried on a cloud session:
// its key is one of ConnectParamKeys, and its value is 1 to
// MaxConnectParamLen printable ASCII characters without space, ',', '|' or
// '=' (which would break the clientId's |k=v,…| block). The error quotes
// the key and value clipped; neither is secret.
func CheckConnectParam(p Param) error {
	if !slices.Contains(connectParamKeys, p.Key) {
		return fmt.Errorf("connect parameter %s: not one of %v", quoteIdent(p.Key), connectParamKeys)
	}
	if p.Value == "" {
		return fmt.Errorf("connect parameter %s: empty value", p.Key)
	}
	if len(p.Value) > MaxConnectParamLen {
		return fmt.Errorf("connect parameter %s: value is %d characters, at most %d", p.Key, len(p.Value), MaxConnectParamLen)
	}
	for i := 0; i < len(p.Value); i++ {
		c := p.Value[i]
		if c <= ' ' || c >= 0x7f || c == ',' || c == '|' || c == '=' {
			return fmt.Errorf("connect parameter %s: value %s has %s at offset %d (allowed: printable ASCII without space , | =)",
				p.Key, quoteIdent(p.Value), strconv.QuoteRune(rune(c)), i)
		}
	}
	return nil
}

// ValidateConnectParams checks parameters before they are stored: each
// passes CheckConnectParam and no key appears twice. Nil and empty are
// valid.
func ValidateConnectParams(ps []Param) error {
	for i, p := range ps {
		if err := CheckConnectParam(p); err != nil {
			return err
		}
		for _, q := range ps[:i] {
			if q.Key == p.Key {
				return fmt.Errorf("connect parameter %s: given twice", p.Key)
			}
		}
	}
	return nil
}

// FilterConnectParams picks from the parameter block a device presented
// (Presented.Params) the ones its cloud session carries, in the order
// presented. The result is never nil: a device that presented none of
// them gets an empty list, which, stored, means "seen, with none" (see
// Device.ConnectParams). dropped describes each carried-over key left out
// because its value is unusable, for a log line (keys not carried over at
// all are not reported). A key given twice keeps its first value
// (ParseConnect refuses duplicates anyway).
func FilterConnectParams(presented []Param) (kept []Param, dropped []error) {
	kept = []Param{}
	for _, p := range presented {
		if !slices.Contains(connectParamKeys, p.Key) {
			continue
		}
		if slices.ContainsFunc(kept, func(q Param) bool { return q.Key == p.Key }) {
			dropped = append(dropped, fmt.Errorf("connect parameter %s: given twice", p.Key))
			continue
		}
		if err := CheckConnectParam(p); err != nil {
			dropped = append(dropped, err)
			continue
		}
		kept = append(kept, p)
	}
	return kept, dropped
}

// EqualConnectParams reports whether a and b carry the same parameters in
// the same order. Nil and empty differ: nil means "never seen".
func EqualConnectParams(a, b []Param) bool {
	if (a == nil) != (b == nil) {
		return false
	}
	return slices.Equal(a, b)
}

// ConnectParamsChangeSession reports whether a session carrying a would be
// treated differently by the cloud if it carried b: server-side
// subscription (_ss=1 or not) or the ext bitmap (bit 0 custom-topic RRPC,
// bit 1 ext_notify; absent is 0) differ. The other keys (_v, lan, gw) are
// informational: a running session need not reconnect for them.
func ConnectParamsChangeSession(a, b []Param) bool {
	ssA, extA := sessionParams(a)
	ssB, extB := sessionParams(b)
	return ssA != ssB || extA != extB
}

func sessionParams(ps []Param) (serverSub bool, ext string) {
	ext = "0"
	for _, p := range ps {
		switch p.Key {
		case "_ss":
			serverSub = p.Value == "1"
		case "ext":
			ext = p.Value
			if n, err := strconv.ParseUint(p.Value, 10, 32); err == nil {
				ext = strconv.FormatUint(n, 10)
			}
		}
	}
	return serverSub, ext
}

// FormatConnectParams renders ps as "k=v,k=v" for logs and errors.
func FormatConnectParams(ps []Param) string {
	b := make([]byte, 0, 16*len(ps))
	for i, p := range ps {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, p.Key...)
		b = append(b, '=')
		b = append(b, p.Value...)
	}
	return string(b)
}

// errConnectParamsDialect: EnOS has no extension parameters; its sessions
// are server-subscribed anyway.
var errConnectParamsDialect = errors.New("connect parameters are Alibaba's; EnOS sessions carry none (EnOS pushes downlinks without them)")
