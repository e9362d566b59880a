package config

import (
	"testing"
	"time"
)

func TestByteSize(t *testing.T) {
	good := []struct {
		in   string
		want ByteSize
		str  string
	}{
		{"", 0, "0"},
		{"0", 0, "0"},
		{"1024", KiB, "1KiB"},
		{"1000", 1000, "1kB"},
		{"256KiB", 256 * KiB, "256KiB"},
		{" 64 MiB ", 64 * MiB, "64MiB"},
		{"1GiB", GiB, "1GiB"},
		{"3TiB", 3 * TiB, "3TiB"},
		{"1536MiB", 1536 * MiB, "1536MiB"},
		{"10kB", 10_000, "10kB"},
		{"10KB", 10_000, "10kB"},
		{"5MB", 5_000_000, "5MB"},
		{"2GB", 2_000_000_000, "2GB"},
		{"1TB", 1_000_000_000_000, "1TB"},
		{"1000001", 1_000_001, "1000001B"},
		{"7B", 7, "7B"},
		{"8388607TiB", 8388607 * TiB, "8388607TiB"},
	}
	for _, tt := range good {
		got, err := ParseByteSize(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("ParseByteSize(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
			continue
		}
		if got.String() != tt.str {
			t.Errorf("ByteSize(%d).String() = %q, want %q", got, got.String(), tt.str)
		}
		var back ByteSize
		if err := back.UnmarshalText([]byte(got.String())); err != nil || back != got {
			t.Errorf("UnmarshalText(%q) = %d, %v; want %d", got.String(), back, err, got)
		}
	}
	for _, in := range []string{"KiB", "1.5GiB", "-1", "1 kib", "1K", "1Gb", "1 2", "9223372036854775808", "8388608TiB", "0x10", "1e3"} {
		if got, err := ParseByteSize(in); err == nil {
			t.Errorf("ParseByteSize(%q) = %d, want an error", in, got)
		}
	}
}

func TestDurationAndFileMode(t *testing.T) {
	var d Duration
	if err := d.UnmarshalText([]byte("1h30m")); err != nil || d != Duration(90*time.Minute) || d.String() != "1h30m0s" {
		t.Errorf("Duration 1h30m = %v, %v", d, err)
	}
	for _, in := range []string{"", " ", "30", "ten seconds", "1d"} {
		if err := d.UnmarshalText([]byte(in)); err == nil {
			t.Errorf("Duration(%q): no error", in)
		}
	}
	var m FileMode
	for in, want := range map[string]FileMode{"0660": 0o660, "660": 0o660, "0o600": 0o600, "0777": 0o777} {
		if err := m.UnmarshalText([]byte(in)); err != nil || m != want {
			t.Errorf("FileMode(%q) = %v, %v; want %v", in, m, err, want)
		}
	}
	if m = 0o640; m.String() != "0640" {
		t.Errorf("FileMode(0o640).String() = %q", m.String())
	}
	for _, in := range []string{"", "0o", "rw-rw----", "0888", "01000", "-1"} {
		if err := m.UnmarshalText([]byte(in)); err == nil {
			t.Errorf("FileMode(%q): no error", in)
		}
	}
}
