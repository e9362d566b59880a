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
		p, err := ParseConnect(d, cid, user, NewSecret(pw))
		if err != nil {
			var ve *VerifyError
			if errors.As(err, &ve) {
				if c := ve.ConnackCode(); c < 3 || c > 5 {
					t.Fatalf("connack code %d", c)
				}
			} else if d == Aliyun || d == EnOS {
				t.Fatalf("non-VerifyError for a known dialect: %v", err)
			}
			if len(pw) >= 8 && strings.Contains(err.Error(), pw) {
				t.Fatalf("error %q contains the password", err)
			}
			return
		}
		if p.ProductKey == "" || p.DeviceName == "" || p.ClientID == "" || len(p.ClientID) > MaxClientIDLen {
			t.Fatalf("accepted %+v", p)
		}
		err = p.Verify(NewSecret(secret), VerifyOptions{})
		if err != nil {
			if len(pw) >= 8 && strings.Contains(err.Error(), pw) {
				t.Fatalf("error %q contains the password", err)
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
