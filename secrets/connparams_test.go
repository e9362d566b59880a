package secrets_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/edgegw/edgegw/secrets"
)

// parseBlock turns "k=v,k=v" into params the way ParseConnect splits a
// block (without its other checks), for the table below.
func parseBlock(s string) []secrets.Param {
	if s == "" {
		return nil
	}
	var ps []secrets.Param
	for _, f := range strings.Split(s, ",") {
		k, v, _ := strings.Cut(f, "=")
		ps = append(ps, secrets.Param{Key: k, Value: v})
	}
	return ps
}

// The clientIds real firmware sends (docs/protocol.md §2.2, §9): what a
// cloud session carries over, and what it leaves to edgegw.
func TestFilterConnectParams(t *testing.T) {
	for _, tc := range []struct {
		name, block string
		want        string // kept, as k=v,k=v
		dropped     int
	}{
		{"link sdk 4.1.0", "timestamp=2524608000000,_ss=1,_v=sdk-c-4.1.0,securemode=3,signmethod=hmacsha256,ext=3,_conn=tls_1", "_ss=1,_v=sdk-c-4.1.0,ext=3", 0},
		{"c sdk 3.0.1", "timestamp=2524608000000,_v=sdk-c-3.0.1,securemode=3,signmethod=hmacsha256,lan=C,gw=0,ext=0", "_v=sdk-c-3.0.1,lan=C,gw=0,ext=0", 0},
		{"node sdk 1.2.8", "securemode=3,signmethod=hmacsha1,timestamp=1,lan=NodeJS,_v=1.2.8", "lan=NodeJS,_v=1.2.8", 0},
		{"none carried", "securemode=2,signmethod=hmacsha256,timestamp=1", "", 0},
		{"login modes stay edgegw's", "securemode=-2,authType=connwl,random=1,instanceId=iot-1", "", 0},
		{"empty value dropped", "_ss=,ext=3", "ext=3", 1},
		{"space dropped", "_v=sdk c,ext=3", "ext=3", 1},
		{"too long dropped", "_v=" + strings.Repeat("v", secrets.MaxConnectParamLen+1) + ",_ss=1", "_ss=1", 1},
		{"longest kept", "_v=" + strings.Repeat("v", secrets.MaxConnectParamLen), "_v=" + strings.Repeat("v", secrets.MaxConnectParamLen), 0},
		{"control dropped", "lan=C\x00,gw=1", "gw=1", 1},
		{"non-ascii dropped", "lan=Cé", "", 1},
		{"twice keeps the first", "_ss=1,_ss=0", "_ss=1", 1},
		{"case matters", "_SS=1,EXT=3", "", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kept, dropped := secrets.FilterConnectParams(parseBlock(tc.block))
			if kept == nil {
				t.Fatal("kept is nil; want an empty list for a device seen with none")
			}
			if got := secrets.FormatConnectParams(kept); got != tc.want {
				t.Errorf("kept %q, want %q", got, tc.want)
			}
			if len(dropped) != tc.dropped {
				t.Errorf("dropped %v, want %d", dropped, tc.dropped)
			}
			if err := secrets.ValidateConnectParams(kept); err != nil {
				t.Errorf("kept params do not validate: %v", err)
			}
		})
	}
}

