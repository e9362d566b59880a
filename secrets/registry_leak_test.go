package secrets_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"

	"github.com/edgegw/edgegw/secrets"
)

// leakForms returns the ways a secret value could show up in bytes: the
// value, its hex, and its base64 (standard and URL alphabets, padded or not)
// at each of the three alignments it could have inside a longer encoding.
func leakForms(v string) []string {
	forms := []string{v, fmt.Sprintf("%x", v), fmt.Sprintf("%X", v)}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding} {
		for shift := range 3 {
			s := enc.EncodeToString(append(make([]byte, shift), v...))
			// Drop the characters that depend on the neighbouring bytes.
			s = strings.TrimRight(s, "=")
			lo, hi := (shift*4+2)/3+1, len(s)-2
			if hi-lo >= 8 {
				forms = append(forms, s[lo:hi])
			}
		}
	}
	return forms
}

// assertNoLeak fails if s contains any form of any of the values.
func assertNoLeak(t *testing.T, what string, s []byte, values ...string) {
	t.Helper()
	for _, v := range values {
		for _, f := range leakForms(v) {
			if bytes.Contains(s, []byte(f)) {
				t.Errorf("%s leaks %q (as %q)", what, v, f)
			}
		}
	}
}

// TestRegistryLeak stores distinctive secrets and checks that they appear
// neither in the file, nor in any formatting, JSON or slog output of the
// exported types, nor in logs or error strings.
func TestRegistryLeak(t *testing.T) {
	const (
		devSecret  = "DevSecret-7Qz1Lk9Wm3Px"
		prodSecret = "ProdSecret-4Hn8Tv2Yc6Rb"
		localPW    = "LocalPw-9Js5Dg1Xe7Fa"
		actSecret  = "ActSecret-2Mu6Wq8Bn4Kc"
	)
	leaky := []string{devSecret, prodSecret, localPW, actSecret}

	var logText, logJSON bytes.Buffer
	logger := slog.New(slog.NewMultiHandler(
		slog.NewTextHandler(&logText, &slog.HandlerOptions{Level: slog.LevelDebug}),
		slog.NewJSONHandler(&logJSON, &slog.HandlerOptions{Level: slog.LevelDebug}),
	))
	e := newEnv(t)
	opts := e.opts()
	opts.Logger = logger
	r, err := secrets.OpenRegistry(e.path, e.key, opts)
	if err != nil {
		t.Fatal(err)
	}

	var errs []error
	keep := func(err error) {
		t.Helper()
		if err == nil {
			t.Error("invalid operation succeeded")
			return
		}
		errs = append(errs, err)
	}
	mustPutProduct(t, r, secrets.Product{ProductKey: "leakpk", Dialect: secrets.EnOS, ProductSecret: secrets.NewSecret(prodSecret)})
	mustAddDevice(t, r, secrets.Device{ProductKey: "leakpk", DeviceName: "leak-dev", DeviceSecret: secrets.NewSecret(devSecret)})
	mustAddDevice(t, r, secrets.Device{ProductKey: "leakpk", DeviceName: "leak-dyn"})
	if err := r.SetLocalPassword("leakpk", "leak-dev", secrets.NewSecret(localPW)); err != nil {
		t.Fatal(err)
	}
	if ok, err := r.CheckLocalPassword("leakpk", "leak-dev", secrets.NewSecret(localPW)); !ok || err != nil {
		t.Fatalf("CheckLocalPassword = %v, %v", ok, err)
	}
	if err := r.StoreActivatedSecret("leakpk", "leak-dyn", secrets.NewSecret(actSecret), "enos-activate"); err != nil {
		t.Fatal(err)
	}

	// Errors whose inputs carry the secrets.
	keep(r.AddDevice(secrets.Device{ProductKey: "leakpk", DeviceName: "leak-dev", DeviceSecret: secrets.NewSecret(devSecret)}))
	keep(r.AddDevice(secrets.Device{ProductKey: "leakpk", DeviceName: "leak-bad", DeviceSecret: secrets.NewSecret(devSecret + "\n")}))
	keep(r.AddDevice(secrets.Device{ProductKey: "leakpk", DeviceName: "leak-bad", DeviceSecret: secrets.NewSecret(devSecret), LocalPassword: localPW}))
	keep(r.AddDevice(secrets.Device{ProductKey: "nopk", DeviceName: "leak-bad", DeviceSecret: secrets.NewSecret(devSecret)}))
	_, err = r.PutProduct(secrets.Product{ProductKey: "leakpk2", Dialect: secrets.EnOS, ProductSecret: secrets.NewSecret(" " + prodSecret)})
	keep(err)
	keep(r.StoreActivatedSecret("leakpk", "leak-dyn", secrets.NewSecret(actSecret+" x"), "enos-activate"))
	keep(r.StoreActivatedSecret("leakpk", "nodev", secrets.NewSecret(actSecret), "enos-activate"))
	keep(r.SetLocalPassword("leakpk", "nodev", secrets.NewSecret(localPW)))
	_, err = r.CheckLocalPassword("leakpk", "nodev", secrets.NewSecret(localPW))
	keep(err)
	_, err = r.UpdateDevice("leakpk", "leak-dev", func(d *secrets.Device) error {
		d.DeviceSecret = secrets.NewSecret(devSecret + "\t")
		return nil
	})
	keep(err)
	_, err = r.UpdateDevice("leakpk", "leak-dev", func(d *secrets.Device) error {
		d.LocalPassword = localPW
		return nil
	})
	keep(err)
	_, err = secrets.OpenRegistry(e.path, e.key, e.opts()) // locked
	keep(err)
	_, err = secrets.HashPassword(secrets.Secret{})
	keep(err)

	dev, err := r.GetDevice("leakpk", "leak-dev")
	if err != nil {
		t.Fatal(err)
	}
	if dev.DeviceSecret.Reveal() != devSecret || dev.LocalPassword == "" {
		t.Fatal("test setup: device does not hold the secrets")
	}
	prod, _ := r.GetProduct("leakpk")
	acts, _ := r.Activations("leakpk", "leak-dyn")
	if len(acts) != 1 || acts[0].Secret.Reveal() != actSecret || prod.ProductSecret.Reveal() != prodSecret {
		t.Fatal("test setup: product or activation does not hold the secrets")
	}
	devs, _ := r.Devices(secrets.DeviceFilter{})
	prods, _ := r.Products()
	counts, _ := r.CountDevices()
	checker := secrets.NewPasswordChecker(4)
	checker.Check(dev.LocalPassword, secrets.NewSecret(localPW))

	values := map[string]any{
		"Device": dev, "*Device": &dev, "[]Device": devs, "Product": prod, "*Product": &prod, "[]Product": prods,
		"ActivationRecord": acts[0], "[]ActivationRecord": acts, "DeviceFilter": secrets.DeviceFilter{ProductKey: "leakpk"},
		"RegistryOptions": *opts, "*Registry": r, "*PasswordChecker": checker, "PasswordCheckerStats": checker.Stats(),
		"counts": counts, "DeviceState": dev.State, "Dialect": prod.Dialect, "Secret": dev.DeviceSecret,
	}
	for i, err := range errs {
		values[fmt.Sprintf("error %d", i)] = err
	}
	var out bytes.Buffer
	for name, v := range values {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X"} {
			s := fmt.Sprintf(verb, v)
			assertNoLeak(t, fmt.Sprintf("fmt %s of %s", verb, name), []byte(s), leaky...)
			out.WriteString(s)
		}
		if j, err := json.Marshal(v); err == nil {
			assertNoLeak(t, "JSON of "+name, j, leaky...)
			out.Write(j)
		}
		logger.Info("value", "name", name, "v", v)
	}
	for _, err := range errs {
		assertNoLeak(t, "error string", []byte(err.Error()), leaky...)
	}
	// The password hash is not printed either.
	if bytes.Contains(out.Bytes(), []byte(dev.LocalPassword)) || strings.Contains(logText.String()+logJSON.String(), dev.LocalPassword) {
		t.Error("the local password hash was printed")
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	assertNoLeak(t, "text log", logText.Bytes(), leaky...)
	assertNoLeak(t, "JSON log", logJSON.Bytes(), leaky...)
	if !strings.Contains(logText.String(), "stored activated device secret") {
		t.Errorf("registry log lacks the activation line:\n%s", logText.String())
	}

	raw, err := os.ReadFile(e.path)
	if err != nil {
		t.Fatal(err)
	}
	assertNoLeak(t, "registry file", raw, leaky...)
	// The file does hold the identities: the scan is looking at the right bytes.
	if !bytes.Contains(raw, []byte("leakpk/leak-dev")) {
		t.Error("registry file does not contain the device key; leak scan is suspect")
	}
	mustCheckBolt(t, e.path)
}

func TestLeakFormsFindsEmbeddedBase64(t *testing.T) {
	// The helper must catch a secret inside a longer base64 string at any
	// alignment, or the leak test proves nothing.
	const v = "DevSecret-7Qz1Lk9Wm3Px"
	for shift := range 3 {
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawURLEncoding} {
			s := enc.EncodeToString([]byte(strings.Repeat("p", shift) + v + "suffix"))
			found := false
			for _, f := range leakForms(v) {
				found = found || strings.Contains(s, f)
			}
			if !found {
				t.Errorf("leakForms misses %q (shift %d)", s, shift)
			}
		}
	}
}
