package secrets

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
	"time"
)

type vector struct {
	Name         string  `json:"name"`
	Ref          string  `json:"ref"`
	Kind         string  `json:"kind"` // connect, verify-only, register
	Dialect      Dialect `json:"dialect"`
	ClientID     string  `json:"clientId"`
	DeviceName   string  `json:"deviceName"`
	ProductKey   string  `json:"productKey"`
	Timestamp    string  `json:"timestamp"`
	Random       string  `json:"random"`
	Secret       string  `json:"secret"`
	SignMethod   string  `json:"signmethod"`
	SecureMode   int     `json:"securemode"`
	Content      string  `json:"content"`
	Password     string  `json:"password"`
	MQTTClientID string  `json:"mqttClientId"`
	Username     string  `json:"username"`
}

func loadVectors(t testing.TB) []vector {
	t.Helper()
	b, err := os.ReadFile("testdata/vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var vs []vector
	if err := json.Unmarshal(b, &vs); err != nil {
		t.Fatalf("testdata/vectors.json: %v", err)
	}
	return vs
}

// TestVectors reproduces every vector of docs/protocol.md §3.5: signing
// gives the documented content and password (hex case as the dialect
// prints it), and the verifier accepts what the vendors' SDKs send.
func TestVectors(t *testing.T) {
	vs := loadVectors(t)
	if len(vs) < 18 {
		t.Fatalf("only %d vectors loaded", len(vs))
	}
	for _, v := range vs {
		t.Run(v.Name, func(t *testing.T) {
			switch v.Kind {
			case "register":
				if got := registerContent(v.ProductKey, v.DeviceName, v.Random); got != v.Content {
					t.Errorf("content = %q, want %q", got, v.Content)
				}
				got, err := RegisterSign(SignMethod(v.SignMethod), v.ProductKey, v.DeviceName, v.Random, NewSecret(v.Secret))
				if err != nil {
					t.Fatal(err)
				}
				if got != v.Password {
					t.Errorf("signature = %s, want %s", got, v.Password)
				}
				// The verifier accepts the registration CONNECT the Link SDK sends.
				cid := FormatClientID(v.DeviceName+"."+v.ProductKey, []Param{{"random", v.Random}, {"authType", "register"}, {"securemode", "2"}, {"signmethod", v.SignMethod}})
				p, err := ParseConnect(Aliyun, cid, v.DeviceName+"&"+v.ProductKey, NewSecret(strings.ToUpper(v.Password)))
				if err != nil {
					t.Fatal(err)
				}
				if !p.UsesProductSecret() {
					t.Error("register login should be keyed with the product secret")
				}
				if err := p.Verify(NewSecret(v.Secret), VerifyOptions{}); err != nil {
					t.Errorf("verify: %v", err)
				}
				return
			case "connect":
				c, err := Sign(SignParams{
					Dialect: v.Dialect, ProductKey: v.ProductKey, DeviceName: v.DeviceName, ClientID: v.ClientID,
					Timestamp: v.Timestamp, SignMethod: SignMethod(v.SignMethod), SecureMode: v.SecureMode,
				}, NewSecret(v.Secret))
				if err != nil {
					t.Fatal(err)
				}
				if c.Content != v.Content {
					t.Errorf("content = %q, want %q", c.Content, v.Content)
				}
				want := v.Password
				if v.Dialect == EnOS {
					want = strings.ToUpper(want) // edgegw prints EnOS digests in upper case, as the docs do
				}
				if c.Password.Reveal() != want {
					t.Errorf("password = %s, want %s", c.Password.Reveal(), want)
				}
				if v.MQTTClientID != "" && c.ClientID != v.MQTTClientID {
					t.Errorf("clientId = %q, want %q", c.ClientID, v.MQTTClientID)
				}
				if v.Username != "" && c.Username != v.Username {
					t.Errorf("username = %q, want %q", c.Username, v.Username)
				}
			}
			mqttCID := v.MQTTClientID
			if mqttCID == "" {
				mqttCID = FormatClientID(v.ClientID, []Param{{"securemode", "2"}, {"signmethod", v.SignMethod}, {"timestamp", v.Timestamp}})
			}
			p, err := ParseConnect(v.Dialect, mqttCID, v.DeviceName+"&"+v.ProductKey, NewSecret(v.Password))
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			if err := p.Verify(NewSecret(v.Secret), VerifyOptions{}); err != nil {
				t.Errorf("verify: %v", err)
			}
			if err := p.Verify(NewSecret(v.Secret+"x"), VerifyOptions{}); !isReason(err, ReasonBadSignature) {
				t.Errorf("verify with a wrong secret: %v, want %q", err, ReasonBadSignature)
			}
		})
	}
}

func isReason(err error, r Reason) bool {
	var ve *VerifyError
	return errors.As(err, &ve) && ve.Reason == r
}

// hmacHex is an independent computation for the SDK-shaped clientIds below.
func hmacHex(secret, content string) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(content))
	return strings.ToUpper(hex.EncodeToString(m.Sum(nil)))
}