func TestValidateConnectParams(t *testing.T) {
	for _, tc := range []struct {
		ps      []secrets.Param
		wantErr string
	}{
		{nil, ""},
		{[]secrets.Param{}, ""},
		{[]secrets.Param{{"_ss", "1"}, {"ext", "3"}, {"_v", "sdk-c-4.1.0"}, {"lan", "C"}, {"gw", "0"}}, ""},
		{[]secrets.Param{{"securemode", "2"}}, `connect parameter "securemode": not one of`},
		{[]secrets.Param{{"timestamp", "1"}}, `not one of`},
		{[]secrets.Param{{"_conn", "tls_1"}}, `not one of`},
		{[]secrets.Param{{"ext", ""}}, "connect parameter ext: empty value"},
		{[]secrets.Param{{"ext", "1,2"}}, `connect parameter ext: value "1,2" has ',' at offset 1`},
		{[]secrets.Param{{"ext", "1|2"}}, `'|'`},
		{[]secrets.Param{{"ext", "a=b"}}, `'='`},
		{[]secrets.Param{{"_v", strings.Repeat("x", 33)}}, "value is 33 characters, at most 32"},
		{[]secrets.Param{{"_ss", "1"}, {"_ss", "1"}}, "connect parameter _ss: given twice"},
	} {
		err := secrets.ValidateConnectParams(tc.ps)
		if tc.wantErr == "" {
			if err != nil {
				t.Errorf("%v: %v", tc.ps, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%v: err = %v, want %q", tc.ps, err, tc.wantErr)
		}
	}
}

func TestEqualConnectParams(t *testing.T) {
	a := []secrets.Param{{"_ss", "1"}, {"ext", "3"}}
	for _, tc := range []struct {
		x, y []secrets.Param
		want bool
	}{
		{nil, nil, true},
		{[]secrets.Param{}, []secrets.Param{}, true},
		{nil, []secrets.Param{}, false}, // never seen vs seen with none
		{a, slices.Clone(a), true},
		{a, []secrets.Param{{"ext", "3"}, {"_ss", "1"}}, false},
		{a, a[:1], false},
	} {
		if got := secrets.EqualConnectParams(tc.x, tc.y); got != tc.want {
			t.Errorf("Equal(%v, %v) = %v", tc.x, tc.y, got)
		}
	}
}

// FuzzFilterConnectParams: whatever a device puts in its signed clientId,
// the filter never panics, keeps only parameters that validate and that
// Sign accepts as extras, and never carries edgegw's own keys.
func FuzzFilterConnectParams(f *testing.F) {
	f.Add("timestamp=2524608000000,_ss=1,_v=sdk-c-4.1.0,securemode=3,signmethod=hmacsha256,ext=3,_conn=tls_1")
	f.Add("timestamp=2524608000000,_v=sdk-c-3.0.1,securemode=3,signmethod=hmacsha256,lan=C,gw=0,ext=0")
	f.Add("_ss=1,_ss=0,ext=,lan=C\x00,_v=" + strings.Repeat("v", 40))
	f.Add("=,==,,_ss==1")
	f.Fuzz(func(t *testing.T, block string) {
		var ps []secrets.Param
		for _, field := range strings.Split(block, ",") {
			k, v, _ := strings.Cut(field, "=")
			ps = append(ps, secrets.Param{Key: k, Value: v})
		}
		kept, _ := secrets.FilterConnectParams(ps)
		if err := secrets.ValidateConnectParams(kept); err != nil {
			t.Fatalf("kept %v: %v", kept, err)
		}
		for _, p := range kept {
			if !slices.Contains(ps, p) {
				t.Fatalf("kept %v, which was not presented", p)
			}
		}
		cr, err := secrets.Sign(secrets.SignParams{Dialect: secrets.Aliyun, ProductKey: "pk", DeviceName: "dev1",
			Timestamp: "1", Extra: kept}, secrets.NewSecret("s"))
		if err != nil {
			t.Fatalf("Sign refuses kept %v: %v", kept, err)
		}
		p, err := secrets.ParseConnect(secrets.Aliyun, cr.ClientID, cr.Username, cr.Password)
		if err != nil {
			t.Fatalf("signed clientId %q does not parse: %v", cr.ClientID, err)
		}
		if again, _ := secrets.FilterConnectParams(p.Params); !secrets.EqualConnectParams(again, kept) {
			t.Fatalf("round trip: %s, want %s", secrets.FormatConnectParams(again), secrets.FormatConnectParams(kept))
		}
		if sm, _ := p.Param("securemode"); sm != "2" {
			t.Fatalf("securemode %q: carried params overrode edgegw's", sm)
		}
	})
}

func TestConnectParamsChangeSession(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{"", "", false},
		{"", "_v=sdk-c-3.0.1,lan=C,gw=0", false},
		{"", "ext=0,_ss=0", false},
		{"ext=0", "ext=00", false},
		{"_v=1", "_v=2,lan=C", false},
		{"", "_ss=1", true},
		{"_ss=1,ext=3", "_ss=1,ext=1", true},
		{"ext=1", "", true},
		{"ext=x", "ext=y", true},
		{"_ss=1,_v=sdk-c-4.1.0,ext=3", "ext=3,_ss=1,_v=sdk-c-4.1.1", false},
	} {
		if got := secrets.ConnectParamsChangeSession(parseBlock(tc.a), parseBlock(tc.b)); got != tc.want {
			t.Errorf("ChangeSession(%q, %q) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}
}
