package cloudsim_test

import (
	"crypto/tls"
	"errors"
	"strings"
	"testing"

	pahopackets "github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink/cloudsim"
)

// fromCreds turns signed credentials into a raw 3.1.1 CONNECT.
func fromCreds(cr secrets.Credentials, keepalive uint16) rawConnect {
	return rawConnect{
		protoName: "MQTT", level: 4, clientID: cr.ClientID,
		user: ptr(cr.Username), pass: ptr(cr.Password.Reveal()),
		keepalive: keepalive, cleanSessionFlag: true,
	}
}

func with(rc rawConnect, f func(*rawConnect)) rawConnect {
	f(&rc)
	return rc
}

type connectCase struct {
	name      string
	transport string // cloudsim.TCP or cloudsim.TLS
	rc        rawConnect
	want      byte
}

func aliyunConnectCases(t *testing.T) []connectCase {
	plain := func(dn, secret string, m secrets.SignMethod) secrets.Credentials {
		return sign(t, secrets.Aliyun, aliPK, dn, secret, 3, m)
	}
	good := plain(aliDN, aliSecret, secrets.HMACSHA256)
	noTS, err := secrets.Sign(secrets.SignParams{Dialect: secrets.Aliyun, ProductKey: aliPK, DeviceName: aliDN,
		ClientID: "12345", SignMethod: secrets.HMACSHA1, SecureMode: 3}, secrets.NewSecret(aliSecret))
	if err != nil {
		t.Fatal(err)
	}
	upper := fromCreds(good, 300)
	upper.pass = ptr(strings.ToUpper(*upper.pass))
	tlsGood := sign(t, secrets.Aliyun, aliPK, aliDN, aliSecret, 2, "")
	return []connectCase{
		{"hmacsha256 securemode=3 on tcp", cloudsim.TCP, fromCreds(good, 300), 0},
		{"hmacsha1 without timestamp", cloudsim.TCP, fromCreds(noTS, 300), 0},
		{"hmacmd5", cloudsim.TCP, fromCreds(plain(aliDN, aliSecret, secrets.HMACMD5), 300), 0},
		{"upper-case hex password", cloudsim.TCP, upper, 0},
		{"MQTT 3.1 (MQIsdp)", cloudsim.TCP, with(fromCreds(good, 300), func(r *rawConnect) { r.protoName, r.level = "MQIsdp", 3 }), 0},
		{"keepalive 30 (lowest)", cloudsim.TCP, fromCreds(good, 30), 0},
		{"keepalive 1200 (highest)", cloudsim.TCP, fromCreds(good, 1200), 0},
		{"securemode=2 on tls", cloudsim.TLS, fromCreds(tlsGood, 300), 0},

		{"wrong secret", cloudsim.TCP, fromCreds(plain(aliDN, "wrong-secret-000", secrets.HMACSHA256), 300), 5},
		{"signature of another device", cloudsim.TCP, with(fromCreds(good, 300), func(r *rawConnect) { r.user = ptr(aliDN2 + "&" + aliPK) }), 5},
		{"unknown device", cloudsim.TCP, fromCreds(plain("ghost001", aliSecret, secrets.HMACSHA256), 300), 5},
		{"unknown product", cloudsim.TCP, fromCreds(sign(t, secrets.Aliyun, "zzzzzzzzzzz", aliDN, aliSecret, 3, ""), 300), 5},
		{"registered device without secret", cloudsim.TCP, fromCreds(plain(aliNewDN, "anything0000", secrets.HMACSHA256), 300), 5},
		{"timestamp in clientId differs from signed", cloudsim.TCP, with(fromCreds(good, 300), func(r *rawConnect) {
			r.clientID = strings.Replace(r.clientID, fixedTS, "1524448722000", 1)
		}), 5},
		{"keepalive 29", cloudsim.TCP, fromCreds(good, 29), 3},
		{"keepalive 1201", cloudsim.TCP, fromCreds(good, 1201), 3},
		{"keepalive 0", cloudsim.TCP, fromCreds(good, 0), 3},
		{"clientId without |…| block", cloudsim.TCP, with(fromCreds(good, 300), func(r *rawConnect) { r.clientID = aliPK + "." + aliDN }), 3},
		{"clientId of 65 characters", cloudsim.TCP, with(fromCreds(good, 300), func(r *rawConnect) {
			r.clientID = strings.Repeat("c", 65) + r.clientID[strings.IndexByte(r.clientID, '|'):]
		}), 3},
		{"clientId with a space", cloudsim.TCP, with(fromCreds(good, 300), func(r *rawConnect) {
			r.clientID = "a b" + r.clientID[strings.IndexByte(r.clientID, '|'):]
		}), 3},
		{"securemode missing", cloudsim.TCP, with(fromCreds(good, 300), func(r *rawConnect) {
			r.clientID = strings.Replace(r.clientID, "securemode=3,", "", 1)
		}), 3},
		{"securemode=2 on plain tcp", cloudsim.TCP, fromCreds(tlsGood, 300), 3},
		{"securemode=3 on tls", cloudsim.TLS, fromCreds(good, 300), 3},
		{"unknown signmethod", cloudsim.TCP, with(fromCreds(good, 300), func(r *rawConnect) {
			r.clientID = strings.Replace(r.clientID, "signmethod=hmacsha256", "signmethod=hmacsha512", 1)
		}), 4},
		{"enos-style signmethod name", cloudsim.TCP, with(fromCreds(good, 300), func(r *rawConnect) {
			r.clientID = strings.Replace(r.clientID, "signmethod=hmacsha256", "signmethod=sha256", 1)
		}), 4},
		{"no password", cloudsim.TCP, with(fromCreds(good, 300), func(r *rawConnect) { r.pass = nil }), 4},
		{"username without &", cloudsim.TCP, with(fromCreds(good, 300), func(r *rawConnect) { r.user = ptr(aliDN) }), 4},
		{"no username", cloudsim.TCP, with(fromCreds(good, 300), func(r *rawConnect) { r.user, r.pass = nil, nil }), 4},
		{"will message", cloudsim.TCP, with(fromCreds(good, 300), func(r *rawConnect) { r.willTopic = "/" + aliPK + "/" + aliDN + "/user/will" }), 3},
		{"authType=regnwl", cloudsim.TLS, with(fromCreds(tlsGood, 300), func(r *rawConnect) {
			r.clientID = aliDN + "." + aliPK + "|random=1,authType=regnwl,securemode=2,signmethod=hmacsha256|"
		}), 5},
		{"MQTT 5", cloudsim.TCP, with(fromCreds(good, 300), func(r *rawConnect) { r.level = 5 }), 0x84},
	}
}