// TestVerifyVendorClientIDs feeds the verifier the clientIds the vendors'
// SDKs really send: extension parameters in any order, the constant 2050
// timestamp, upper-case hex.
func TestVerifyVendorClientIDs(t *testing.T) {
	const pk, dn, secret = "a1B2c3D4e5F", "meter-01", "s3cr3tDeviceSecretValue"
	content := "clientId" + pk + "." + dn + "deviceName" + dn + "productKey" + pk + "timestamp2524608000000"
	pw := hmacHex(secret, content)
	for _, cid := range []string{
		pk + "." + dn + "|timestamp=2524608000000,_ss=1,_v=sdk-c-4.1.0,securemode=2,signmethod=hmacsha256,ext=3,|",         // Link SDK 4.x (trailing extra empty)
		pk + "." + dn + "|timestamp=2524608000000,_v=sdk-c-3.x,securemode=2,signmethod=hmacsha256,lan=C,gw=0,ext=0|",       // C v3
		pk + "." + dn + "|securemode=2,signmethod=hmacsha256,timestamp=2524608000000,lan=NodeJS,_v=1.2.8|",                 // JS order
		pk + "." + dn + "|ext=3,_ss=1,signmethod=hmacsha256,lan=C,gw=1,securemode=3,timestamp=2524608000000,_v=sdk-c-4.1|", // shuffled
	} {
		t.Run(cid, func(t *testing.T) {
			p, err := ParseConnect(Aliyun, cid, dn+"&"+pk, NewSecret(pw))
			if strings.Contains(cid, "ext=3,|") {
				// An empty trailing field is malformed: the Link SDK only
				// emits it when extra is non-empty. Checked in TestParseRejects.
				if !isReason(err, ReasonMalformedClientID) {
					t.Fatalf("got %v, want malformed", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := p.Verify(NewSecret(secret), VerifyOptions{}); err != nil {
				t.Fatal(err)
			}
			if p.ProductKey != pk || p.DeviceName != dn || p.ClientID != pk+"."+dn {
				t.Errorf("parsed %+v", p)
			}
		})
	}
}

// TestParseRejects checks each malformed form is refused with its reason
// and the CONNACK code the clouds use.
func TestParseRejects(t *testing.T) {
	long := strings.Repeat("c", 65)
	tests := []struct {
		name          string
		d             Dialect
		cid, user, pw string
		reason        Reason
		code          byte
	}{
		{"no block", Aliyun, "dev1", "dev1&pk", "x", ReasonMalformedClientID, 3},
		{"unclosed block", Aliyun, "dev1|securemode=2,signmethod=hmacsha256", "dev1&pk", "x", ReasonMalformedClientID, 3},
		{"bar inside block", Aliyun, "dev1|securemode=2|signmethod=hmacsha256|", "dev1&pk", "x", ReasonMalformedClientID, 3},
		{"empty block", Aliyun, "dev1||", "dev1&pk", "x", ReasonMalformedClientID, 3},
		{"not key=value", Aliyun, "dev1|securemode=2,signmethod|", "dev1&pk", "x", ReasonMalformedClientID, 3},
		{"empty field", Aliyun, "dev1|securemode=2,,signmethod=hmacsha1|", "dev1&pk", "x", ReasonMalformedClientID, 3},
		{"duplicate key", Aliyun, "dev1|securemode=2,securemode=3,signmethod=hmacsha1|", "dev1&pk", "x", ReasonMalformedClientID, 3},
		{"empty clientId", Aliyun, "|securemode=2,signmethod=hmacsha1|", "dev1&pk", "x", ReasonMalformedClientID, 3},
		{"control character in clientId", Aliyun, "dev\x011|securemode=2,signmethod=hmacsha1|", "dev1&pk", "x", ReasonMalformedClientID, 3},
		{"clientId over 64", Aliyun, long + "|securemode=2,signmethod=hmacsha1|", "dev1&pk", "x", ReasonClientIDTooLong, 3},
		{"unknown signmethod", Aliyun, "dev1|securemode=2,signmethod=hmacsha512|", "dev1&pk", "x", ReasonUnknownSignMethod, 4},
		{"plain sha256 is not Alibaba", Aliyun, "dev1|securemode=2,signmethod=sha256|", "dev1&pk", "x", ReasonUnknownSignMethod, 4},
		{"enos unknown signmethod", EnOS, "dev1|securemode=2,signmethod=sha512,timestamp=1|", "dev1&pk", "x", ReasonUnknownSignMethod, 4},
		{"enos signmethod missing", EnOS, "dev1|securemode=2,timestamp=1|", "dev1&pk", "x", ReasonUnknownSignMethod, 4},
		{"securemode missing", Aliyun, "dev1|signmethod=hmacsha1|", "dev1&pk", "x", ReasonSecureMode, 3},
		{"securemode not a number", Aliyun, "dev1|securemode=two,signmethod=hmacsha1|", "dev1&pk", "x", ReasonSecureMode, 3},
		{"aliyun securemode 8", Aliyun, "dev1|securemode=8,signmethod=hmacsha1|", "dev1&pk", "x", ReasonSecureMode, 3},
		{"enos securemode 4", EnOS, "dev1|securemode=4,signmethod=sha256,timestamp=1|", "dev1&pk", "x", ReasonSecureMode, 3},
		{"timestamp not numeric", Aliyun, "dev1|securemode=2,signmethod=hmacsha1,timestamp=12a|", "dev1&pk", "x", ReasonTimestamp, 4},
		{"enos timestamp missing", EnOS, "dev1|securemode=2,signmethod=sha256|", "dev1&pk", "x", ReasonTimestamp, 4},
		{"username without &", Aliyun, "dev1|securemode=2,signmethod=hmacsha1|", "dev1pk", "x", ReasonMalformedUsername, 4},
		{"username empty productKey", Aliyun, "dev1|securemode=2,signmethod=hmacsha1|", "dev1&", "x", ReasonMalformedUsername, 4},
		{"username two &", Aliyun, "dev1|securemode=2,signmethod=hmacsha1|", "a&b&c", "x", ReasonMalformedUsername, 4},
		{"empty password", Aliyun, "dev1|securemode=2,signmethod=hmacsha1|", "dev1&pk", "", ReasonMissingPassword, 4},
		{"register without random", Aliyun, "dev1|authType=register,securemode=2,signmethod=hmacsha1|", "dev1&pk", "x", ReasonMalformedClientID, 3},
		{"register on securemode 3", Aliyun, "dev1|authType=register,random=1,securemode=3,signmethod=hmacsha1|", "dev1&pk", "x", ReasonSecureMode, 3},
		{"unknown authType", Aliyun, "dev1|authType=magic,securemode=2,signmethod=hmacsha1|", "dev1&pk", "x", ReasonMalformedClientID, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseConnect(tt.d, tt.cid, tt.user, NewSecret(tt.pw))
			var ve *VerifyError
			if !errors.As(err, &ve) {
				t.Fatalf("err = %v, want a *VerifyError", err)
			}
			if ve.Reason != tt.reason {
				t.Errorf("reason = %q (%v), want %q", ve.Reason, err, tt.reason)
			}
			if ve.ConnackCode() != tt.code {
				t.Errorf("connack code = %d, want %d", ve.ConnackCode(), tt.code)
			}
		})
	}
}

func TestVerifyTimestampSkew(t *testing.T) {
	now := time.UnixMilli(1_700_000_000_000)
	c, err := Sign(SignParams{Dialect: Aliyun, ProductKey: "pk1", DeviceName: "dev1", Timestamp: "1700000000000"}, NewSecret("sec"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := ParseConnect(Aliyun, c.ClientID, c.Username, c.Password)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Verify(NewSecret("sec"), VerifyOptions{MaxSkew: time.Minute, Now: func() time.Time { return now.Add(30 * time.Second) }}); err != nil {
		t.Errorf("30 s skew refused: %v", err)
	}
	err = p.Verify(NewSecret("sec"), VerifyOptions{MaxSkew: time.Minute, Now: func() time.Time { return now.Add(-2 * time.Minute) }})
	if !isReason(err, ReasonTimestamp) {
		t.Errorf("2 min skew: %v, want %q", err, ReasonTimestamp)
	}
}

func TestVerifyConnwlToken(t *testing.T) {
	cid := "tok-client|authType=connwl,securemode=-2,_ss=1,ext=3,_v=sdk-c-4.1|"
	p, err := ParseConnect(Aliyun, cid, "dev1&pk", NewSecret("device-token-123"))
	if err != nil {
		t.Fatal(err)
	}
	if p.UsesProductSecret() {
		t.Error("connwl is keyed with the device token")
	}
	if err := p.Verify(NewSecret("device-token-123"), VerifyOptions{}); err != nil {
		t.Error(err)
	}
	if err := p.Verify(NewSecret("device-token-124"), VerifyOptions{}); !isReason(err, ReasonBadSignature) {
		t.Errorf("wrong token: %v", err)
	}
}

func TestSignRoundTrip(t *testing.T) {
	for _, d := range []Dialect{Aliyun, EnOS} {
		methods := []SignMethod{HMACMD5, HMACSHA1, HMACSHA256}
		if d == EnOS {
			methods = append(methods, MD5, SHA1, SHA256)
		}
		for _, m := range methods {
			for _, sm := range []int{2, 3} {
				p := SignParams{Dialect: d, ProductKey: "pk1", DeviceName: "dev-1", Timestamp: "1700000000000", SignMethod: m, SecureMode: sm,
					Extra: []Param{{"_v", "edgegw-1"}}}
				c, err := Sign(p, NewSecret("the-secret"))
				if err != nil {
					t.Fatalf("%s %s: %v", d, m, err)
				}
				got, err := ParseConnect(d, c.ClientID, c.Username, c.Password)
				if err != nil {
					t.Fatalf("%s %s: parse %q: %v", d, m, c.ClientID, err)
				}
				if got.SecureMode != sm || got.SignMethod != m || got.ClientID != "dev-1" {
					t.Errorf("%s %s: parsed %+v", d, m, got)
				}
				if err := got.Verify(NewSecret("the-secret"), VerifyOptions{}); err != nil {
					t.Errorf("%s %s: %v", d, m, err)
				}
				// Lower and upper case both verify.
				for _, pw := range []string{strings.ToLower(c.Password.Reveal()), strings.ToUpper(c.Password.Reveal())} {
					got2, _ := ParseConnect(d, c.ClientID, c.Username, NewSecret(pw))
					if err := got2.Verify(NewSecret("the-secret"), VerifyOptions{}); err != nil {
						t.Errorf("%s %s case %q: %v", d, m, pw[:4], err)
					}
				}
			}
		}
	}
}

func TestSignErrors(t *testing.T) {
	tests := []struct {
		name string
		p    SignParams
		sec  string
		want string
	}{
		{"unknown dialect", SignParams{Dialect: "aws", ProductKey: "p", DeviceName: "d"}, "s", "unknown dialect"},
		{"no secret", SignParams{Dialect: Aliyun, ProductKey: "p", DeviceName: "d"}, "", "secret is empty"},
		{"no product", SignParams{Dialect: Aliyun, DeviceName: "d"}, "s", "required"},
		{"enos no timestamp", SignParams{Dialect: EnOS, ProductKey: "p", DeviceName: "d"}, "s", "timestamp"},
		{"bad method", SignParams{Dialect: Aliyun, ProductKey: "p", DeviceName: "d", SignMethod: "sha256"}, "s", "sign method"},
		{"bad timestamp", SignParams{Dialect: Aliyun, ProductKey: "p", DeviceName: "d", Timestamp: "now"}, "s", "timestamp"},
		{"clientId too long", SignParams{Dialect: Aliyun, ProductKey: "p", DeviceName: "d", ClientID: strings.Repeat("x", 65)}, "s", "more than 64"},
		{"clientId with bar", SignParams{Dialect: Aliyun, ProductKey: "p", DeviceName: "d", ClientID: "a|b"}, "s", "must not contain"},
		{"bad extra", SignParams{Dialect: Aliyun, ProductKey: "p", DeviceName: "d", Extra: []Param{{"a", "b,c"}}}, "s", "extension parameter"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Sign(tt.p, NewSecret(tt.sec))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tt.want)
			}
		})
	}
}

// TestVerifyErrorsCarryNoSecret: refusals name the device and the reason,
// never the presented password or the stored secret.
func TestVerifyErrorsCarryNoSecret(t *testing.T) {
	const secret = "TopSecretDeviceSecret42"
	c, err := Sign(SignParams{Dialect: Aliyun, ProductKey: "pk1", DeviceName: "dev1", Timestamp: "1"}, NewSecret(secret))
	if err != nil {
		t.Fatal(err)
	}
	p, err := ParseConnect(Aliyun, c.ClientID, c.Username, NewSecret(strings.Repeat("ab", 32)))
	if err != nil {
		t.Fatal(err)
	}
	err = p.Verify(NewSecret(secret), VerifyOptions{})
	msg := err.Error()
	for _, leak := range []string{secret, c.Password.Reveal(), strings.Repeat("ab", 32)} {
		if strings.Contains(msg, leak) {
			t.Fatalf("error %q leaks %q", msg, leak)
		}
	}
	if !strings.Contains(msg, "dev1&pk1") {
		t.Errorf("error %q does not name the device", msg)
	}
}

func BenchmarkSign(b *testing.B) {
	p := SignParams{Dialect: Aliyun, ProductKey: "a1B2c3D4e5F", DeviceName: "meter-01", Timestamp: "1700000000000"}
	sec := NewSecret("0123456789abcdef0123456789abcdef")
	for b.Loop() {
		if _, err := Sign(p, sec); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseVerify(b *testing.B) {
	sec := NewSecret("0123456789abcdef0123456789abcdef")
	c, _ := Sign(SignParams{Dialect: Aliyun, ProductKey: "a1B2c3D4e5F", DeviceName: "meter-01", Timestamp: "1700000000000",
		Extra: []Param{{"_v", "sdk-c-4.1"}, {"ext", "3"}, {"_ss", "1"}}}, sec)
	for b.Loop() {
		p, err := ParseConnect(Aliyun, c.ClientID, c.Username, c.Password)
		if err != nil {
			b.Fatal(err)
		}
		if err := p.Verify(sec, VerifyOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}
