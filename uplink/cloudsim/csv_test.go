package cloudsim_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink/cloudsim"
)

func TestParseDevicesCSV(t *testing.T) {
	good := []struct {
		name string
		in   string
		want []string // pk/dn/secret
	}{
		{"plain", "ProductKey,DeviceName,DeviceSecret\na1B2c3D4e5F,pump0001,s3cret\n", []string{"a1B2c3D4e5F/pump0001/s3cret"}},
		{"BOM and CRLF", "\uFEFFProductKey,DeviceName,DeviceSecret\r\na1B2c3D4e5F,pump0001,s3cret\r\na1B2c3D4e5F,pump0002,\r\n",
			[]string{"a1B2c3D4e5F/pump0001/s3cret", "a1B2c3D4e5F/pump0002/"}},
		{"reordered, case-insensitive, extra column", "devicesecret,Remark,PRODUCTKEY,DeviceName\nxyz,hello,a1B2c3D4e5F,pump0001\n",
			[]string{"a1B2c3D4e5F/pump0001/xyz"}},
		{"blank lines and empty rows", "ProductKey,DeviceName,DeviceSecret\n\na1B2c3D4e5F,pump0001,s\n,,\n", []string{"a1B2c3D4e5F/pump0001/s"}},
		{"header only", "ProductKey,DeviceName,DeviceSecret\n", nil},
		{"no final newline", "ProductKey,DeviceName,DeviceSecret\na1B2c3D4e5F,dev@1.x:y,s", []string{"a1B2c3D4e5F/dev@1.x:y/s"}},
	}
	for _, tc := range good {
		t.Run(tc.name, func(t *testing.T) {
			devs, err := cloudsim.ParseDevicesCSV(strings.NewReader(tc.in), "devices.csv", secrets.Aliyun)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, d := range devs {
				got = append(got, d.ProductKey+"/"+d.DeviceName+"/"+d.Secret.Reveal())
			}
			if strings.Join(got, " ") != strings.Join(tc.want, " ") {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
	bad := []struct {
		name    string
		in      string
		dialect secrets.Dialect
		want    string // substring of the error
	}{
		{"empty file", "", secrets.Aliyun, "devices.csv:1: missing header"},
		{"no header", "a1B2c3D4e5F,pump0001,s3cret\n", secrets.Aliyun, "devices.csv:1: header lacks column ProductKey"},
		{"missing secret column", "ProductKey,DeviceName\na1B2c3D4e5F,pump0001\n", secrets.Aliyun, "devices.csv:1: header lacks column DeviceSecret"},
		{"duplicate column", "ProductKey,DeviceName,DeviceSecret,productkey\n", secrets.Aliyun, "devices.csv:1: header names column \"productkey\" twice"},
		{"short line", "ProductKey,DeviceName,DeviceSecret\na1B2c3D4e5F,pump0001,s\na1B2c3D4e5F,pump0002\n", secrets.Aliyun, "devices.csv:3: wrong number of fields"},
		{"bad quote", "ProductKey,DeviceName,DeviceSecret\na1B2c3D4e5F,\"pump0001,s\n", secrets.Aliyun, "devices.csv:2:"},
		{"empty product key", "ProductKey,DeviceName,DeviceSecret\n,pump0001,s\n", secrets.Aliyun, "devices.csv:2: productKey: must not be empty"},
		{"short device name", "ProductKey,DeviceName,DeviceSecret\r\na1B2c3D4e5F,pump0001,s\r\na1B2c3D4e5F,ab,s\r\n", secrets.Aliyun, "devices.csv:3: deviceName \"ab\""},
		{"slash in device key", "ProductKey,DeviceName,DeviceSecret\nenosPK,a/b,s\n", secrets.EnOS, "devices.csv:2: deviceKey \"a/b\""},
		{"space in secret", "ProductKey,DeviceName,DeviceSecret\na1B2c3D4e5F,pump0001,top secret\n", secrets.Aliyun, "devices.csv:2: DeviceSecret: byte 4 is whitespace"},
		{"duplicate device", "ProductKey,DeviceName,DeviceSecret\na1B2c3D4e5F,pump0001,s\n\na1B2c3D4e5F,pump0001,t\n", secrets.Aliyun, "devices.csv:4: device a1B2c3D4e5F/pump0001 listed twice (first on line 2)"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, err := cloudsim.ParseDevicesCSV(strings.NewReader(tc.in), "devices.csv", tc.dialect)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "top secret") {
				t.Errorf("error shows the secret: %v", err)
			}
		})
	}
}

func TestParseProductsCSV(t *testing.T) {
	ps, err := cloudsim.ParseProductsCSV(strings.NewReader("\uFEFFProductKey,ProductSecret\r\nenosPK01,ps1\r\nenosPK02,ps2\r\n"), "p.csv", secrets.EnOS)
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 2 || ps[1].ProductKey != "enosPK02" || ps[1].Secret.Reveal() != "ps2" {
		t.Errorf("products %+v", ps)
	}
	for in, want := range map[string]string{
		"ProductKey,ProductSecret\nenosPK01,\n":              "p.csv:2: ProductSecret is empty",
		"ProductKey,ProductSecret\nenosPK01,a\nenosPK01,b\n": "p.csv:3: product \"enosPK01\" listed twice (first on line 2)",
		"ProductKey,DeviceSecret\nenosPK01,a\n":              "p.csv:1: header lacks column ProductSecret",
		"ProductKey,ProductSecret\nbad key,a\n":              "p.csv:2: productKey \"bad key\"",
	} {
		if _, err := cloudsim.ParseProductsCSV(strings.NewReader(in), "p.csv", secrets.EnOS); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want %q", in, err, want)
		}
	}
}

func TestLoadFiles(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "devices.csv")
	if err := os.WriteFile(path, cloudsim.FormatDevicesCSV(aliyunDevices()), 0o600); err != nil {
		t.Fatal(err)
	}
	devs, err := cloudsim.LoadDevicesFile(path, secrets.Aliyun)
	if err != nil {
		t.Fatal(err)
	}
	if len(devs) != 3 || !devs[2].Secret.IsZero() || devs[0].Secret.Reveal() != aliSecret {
		t.Errorf("round trip: %+v", devs)
	}
	if _, err := cloudsim.LoadDevicesFile(filepath.Join(dir, "missing.csv"), secrets.Aliyun); err == nil {
		t.Error("missing file accepted")
	}
	bad := filepath.Join(dir, "bad.csv")
	os.WriteFile(bad, []byte("ProductKey,DeviceName,DeviceSecret\nx,y\n"), 0o600)
	if _, err := cloudsim.LoadDevicesFile(bad, secrets.Aliyun); err == nil || !strings.Contains(err.Error(), bad+":2:") {
		t.Errorf("error %v does not name %s:2", err, bad)
	}
	if _, err := cloudsim.LoadProductsFile(bad, secrets.Aliyun); err == nil || !strings.Contains(err.Error(), bad+":1:") {
		t.Errorf("products error %v does not name %s:1", err, bad)
	}
}

