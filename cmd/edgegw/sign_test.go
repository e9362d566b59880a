package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgegw/edgegw/secrets"
)

func runCmd(t *testing.T, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(args, strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

func TestSignJSON(t *testing.T) {
	secretFile := filepath.Join(t.TempDir(), "dev.secret")
	if err := os.WriteFile(secretFile, []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		stdin string
		args  []string
		want  map[string]string
	}{
		{"aliyun A1 from file", "", []string{"-dialect", "aliyun", "-product-key", "pk", "-device-name", "device", "-client-id", "12345",
			"-timestamp", "789", "-sign-method", "hmacsha1", "-securemode", "3", "-device-secret-file", secretFile},
			map[string]string{"clientId": "12345|securemode=3,signmethod=hmacsha1,timestamp=789|", "username": "device&pk",
				"password": "fafd82a3d602b37fb0fa8b7892f24a477f851a14", "content": "clientId12345deviceNamedeviceproductKeypktimestamp789"}},
		{"enos doc vector from stdin", "abcdefg\n", []string{"-dialect", "enos", "-product-key", "654321", "-device-key", "test", "-client-id", "123456",
			"-timestamp", "1548753362502", "-device-secret", "-"},
			map[string]string{"clientId": "123456|securemode=2,signmethod=sha256,timestamp=1548753362502|", "username": "test&654321",
				"password": "B99032D49C706F7B27B22AB5CD2DD3C56A31E1BCBBC83BA0A2A6BB3272FBB166",
				"content":  "clientId123456deviceKeytestproductKey654321timestamp1548753362502"}},
		{"aliyun no timestamp", "", []string{"-product-key", "fOAt5H5TOWF", "-device-name", "device", "-client-id", "12345", "-timestamp", "none",
			"-sign-method", "hmacsha1", "-device-secret", "abc123"},
			map[string]string{"clientId": "12345|securemode=2,signmethod=hmacsha1|", "password": "972ec218bee1f39fddcba4567fca0a2583cb2416"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := runCmd(t, tt.stdin, append([]string{"sign", "-json"}, tt.args...)...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			var got map[string]string
			if err := json.Unmarshal([]byte(out), &got); err != nil {
				t.Fatalf("output %q is not one JSON object: %v", out, err)
			}
			if strings.Count(strings.TrimSpace(out), "\n") != 0 || len(got) != 4 {
				t.Errorf("want exactly one object with 4 fields, got %q", out)
			}
			for k, v := range tt.want {
				if got[k] != v {
					t.Errorf("%s = %q, want %q", k, got[k], v)
				}
			}
		})
	}
}

func TestSignDefaultsVerify(t *testing.T) {
	code, out, errOut := runCmd(t, "", "sign", "-json", "-product-key", "a1B2c3", "-device-name", "meter-01", "-device-secret", "s3cret")
	if code != 0 {
		t.Fatal(errOut)
	}
	var got map[string]string
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(got["clientId"], "meter-01|securemode=2,signmethod=hmacsha256,timestamp=") {
		t.Errorf("defaults: clientId %q", got["clientId"])
	}
	p, err := secrets.ParseConnect(secrets.Aliyun, got["clientId"], got["username"], secrets.NewSecret(got["password"]))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Verify(secrets.NewSecret("s3cret"), secrets.VerifyOptions{}); err != nil {
		t.Fatal(err)
	}
}

func TestSignErrorsOneLine(t *testing.T) {
	for _, args := range [][]string{
		{"sign", "-dialect", "aws", "-product-key", "p", "-device-name", "d", "-device-secret", "s"},
		{"sign", "-product-key", "p", "-device-name", "d"},
		{"sign", "-product-key", "p", "-device-name", "d", "-device-secret-file", "/nonexistent/secret"},
		{"sign", "-product-key", "p", "-device-name", "d", "-device-secret", "s", "-sign-method", "sha512"},
	} {
		code, out, errOut := runCmd(t, "", args...)
		if code == 0 || out != "" {
			t.Errorf("%v: exit %d, stdout %q", args, code, out)
		}
		if strings.Count(errOut, "\n") != 1 || !strings.HasPrefix(errOut, "edgegw sign: ") {
			t.Errorf("%v: want one error line, got %q", args, errOut)
		}
	}
}
