package secrets_test

import (
	"strings"
	"testing"

	"github.com/edgegw/edgegw/secrets"
)

func TestValidateProductKey(t *testing.T) {
	for _, tc := range []struct {
		d       secrets.Dialect
		pk      string
		wantErr string // "" = valid
	}{
		{secrets.Aliyun, "a1B2c3D4e5F", ""},
		{secrets.Aliyun, "x", ""},
		{secrets.Aliyun, strings.Repeat("A", 32), ""},
		{secrets.Aliyun, strings.Repeat("A", 33), `productKey "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA": must be 1-32 characters`},
		{secrets.Aliyun, "", "productKey: must not be empty"},
		{secrets.Aliyun, "a1-b2", `productKey "a1-b2": invalid character '-' at offset 2 (allowed: letters and digits)`},
		{secrets.Aliyun, "a1.b2", `invalid character '.'`},
		{secrets.EnOS, "Prod_1.a-b", ""},
		{secrets.EnOS, strings.Repeat("k", 64), ""},
		{secrets.EnOS, strings.Repeat("k", 65), "must be 1-64 characters"},
		{secrets.EnOS, "", "productKey: must not be empty"},
		{"", "abc", `dialect "": unknown`},
		{"azure", "abc", `dialect "azure": unknown (want aliyun or enos)`},
	} {
		assertValidation(t, "ValidateProductKey("+string(tc.d)+", "+tc.pk+")", secrets.ValidateProductKey(tc.d, tc.pk), tc.wantErr)
	}
	// Characters that would break usernames, clientIds or topics, and
	// non-ASCII look-alikes, are refused in every dialect.
	for _, d := range []secrets.Dialect{secrets.Aliyun, secrets.EnOS} {
		for _, bad := range forbiddenInIdentifiers {
			assertValidation(t, "productKey with "+bad, secrets.ValidateProductKey(d, "ab"+bad+"cd"), "invalid character")
		}
	}
}

// forbiddenInIdentifiers go into MQTT usernames ("dn&pk"), clientIds
// ("cid|k=v,k=v|") and topics ("/sys/pk/dn/..."), where each would change
// the meaning.
var forbiddenInIdentifiers = []string{"&", "|", ",", "/", "+", "#", " ", "\t", "\n", "\x00", "\x7f", "$", "=", "é", "\u200b"}

func TestValidateDeviceName(t *testing.T) {
	for _, tc := range []struct {
		d       secrets.Dialect
		dn      string
		wantErr string
	}{
		{secrets.Aliyun, "meter-01", ""},
		{secrets.Aliyun, "a_b@c.d:e-f", ""},
		{secrets.Aliyun, "abcd", ""},
		{secrets.Aliyun, strings.Repeat("d", 32), ""},
		{secrets.Aliyun, "ab", `deviceName "ab": must be 4-32 characters`},
		{secrets.Aliyun, "abc", `deviceName "abc": must be 4-32 characters`},
		{secrets.Aliyun, strings.Repeat("d", 33), "must be 4-32 characters"},
		{secrets.Aliyun, "", `deviceName "": must be 4-32 characters`},
		{secrets.Aliyun, "dev ice", `deviceName "dev ice": invalid character ' ' at offset 3`},
		{secrets.EnOS, "dk", ""},
		{secrets.EnOS, "a", ""},
		{secrets.EnOS, "Dev_Key-1.2", ""},
		{secrets.EnOS, strings.Repeat("k", 64), ""},
		{secrets.EnOS, strings.Repeat("k", 65), `deviceKey "kkkk`},
		{secrets.EnOS, "", "deviceKey: must not be empty"},
		{secrets.EnOS, "dev@1", `deviceKey "dev@1": invalid character '@'`},
		{secrets.EnOS, "dev:1", `invalid character ':'`},
		{"other", "abcd", `dialect "other": unknown`},
	} {
		assertValidation(t, "ValidateDeviceName("+string(tc.d)+", "+tc.dn+")", secrets.ValidateDeviceName(tc.d, tc.dn), tc.wantErr)
	}
	for _, d := range []secrets.Dialect{secrets.Aliyun, secrets.EnOS} {
		for _, bad := range forbiddenInIdentifiers {
			assertValidation(t, "deviceName with "+bad, secrets.ValidateDeviceName(d, "abc"+bad+"def"), "invalid character")
		}
	}
	// Long garbage is quoted shortened.
	err := secrets.ValidateDeviceName(secrets.Aliyun, strings.Repeat("x", 100000))
	if err == nil || len(err.Error()) > 200 {
		t.Errorf("error for a 100 kB name is %d bytes", len(err.Error()))
	}
}

func TestValidateClientID(t *testing.T) {
	for _, tc := range []struct {
		cid     string
		wantErr string
	}{
		{"12345", ""},
		{"pk.dn", ""},
		{"pk&dn", ""}, // the JS SDK's default
		{"AA:BB:CC:DD:EE:FF", ""},
		{"sn=123_x-y/z", ""},
		{strings.Repeat("c", 64), ""},
		{strings.Repeat("c", 65), "must be 1-64 characters"},
		{"", "clientId: must not be empty"},
		{"a|b", `clientId "a|b": invalid character '|' at offset 1`},
		{"a,b", `invalid character ','`},
		{"a b", `invalid character ' '`},
		{"a\x00b", `invalid character '\x00'`},
		{"a\nb", `invalid character '\n'`},
		{"caf\u00e9", `invalid character 'é'`},
	} {
		assertValidation(t, "ValidateClientID("+tc.cid+")", secrets.ValidateClientID(tc.cid), tc.wantErr)
	}
}

func assertValidation(t *testing.T, what string, err error, wantErr string) {
	t.Helper()
	switch {
	case wantErr == "" && err != nil:
		t.Errorf("%s: unexpected error %v", what, err)
	case wantErr != "" && err == nil:
		t.Errorf("%s: accepted, want error containing %q", what, wantErr)
	case wantErr != "" && !strings.Contains(err.Error(), wantErr):
		t.Errorf("%s: error %q does not contain %q", what, err, wantErr)
	}
}
