package secrets

import (
	"bytes"
	"crypto/cipher"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

// White-box tests of the record codec and the bbolt pre-check, and the
// fuzz targets for them.

// regTestAEAD returns the record cipher for a fixed test key.
func regTestAEAD(tb testing.TB, fill byte) cipher.AEAD {
	tb.Helper()
	aead, err := newRegistryAEAD(bytes.Repeat([]byte{fill}, KeySize))
	if err != nil {
		tb.Fatal(err)
	}
	return aead
}

// regTestHash is an encoded local password hash made once per test binary.
var regTestHash = func() string {
	h, err := HashPasswordIterations(NewSecret("local-pw"), MinPasswordIterations)
	if err != nil {
		panic(err)
	}
	return h
}()

func regSampleDevices() []Device {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	return []Device{
		{ProductKey: "a1B2c3D4e5F", DeviceName: "meter-01", DeviceSecret: NewSecret("0123456789abcdef0123456789abcdef"), ClientID: "a1B2c3D4e5F.meter-01",
			LocalPassword: regTestHash, State: StateReady, Created: t0, Updated: t0.Add(time.Hour), ActivatedAt: t0.Add(time.Minute),
			ConnectParams: []Param{{"_ss", "1"}, {"_v", "sdk-c-4.1.0"}, {"ext", "3"}}},
		{ProductKey: "enosprod", DeviceName: "dk_1.x", State: StateAwaitingActivation, Created: t0, Updated: t0},
		{ProductKey: "enosprod", DeviceName: "dk-2", State: StateActivationFailed, StateReason: "refused: code 5 — «unicode»", Disabled: true, Created: t0, Updated: t0},
		{ProductKey: "p", DeviceName: "a@b:c", DeviceSecret: NewSecret("x"), State: StateReady},
		{ProductKey: "p", DeviceName: "seen-none", DeviceSecret: NewSecret("x"), State: StateReady, ConnectParams: []Param{}},
	}
}

// regSameDevice compares devices including secrets and the hash.
func regSameDevice(a, b Device) bool {
	return a.GoString() == b.GoString() && a.DeviceSecret.Equal(b.DeviceSecret) && a.DeviceSecret.Len() == b.DeviceSecret.Len() &&
		a.LocalPassword == b.LocalPassword && a.Created.Equal(b.Created) && a.Updated.Equal(b.Updated) && a.ActivatedAt.Equal(b.ActivatedAt)
}

func TestDeviceRecordRoundTrip(t *testing.T) {
	aead := regTestAEAD(t, 1)
	for _, d := range regSampleDevices() {
		data, err := encodeDevice(aead, d)
		if err != nil {
			t.Fatal(err)
		}
		got, err := decodeDevice(aead, []byte(d.ID().String()), data)
		if err != nil {
			t.Fatalf("decode %s: %v", d.ID(), err)
		}
		if !regSameDevice(got, d) {
			t.Errorf("round trip:\n got %#v\nwant %#v", got, d)
		}
		// Two encodings of one device differ (random nonces) but decode alike.
		data2, _ := encodeDevice(aead, d)
		if !d.DeviceSecret.IsZero() && bytes.Equal(data, data2) {
			t.Error("encodings are identical: nonce is not random")
		}
	}
}

// regMutate decodes a record into a generic map, lets fn change it and
// encodes it again.
func regMutate(t *testing.T, data []byte, fn func(m map[string]any)) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	fn(m)
	out, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestDecodeDeviceRejects(t *testing.T) {
	aead := regTestAEAD(t, 1)
	devs := regSampleDevices()
	a, b := devs[0], devs[3] // both ready, with secrets
	b.LocalPassword = regTestHash
	encA, _ := encodeDevice(aead, a)
	encB, _ := encodeDevice(aead, b)
	var recA, recB map[string]any
	json.Unmarshal(encA, &recA)
	json.Unmarshal(encB, &recB)
	keyA, keyB := []byte(a.ID().String()), []byte(b.ID().String())

	for _, tc := range []struct {
		name string
		key  []byte
		data []byte
		want string
	}{
		{"empty", keyA, nil, "EOF"},
		{"null", keyA, []byte("null"), "unsupported record version 0"},
		{"array", keyA, []byte("[1,2]"), "cannot unmarshal"},
		{"truncated", keyA, encA[:len(encA)/2], "unexpected EOF"},
		{"trailing data", keyA, append(bytes.Clone(encA), []byte(" {}")...), "trailing data"},
		{"unknown field", keyA, regMutate(t, encA, func(m map[string]any) { m["extra"] = 1 }), "unknown field"},
		{"version 2", keyA, regMutate(t, encA, func(m map[string]any) { m["v"] = 2 }), "unsupported record version 2"},
		{"stored under another key", keyB, encA, "another device's key"},
		{"identity edited to match key", keyB, regMutate(t, encA, func(m map[string]any) { m["pk"], m["dn"] = b.ProductKey, b.DeviceName }), "deviceSecret: cannot decrypt"},
		{"secret swapped from another device", keyA, regMutate(t, encA, func(m map[string]any) { m["secret"] = recB["secret"] }), "deviceSecret: cannot decrypt"},
		{"password hash swapped from another device", keyA, regMutate(t, encA, func(m map[string]any) { m["pw"] = recB["pw"] }), "localPassword: cannot decrypt"},
		{"secret moved into the password field", keyA, regMutate(t, encA, func(m map[string]any) { m["pw"] = recA["secret"] }), "localPassword: cannot decrypt"},
		{"short ciphertext", keyA, regMutate(t, encA, func(m map[string]any) { m["secret"] = "AAAA" }), "ciphertext too short"},
		{"secret not base64", keyA, regMutate(t, encA, func(m map[string]any) { m["secret"] = "!!" }), "illegal base64"},
		{"unknown state", keyA, regMutate(t, encA, func(m map[string]any) { m["state"] = "sleeping" }), `state "sleeping": unknown`},
		{"ready without secret", keyA, regMutate(t, encA, func(m map[string]any) { delete(m, "secret") }), "inconsistent"},
		{"awaiting with secret", keyA, regMutate(t, encA, func(m map[string]any) { m["state"] = "awaiting-activation" }), "inconsistent"},
		{"bad client id", keyA, regMutate(t, encA, func(m map[string]any) { m["cid"] = "a|b" }), "clientId"},
		{"slash in name", []byte("a1B2c3D4e5F/x/yz"), regMutate(t, encA, func(m map[string]any) { m["dn"] = "x/yz" }), "invalid productKey or deviceName"},
		{"bad time", keyA, regMutate(t, encA, func(m map[string]any) { m["created"] = "yesterday" }), "cannot parse"},
		{"wrong type", keyA, regMutate(t, encA, func(m map[string]any) { m["disabled"] = "yes" }), "cannot unmarshal"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := decodeDevice(aead, tc.key, tc.data)
			if err == nil {
				t.Fatalf("accepted: %#v", d)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
			if !strings.HasPrefix(err.Error(), "decode device record ") {
				t.Errorf("error %q does not name the record", err)
			}
		})
	}

	// Another key cannot decrypt anything.
	if _, err := decodeDevice(regTestAEAD(t, 2), keyA, encA); err == nil || !strings.Contains(err.Error(), "cannot decrypt") {
		t.Errorf("other key: %v", err)
	}
}

func TestProductAndActivationRecordsAreBound(t *testing.T) {
	aead := regTestAEAD(t, 1)
	pA := Product{ProductKey: "pka", Dialect: Aliyun, ProductSecret: NewSecret("secret-a")}
	pB := Product{ProductKey: "pkb", Dialect: Aliyun, ProductSecret: NewSecret("secret-b")}
	encA, _ := encodeProduct(aead, pA)
	encB, _ := encodeProduct(aead, pB)
	if got, err := decodeProduct(aead, []byte("pka"), encA); err != nil || got.ProductSecret.Reveal() != "secret-a" {
		t.Fatalf("round trip: %v, %v", got, err)
	}
	var recB map[string]any
	json.Unmarshal(encB, &recB)
	swapped := regMutate(t, encA, func(m map[string]any) { m["secret"] = recB["secret"] })
	if _, err := decodeProduct(aead, []byte("pka"), swapped); err == nil {
		t.Error("product secret swapped between products decrypts")
	}
	if _, err := decodeProduct(aead, []byte("pkb"), encA); err == nil {
		t.Error("product record accepted under another key")
	}

	k1 := activationKey("pka/dev1", 1)
	act, err := encodeActivation(aead, k1, ActivationRecord{Time: time.Unix(1, 0), Source: "enos-activate", Secret: NewSecret("act")})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := decodeActivation(aead, k1, act); err != nil || got.Secret.Reveal() != "act" || got.Seq != 1 {
		t.Fatalf("activation round trip: %+v, %v", got, err)
	}
	for _, k := range [][]byte{activationKey("pka/dev2", 1), activationKey("pka/dev1", 2), []byte("pka/dev1")} {
		if _, err := decodeActivation(aead, k, act); err == nil {
			t.Errorf("activation record accepted under key %q", k)
		}
	}
}

// FuzzDecodeDevice feeds arbitrary keys and records to the device record
// decoder. It must never panic, and whatever it accepts must be a
// consistent device that survives a round trip.
func FuzzDecodeDevice(f *testing.F) {
	aead := regTestAEAD(f, 1)
	for _, d := range regSampleDevices() {
		data, err := encodeDevice(aead, d)
		if err != nil {
			f.Fatal(err)
		}
		f.Add([]byte(d.ID().String()), data)
	}
	f.Add([]byte("pk/dn"), []byte(`{"v":1,"pk":"pk","dn":"dnxx","state":"activation-failed"}`))
	f.Add([]byte("pk/dnxx"), []byte(`{"v":1,"pk":"pk","dn":"dnxx","state":"ready","secret":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}`))
	f.Add([]byte(""), []byte(""))
	f.Add([]byte("a/b"), []byte(`{"v":1e400}`))
	f.Fuzz(func(t *testing.T, key, data []byte) {
		d, err := decodeDevice(aead, key, data)
		if err != nil {
			if !reflect.ValueOf(d).IsZero() {
				t.Fatalf("error %v with non-zero device", err)
			}
			return
		}
		if d.ID().String() != string(key) || !d.State.Valid() || (d.State == StateReady) == d.DeviceSecret.IsZero() {
			t.Fatalf("accepted inconsistent device %#v under key %q", d, key)
		}
		if !validIdentifierAnyDialect(d.ProductKey, d.DeviceName) {
			t.Fatalf("accepted invalid identity %q/%q", d.ProductKey, d.DeviceName)
		}
		again, err := encodeDevice(aead, d)
		if err != nil {
			t.Fatal(err)
		}
		d2, err := decodeDevice(aead, key, again)
		if err != nil {
			t.Fatalf("re-encoded device does not decode: %v", err)
		}
		if !regSameDevice(d, d2) {
			t.Fatalf("round trip changed the device:\n%#v\n%#v", d, d2)
		}
	})
}

// FuzzParsePasswordHash: the parser must not panic, and anything it
// accepts is canonical (re-encoding gives back the input).
func FuzzParsePasswordHash(f *testing.F) {
	f.Add(regTestHash)
	f.Add("$pbkdf2-sha256$i=1000$MDEyMzQ1Njc4OWFiY2RlZg$yqSq2SygY1sB4EcH9f2FG0JTMES+wqLsOT5YmiRBplI")
	f.Add("$pbkdf2-sha256$i=1000$$")
	f.Add("$$$$")
	f.Fuzz(func(t *testing.T, s string) {
		h, err := parsePasswordHash(s)
		if err != nil {
			return
		}
		re := "$" + pbkdf2Scheme + "$i=" + strconv.Itoa(h.iterations) + "$" + pwB64.EncodeToString(h.salt) + "$" + pwB64.EncodeToString(h.hash)
		if re != s {
			t.Fatalf("accepted non-canonical %q (canonical %q)", s, re)
		}
	})
}

// FuzzOpenRegistryFile overwrites bytes of a valid registry file and opens
// it: OpenRegistry must return (an error or a working registry), never
// crash the process, and a failed open must leave the file untouched.
func FuzzOpenRegistryFile(f *testing.F) {
	base, key := regGoldenFile(f)
	f.Add(uint32(8), []byte{0xee})                        // page 0 flags
	f.Add(uint32(4096*2+8), []byte{0x01})                 // a page's type
	f.Add(uint32(4096*3), []byte{0xff, 0xff, 0xff, 0x7f}) // a page id
	f.Add(uint32(4096*3+16+4), []byte{0xff, 0x0f})        // element pos
	f.Add(uint32(4096+16+40), []byte{0x40})               // meta high-water mark
	f.Add(uint32(len(base)/2), bytes.Repeat([]byte{0}, 64))
	f.Fuzz(func(t *testing.T, off uint32, patch []byte) {
		if len(base) == 0 || len(patch) == 0 {
			return
		}
		data := bytes.Clone(base)
		copy(data[int(off)%len(data):], patch)
		path := filepath.Join(t.TempDir(), "r.db")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		r, err := OpenRegistry(path, key, &RegistryOptions{Timeout: time.Second, PasswordIterations: MinPasswordIterations})
		if err != nil {
			after, _ := os.ReadFile(path)
			if !bytes.Equal(after, data) {
				t.Fatalf("failed open (%v) modified the file", err)
			}
			return
		}
		defer r.Close()
		// Reads may fail on damaged records but must not crash.
		r.Products()
		r.Devices(DeviceFilter{})
		r.CountDevices()
		r.Activations("enosprod", "dk-1")
		r.PutProduct(Product{ProductKey: "fuzzpk", Dialect: EnOS})
	})
}

// regGoldenFile reads the version-1 fixture and its key (see
// TestRegistryGoldenV1 in registry_test.go).
func regGoldenFile(tb testing.TB) (data, key []byte) {
	tb.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "registry", "v1.db"))
	if err != nil {
		tb.Fatal(err)
	}
	key, err = readKeyFile(filepath.Join("testdata", "registry", "v1.key"), slog.New(slog.DiscardHandler))
	if err != nil {
		tb.Fatal(err)
	}
	return data, key
}
