package config

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
	"strconv"
	"strings"
	"time"
)

// Value types with units, decoded from TOML strings (and, for sizes,
// integers).

// Duration is a time.Duration written as a string with a unit: "30s",
// "10m", "1h30m" (units ns, us, ms, s, m, h).
type Duration time.Duration

// String formats d like time.Duration.
func (d Duration) String() string { return time.Duration(d).String() }

// Std returns d as a time.Duration.
func (d Duration) Std() time.Duration { return time.Duration(d) }

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	s := string(b)
	if strings.TrimSpace(s) == "" {
		return errors.New(`empty duration (write "0s" for none)`)
	}
	v, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		if _, nerr := strconv.ParseFloat(strings.TrimSpace(s), 64); nerr == nil {
			return fmt.Errorf("invalid duration %s: missing unit (for example \"30s\" or \"10m\")", quoteValue(s))
		}
		return fmt.Errorf("invalid duration %s: want a number with a unit such as \"30s\", \"10m\", \"1h30m\"", quoteValue(s))
	}
	*d = Duration(v)
	return nil
}

func (d *Duration) decodeTOML(v any) error {
	s, ok := v.(string)
	if !ok {
		return fmt.Errorf("expected a duration string such as \"30s\", found %s", tomlTypeName(v))
	}
	return d.UnmarshalText([]byte(s))
}

// ByteSize is a size in bytes, written as an integer (bytes) or a string
// with a unit: "256KiB", "64MiB", "1GiB" (binary: KiB MiB GiB TiB;
// decimal: kB KB MB GB TB; or B).
type ByteSize int64

// Binary size units.
const (
	KiB ByteSize = 1 << (10 * (iota + 1))
	MiB
	GiB
	TiB
)

var sizeUnits = map[string]ByteSize{
	"": 1, "B": 1,
	"KiB": KiB, "MiB": MiB, "GiB": GiB, "TiB": TiB,
	"kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
}

// ParseByteSize parses a size: a whole number with an optional unit, as in
// "256KiB", "1GiB", "1500000" or "10MB". The empty string is 0.
func ParseByteSize(s string) (ByteSize, error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return 0, nil
	}
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	unit := strings.TrimSpace(t[i:])
	mult, ok := sizeUnits[unit]
	if i == 0 || !ok {
		return 0, fmt.Errorf("invalid size %s: want a whole number with a unit such as \"256KiB\", \"64MiB\", \"1GiB\" (units B, KiB, MiB, GiB, TiB, kB, MB, GB, TB)", quoteValue(s))
	}
	n, err := strconv.ParseInt(t[:i], 10, 64)
	if err != nil || n > math.MaxInt64/int64(mult) {
		return 0, fmt.Errorf("invalid size %s: too large", quoteValue(s))
	}
	return ByteSize(n) * mult, nil
}

// String formats b with the largest unit, binary or decimal, that divides
// it exactly, else in bytes: "256KiB", "1GiB", "10GB", "1000001B", "0".
func (b ByteSize) String() string {
	if b == 0 {
		return "0"
	}
	for _, u := range []struct {
		size ByteSize
		name string
	}{{TiB, "TiB"}, {1e12, "TB"}, {GiB, "GiB"}, {1e9, "GB"}, {MiB, "MiB"}, {1e6, "MB"}, {KiB, "KiB"}, {1e3, "kB"}} {
		if b%u.size == 0 {
			return strconv.FormatInt(int64(b/u.size), 10) + u.name
		}
	}
	return strconv.FormatInt(int64(b), 10) + "B"
}

// MarshalText implements encoding.TextMarshaler.
func (b ByteSize) MarshalText() ([]byte, error) { return []byte(b.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler (see ParseByteSize).
func (b *ByteSize) UnmarshalText(text []byte) error {
	v, err := ParseByteSize(string(text))
	if err != nil {
		return err
	}
	*b = v
	return nil
}

func (b *ByteSize) decodeTOML(v any) error {
	switch x := v.(type) {
	case int64:
		if x < 0 {
			return fmt.Errorf("invalid size %d: must not be negative", x)
		}
		*b = ByteSize(x)
		return nil
	case string:
		return b.UnmarshalText([]byte(x))
	}
	return fmt.Errorf("expected a size such as \"256KiB\" or an integer number of bytes, found %s", tomlTypeName(v))
}

// FileMode is a permission mode written as an octal string: "0660".
type FileMode fs.FileMode

// String formats m as four octal digits.
func (m FileMode) String() string { return fmt.Sprintf("%04o", uint32(m)) }

// MarshalText implements encoding.TextMarshaler.
func (m FileMode) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler: octal permission bits
// (at most 0777), with or without a leading "0" or "0o".
func (m *FileMode) UnmarshalText(text []byte) error {
	s := strings.TrimPrefix(strings.TrimSpace(string(text)), "0o")
	v, err := strconv.ParseUint(s, 8, 32)
	if err != nil || s == "" || v > 0o777 {
		return fmt.Errorf("invalid file mode %s: want octal permission bits such as \"0660\"", quoteValue(string(text)))
	}
	*m = FileMode(v)
	return nil
}

func (m *FileMode) decodeTOML(v any) error {
	s, ok := v.(string)
	if !ok {
		return fmt.Errorf("expected an octal mode string such as \"0660\", found %s", tomlTypeName(v))
	}
	return m.UnmarshalText([]byte(s))
}
