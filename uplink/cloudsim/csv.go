package cloudsim

import (
	"bytes"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/edgegw/edgegw/secrets"
)

// Device is one row of a device list: a device registered in the cloud.
// A zero Secret means registered but not yet activated (EnOS dynamic
// activation or Alibaba dynamic registration will issue one).
type Device struct {
	ProductKey string
	DeviceName string // EnOS: deviceKey
	Secret     secrets.Secret
}

// Product is one row of a product list. Its Secret (the productSecret)
// enables dynamic activation / registration for the product's devices.
type Product struct {
	ProductKey string
	Secret     secrets.Secret
}

// The consoles' batch-export column names.
const (
	colProductKey    = "productkey"
	colDeviceName    = "devicename"
	colDeviceSecret  = "devicesecret"
	colProductSecret = "productsecret"
)

// maxSecretLen bounds secrets read from a CSV file; real ones are 20-64
// characters.
const maxSecretLen = 512

// ParseDevicesCSV reads a device list in the consoles' batch-export form:
// a required header naming the columns ProductKey, DeviceName and
// DeviceSecret (any order, case-insensitive, other columns ignored), then
// one device per line. A UTF-8 byte order mark and CRLF line ends are
// tolerated, blank lines skipped. An empty DeviceSecret means registered but
// not activated. Product keys and device names are checked against the
// rules of dialect d. Errors name the input and the line ("devices.csv:3:
// …") and never contain a secret.
func ParseDevicesCSV(r io.Reader, name string, d secrets.Dialect) ([]Device, error) {
	var out []Device
	seen := make(map[DeviceRef]int)
	err := parseCSV(r, name, []string{colProductKey, colDeviceName, colDeviceSecret}, func(line int, f map[string]string) error {
		dev := Device{ProductKey: f[colProductKey], DeviceName: f[colDeviceName]}
		if err := secrets.ValidateProductKey(d, dev.ProductKey); err != nil {
			return err
		}
		if err := secrets.ValidateDeviceName(d, dev.DeviceName); err != nil {
			return err
		}
		if s := f[colDeviceSecret]; s != "" {
			if err := checkSecretValue("DeviceSecret", s); err != nil {
				return err
			}
			dev.Secret = secrets.NewSecret(s)
		}
		ref := DeviceRef{dev.ProductKey, dev.DeviceName}
		if first, dup := seen[ref]; dup {
			return fmt.Errorf("device %s listed twice (first on line %d)", ref, first)
		}
		seen[ref] = line
		out = append(out, dev)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// ParseProductsCSV reads a product list with the header ProductKey,
// ProductSecret, with the same tolerances and error style as
// ParseDevicesCSV. Every product needs a non-empty ProductSecret.
func ParseProductsCSV(r io.Reader, name string, d secrets.Dialect) ([]Product, error) {
	var out []Product
	seen := make(map[string]int)
	err := parseCSV(r, name, []string{colProductKey, colProductSecret}, func(line int, f map[string]string) error {
		p := Product{ProductKey: f[colProductKey]}
		if err := secrets.ValidateProductKey(d, p.ProductKey); err != nil {
			return err
		}
		if err := checkSecretValue("ProductSecret", f[colProductSecret]); err != nil {
			return err
		}
		p.Secret = secrets.NewSecret(f[colProductSecret])
		if first, dup := seen[p.ProductKey]; dup {
			return fmt.Errorf("product %q listed twice (first on line %d)", p.ProductKey, first)
		}
		seen[p.ProductKey] = line
		out = append(out, p)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// LoadDevicesFile reads a device list file (see ParseDevicesCSV).
func LoadDevicesFile(path string, d secrets.Dialect) ([]Device, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("load devices: %w", err)
	}
	defer f.Close()
	devs, err := ParseDevicesCSV(f, path, d)
	if err != nil {
		return nil, fmt.Errorf("load devices: %w", err)
	}
	return devs, nil
}

// LoadProductsFile reads a product list file (see ParseProductsCSV).
func LoadProductsFile(path string, d secrets.Dialect) ([]Product, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("load products: %w", err)
	}
	defer f.Close()
	ps, err := ParseProductsCSV(f, path, d)
	if err != nil {
		return nil, fmt.Errorf("load products: %w", err)
	}
	return ps, nil
}

// parseCSV reads the header, checks that every required column is present
// exactly once, and calls row for every non-blank line with the required
// columns' values keyed by lower-case column name.
func parseCSV(r io.Reader, name string, required []string, row func(line int, fields map[string]string) error) error {
	cr := csv.NewReader(r)
	cr.FieldsPerRecord = 0 // every line must have as many fields as the header
	header, err := cr.Read()
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("%s:1: missing header (want %s)", name, headerList(required))
	}
	if err != nil {
		return csvError(name, err)
	}
	header[0] = strings.TrimPrefix(header[0], "\uFEFF")
	col := make(map[string]int)
	for i, h := range header {
		key := strings.ToLower(strings.TrimSpace(h))
		if key == "" {
			continue
		}
		if _, dup := col[key]; dup {
			return fmt.Errorf("%s:1: header names column %q twice", name, strings.TrimSpace(h))
		}
		col[key] = i
	}
	for _, want := range required {
		if _, ok := col[want]; !ok {
			return fmt.Errorf("%s:1: header lacks column %s (want %s)", name, canonicalColumn(want), headerList(required))
		}
	}
	for {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return csvError(name, err)
		}
		line, _ := cr.FieldPos(0)
		if allEmpty(rec) {
			continue
		}
		fields := make(map[string]string, len(required))
		for _, want := range required {
			fields[want] = rec[col[want]]
		}
		if err := row(line, fields); err != nil {
			return fmt.Errorf("%s:%d: %w", name, line, err)
		}
	}
}

func csvError(name string, err error) error {
	var pe *csv.ParseError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s:%d: %w", name, pe.Line, pe.Err)
	}
	return fmt.Errorf("%s: %w", name, err)
}

func allEmpty(rec []string) bool {
	for _, f := range rec {
		if strings.TrimSpace(f) != "" {
			return false
		}
	}
	return true
}

func canonicalColumn(lower string) string {
	switch lower {
	case colProductKey:
		return "ProductKey"
	case colDeviceName:
		return "DeviceName"
	case colDeviceSecret:
		return "DeviceSecret"
	case colProductSecret:
		return "ProductSecret"
	}
	return lower
}

func headerList(cols []string) string {
	names := make([]string, len(cols))
	for i, c := range cols {
		names[i] = canonicalColumn(c)
	}
	return strings.Join(names, ",")
}

// checkSecretValue checks a secret's shape without printing it.
func checkSecretValue(field, v string) error {
	if v == "" {
		return fmt.Errorf("%s is empty", field)
	}
	if len(v) > maxSecretLen {
		return fmt.Errorf("%s is %d bytes, at most %d allowed", field, len(v), maxSecretLen)
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; c <= ' ' || c >= 0x7f {
			return fmt.Errorf("%s: byte %d is whitespace, a control character or not ASCII", field, i+1)
		}
	}
	return nil
}

// FormatDevicesCSV writes devices in the form ParseDevicesCSV reads
// (header ProductKey,DeviceName,DeviceSecret). It reveals the secrets: it
// is meant for test fixtures and for exporting a simulator's state on
// purpose.
func FormatDevicesCSV(devs []Device) []byte {
	var b bytes.Buffer
	w := csv.NewWriter(&b)
	_ = w.Write([]string{"ProductKey", "DeviceName", "DeviceSecret"})
	for _, d := range devs {
		_ = w.Write([]string{d.ProductKey, d.DeviceName, d.Secret.Reveal()})
	}
	w.Flush()
	return b.Bytes()
}
