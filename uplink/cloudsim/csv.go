package cloudsim

import (
	"bytes"
	"encoding/csv"
	"fmt"
	"io"
	"os"

	"github.com/edgegw/edgegw/internal/consolecsv"
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

// ParseDevicesCSV reads a device list in the consoles' batch-export form
// (see internal/consolecsv): a required header naming the columns
// ProductKey, DeviceName and DeviceSecret (any order, case-insensitive,
// other columns ignored), then one device per line. A UTF-8 byte order
// mark and CRLF line ends are tolerated, blank lines skipped. It stops at
// the first bad line. An empty DeviceSecret means registered but
// not activated. Product keys and device names are checked against the
// rules of dialect d. Errors name the input and the line ("devices.csv:3:
// …") and never contain a secret.
func ParseDevicesCSV(r io.Reader, name string, d secrets.Dialect) ([]Device, error) {
	var out []Device
	seen := make(map[DeviceRef]int)
	err := consolecsv.Parse(r, name, consolecsv.DeviceColumns, func(row consolecsv.Row) error {
		dev := Device{ProductKey: row.Fields[0], DeviceName: row.Fields[1]}
		if err := secrets.ValidateProductKey(d, dev.ProductKey); err != nil {
			return err
		}
		if err := secrets.ValidateDeviceName(d, dev.DeviceName); err != nil {
			return err
		}
		if s := row.Fields[2]; s != "" {
			if err := consolecsv.CheckSecret(consolecsv.DeviceSecret, s); err != nil {
				return err
			}
			dev.Secret = secrets.NewSecret(s)
		}
		ref := DeviceRef{dev.ProductKey, dev.DeviceName}
		if first, dup := seen[ref]; dup {
			return fmt.Errorf("device %s listed twice (first on line %d)", ref, first)
		}
		seen[ref] = row.Line
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
	err := consolecsv.Parse(r, name, consolecsv.ProductColumns, func(row consolecsv.Row) error {
		p := Product{ProductKey: row.Fields[0]}
		if err := secrets.ValidateProductKey(d, p.ProductKey); err != nil {
			return err
		}
		if err := consolecsv.CheckSecret(consolecsv.ProductSecret, row.Fields[1]); err != nil {
			return err
		}
		p.Secret = secrets.NewSecret(row.Fields[1])
		if first, dup := seen[p.ProductKey]; dup {
			return fmt.Errorf("product %q listed twice (first on line %d)", p.ProductKey, first)
		}
		seen[p.ProductKey] = row.Line
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

// checkSecretValue checks a secret's shape without printing it (the
// console CSV rules, which AddDevice and AddProduct apply too).
func checkSecretValue(field, v string) error { return consolecsv.CheckSecret(field, v) }