// FuzzParseDevicesCSV: the parser never panics, everything it accepts is
// valid and survives a round trip through FormatDevicesCSV, and its errors
// name the input.
func FuzzParseDevicesCSV(f *testing.F) {
	for _, s := range []string{
		"ProductKey,DeviceName,DeviceSecret\na1B2c3D4e5F,pump0001,s3cret\n",
		"\uFEFFProductKey,DeviceName,DeviceSecret\r\na1B2c3D4e5F,pump0001,\r\n",
		"devicesecret,x,productkey,devicename\n\"a\"\"b\",,pk1,dn01\n",
		"ProductKey,DeviceName,DeviceSecret\n,,\n\n",
		"ProductKey,DeviceName,DeviceSecret\na1B2c3D4e5F,\"pump\n0001\",s\n",
		"",
	} {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, data []byte, enos bool) {
		d := secrets.Aliyun
		if enos {
			d = secrets.EnOS
		}
		devs, err := cloudsim.ParseDevicesCSV(bytes.NewReader(data), "fuzz.csv", d)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.csv:") {
				t.Fatalf("error does not name the input: %v", err)
			}
			return
		}
		seen := map[string]bool{}
		for _, dev := range devs {
			if secrets.ValidateProductKey(d, dev.ProductKey) != nil || secrets.ValidateDeviceName(d, dev.DeviceName) != nil {
				t.Fatalf("accepted invalid identity %q/%q", dev.ProductKey, dev.DeviceName)
			}
			if s := dev.Secret.Reveal(); strings.ContainsAny(s, " \t\r\n\x00") {
				t.Fatalf("accepted a secret with whitespace or NUL")
			}
			key := dev.ProductKey + "/" + dev.DeviceName
			if seen[key] {
				t.Fatalf("accepted duplicate %s", key)
			}
			seen[key] = true
		}
		again, err := cloudsim.ParseDevicesCSV(bytes.NewReader(cloudsim.FormatDevicesCSV(devs)), "again.csv", d)
		if err != nil {
			t.Fatalf("round trip: %v", err)
		}
		if len(again) != len(devs) {
			t.Fatalf("round trip: %d devices, want %d", len(again), len(devs))
		}
		for i := range devs {
			if again[i].ProductKey != devs[i].ProductKey || again[i].DeviceName != devs[i].DeviceName || !again[i].Secret.Equal(devs[i].Secret) {
				t.Fatalf("round trip changed device %d", i)
			}
		}
	})
}