func enosConnectCases(t *testing.T) []connectCase {
	cr := func(m secrets.SignMethod) secrets.Credentials {
		return sign(t, secrets.EnOS, enosPK, enosDK, enosSecret, 2, m)
	}
	good := cr(secrets.SHA256)
	lower := fromCreds(good, 60)
	lower.pass = ptr(strings.ToLower(*lower.pass))
	return []connectCase{
		{"sha256 securemode=2 on tcp", cloudsim.TCP, fromCreds(good, 60), 0},
		{"sha256 lower-case hex (Java SDK 2.x)", cloudsim.TCP, lower, 0},
		{"sha1", cloudsim.TCP, fromCreds(cr(secrets.SHA1), 60), 0},
		{"md5", cloudsim.TCP, fromCreds(cr(secrets.MD5), 60), 0},
		{"hmacsha1 alias of sha1", cloudsim.TCP, fromCreds(cr(secrets.HMACSHA1), 60), 0},
		{"securemode=2 on tls", cloudsim.TLS, fromCreds(good, 300), 0},
		{"keepalive 300 (highest)", cloudsim.TCP, fromCreds(good, 300), 0},

		{"wrong secret", cloudsim.TCP, fromCreds(sign(t, secrets.EnOS, enosPK, enosDK, "wrongSecret", 2, ""), 60), 5},
		{"unknown device", cloudsim.TCP, fromCreds(sign(t, secrets.EnOS, enosPK, "ghost", enosSecret, 2, ""), 60), 5},
		{"productSecret login of an activated device", cloudsim.TCP, fromCreds(sign(t, secrets.EnOS, enosPK, enosDK, enosPSecret, 3, ""), 60), 5},
		{"productSecret activation of an unknown product", cloudsim.TCP, fromCreds(sign(t, secrets.EnOS, "otherPK", enosNewDK, enosPSecret, 3, ""), 60), 5},
		{"deviceSecret login before activation", cloudsim.TCP, fromCreds(sign(t, secrets.EnOS, enosPK, enosNewDK, enosSecret, 2, ""), 60), 5},
		{"keepalive 59", cloudsim.TCP, fromCreds(good, 59), 3},
		{"keepalive 301", cloudsim.TCP, fromCreds(good, 301), 3},
		{"securemode=4", cloudsim.TCP, with(fromCreds(good, 60), func(r *rawConnect) {
			r.clientID = strings.Replace(r.clientID, "securemode=2", "securemode=4", 1)
		}), 3},
		{"timestamp missing", cloudsim.TCP, with(fromCreds(good, 60), func(r *rawConnect) {
			r.clientID = strings.Replace(r.clientID, ",timestamp="+fixedTS, "", 1)
		}), 4},
		{"unknown signmethod", cloudsim.TCP, with(fromCreds(good, 60), func(r *rawConnect) {
			r.clientID = strings.Replace(r.clientID, "signmethod=sha256", "signmethod=sha512", 1)
		}), 4},
		{"malformed clientId", cloudsim.TCP, with(fromCreds(good, 60), func(r *rawConnect) { r.clientID = "meter01|securemode=2" }), 3},
		{"will message", cloudsim.TCP, with(fromCreds(good, 60), func(r *rawConnect) { r.willTopic = "/sys/" + enosPK + "/" + enosDK + "/will" }), 3},
	}
}

