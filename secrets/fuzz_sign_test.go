package secrets

import (
	"errors"
	"strings"
	"testing"
)

// FuzzParseConnect feeds arbitrary CONNECT fields to the parser and
// verifier. They must never panic, every refusal must be a *VerifyError with
// a CONNACK code, an error must never contain the password, and whatever
// parses and verifies must round-trip through Sign.
func FuzzParseConnect(f *testing.F) {
	for _, v := range loadVectors(f) {
		cid := v.MQTTClientID
		if cid == "" {
			cid = v.ClientID + "|securemode=2,signmethod=" + v.SignMethod + "|"
		}
		f.Add(string(v.Dialect), cid, v.DeviceName+"&"+v.ProductKey, v.Password, v.Secret)
	}
	f.Add("aliyun", "pk.dn|timestamp=2524608000000,_v=sdk-c-3.x,securemode=2,signmethod=hmacsha256,lan=C,gw=0,ext=0|", "dn&pk", "AB", "s")
	f.Add("aliyun", "c|authType=register,random=1,securemode=-2,signmethod=hmacsha1,instanceId=iot-1|", "dn&pk", "AB", "s")
	f.Add("aliyun", "c|authType=connwl,securemode=-2|", "dn&pk", "token", "token")
	f.Add("enos", "|||", "&&", "", "")
	f.Fuzz(func(t *testing.T, dialect, cid, user, pw, secret string) {
		d := Dialect(dialect)
		// An error's text must not depend on the password's content: the
		// same input with another password of the same length must give
		// the same message.
		other := strings.Repeat("\x01", len(pw))
		p, err := ParseConnect(d, cid, user, NewSecret(pw))
		p2, err2 := ParseConnect(d, cid, user, NewSecret(other))
		if (err == nil) != (err2 == nil) || (err != nil && err.Error() != err2.Error()) {
			t.Fatalf("parse error depends on the password: %v vs %v", err, err2)
		}
		if err != nil {
			var ve *VerifyError
			if errors.As(err, &ve) {
				if c := ve.ConnackCode(); c < 3 || c > 5 {
					t.Fatalf("connack code %d", c)
				}
			} else if d == Aliyun || d == EnOS {
				t.Fatalf("non-VerifyError for a known dialect: %v", err)
			}
			return
		}
		if p.ProductKey == "" || p.DeviceName == "" || p.ClientID == "" || len(p.ClientID) > MaxClientIDLen {
			t.Fatalf("accepted %+v", p)
		}
		err = p.Verify(NewSecret(secret), VerifyOptions{})
		if err != nil {
			if err2 := p2.Verify(NewSecret(secret), VerifyOptions{}); (err2 == nil && secret != other) || (err2 != nil && err.Error() != err2.Error() && !isReason(err2, ReasonBadSignature)) {
				t.Fatalf("verify error depends on the password: %v vs %v", err, err2)
			}
			return
		}
		if secret == "" {
			t.Fatal("verified against an empty secret")
		}
		// Verified normal logins re-sign to the same password (modulo case).
		if p.AuthType == "" {
			c, err := Sign(SignParams{Dialect: d, ProductKey: p.ProductKey, DeviceName: p.DeviceName, ClientID: p.ClientID,
				Timestamp: p.Timestamp, SignMethod: p.SignMethod, SecureMode: p.SecureMode}, NewSecret(secret))
			if err == nil && !strings.EqualFold(c.Password.Reveal(), pw) {
				t.Fatalf("verified %q but Sign gives a different password", pw)
			}
		}
	})
}