// TestConnackCodes checks the exact return code a raw 3.1.1 client
// receives for every kind of valid and wrong credential, in both dialects.
func TestConnackCodes(t *testing.T) {
	for _, dialect := range []secrets.Dialect{secrets.Aliyun, secrets.EnOS} {
		t.Run(string(dialect), func(t *testing.T) {
			var sim *cloudsim.Sim
			var cases []connectCase
			if dialect == secrets.Aliyun {
				sim, _ = aliyunSim(t)
				cases = aliyunConnectCases(t)
			} else {
				sim, _ = enosSim(t)
				cases = enosConnectCases(t)
			}
			pki := pkiOf(t, sim)
			wantRefused := map[byte]int64{}
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					var cfg *tls.Config
					if tc.transport == cloudsim.TLS {
						cfg = pki.ClientTLS()
					}
					if got := rawConnackCode(t, sim.Addr(tc.transport), cfg, tc.rc); got != tc.want {
						t.Errorf("CONNACK return code %d, want %d", got, tc.want)
					}
				})
				if tc.want != 0 {
					if tc.want == 0x84 {
						wantRefused[1]++
					} else {
						wantRefused[tc.want]++
					}
				}
			}
			st := sim.Stats()
			for code, n := range wantRefused {
				if st.ConnectsRefused[code] != n {
					t.Errorf("Stats.ConnectsRefused[%d] = %d, want %d (all: %v)", code, st.ConnectsRefused[code], n, st.ConnectsRefused)
				}
			}
		})
	}
}

// TestPahoRefusals checks the codes as paho reports them.
func TestPahoRefusals(t *testing.T) {
	sim, _ := aliyunSim(t)
	url := urlFor(sim, cloudsim.TCP)
	good := sign(t, secrets.Aliyun, aliPK, aliDN, aliSecret, 3, "")
	bad := sign(t, secrets.Aliyun, aliPK, aliDN, "not-the-secret", 3, "")
	tests := []struct {
		name     string
		cid      string
		user     string
		pass     string
		ka       int
		wantCode byte
		wantErr  error
	}{
		{"accepted", good.ClientID, good.Username, good.Password.Reveal(), 300, 0, nil},
		{"bad signature", bad.ClientID, bad.Username, bad.Password.Reveal(), 300, 5, pahopackets.ErrorRefusedNotAuthorised},
		{"bad keepalive", good.ClientID, good.Username, good.Password.Reveal(), 10, 3, pahopackets.ErrorRefusedServerUnavailable},
		{"bad username", good.ClientID, "nobody", good.Password.Reveal(), 300, 4, pahopackets.ErrorRefusedBadUsernameOrPassword},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, code, err := connect(t, url, tc.cid, tc.user, tc.pass, withKeepAlive(secondsDuration(tc.ka)))
			if code != tc.wantCode || !errors.Is(err, tc.wantErr) {
				t.Errorf("code %d err %v, want code %d err %v", code, err, tc.wantCode, tc.wantErr)
			}
		})
	}
}

// TestSecretsNeverLogged: refusals, activations and registrations log
// reasons, never passwords or secrets.
func TestSecretsNeverLogged(t *testing.T) {
	sim, logs := aliyunSim(t)
	bad := sign(t, secrets.Aliyun, aliPK, aliDN, "not-the-secret", 3, "")
	_, _, _ = connect(t, urlFor(sim, cloudsim.TCP), bad.ClientID, bad.Username, bad.Password.Reveal(), withKeepAlive(secondsDuration(300)))
	good := sign(t, secrets.Aliyun, aliPK, aliDN, aliSecret, 3, "")
	mustConnect(t, urlFor(sim, cloudsim.TCP), good, withKeepAlive(secondsDuration(300)))
	secret := registerOnce(t, sim, urlFor(sim, cloudsim.TLS), aliNewDN, pkiOf(t, sim).ClientTLS())
	waitStats(t, sim, "2 accepted connects", func(s cloudsim.Stats) bool { return s.ConnectsAccepted >= 2 })
	out := logs.String()
	for _, leak := range []string{aliSecret, aliPSecret, bad.Password.Reveal(), good.Password.Reveal(), secret} {
		if strings.Contains(out, leak) {
			t.Errorf("log contains a secret or password (%d bytes)", len(leak))
		}
	}
	if !strings.Contains(out, "wrong signature") {
		t.Errorf("log does not explain the refusal:\n%s", out)
	}
}
