package logsafe

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestClipN(t *testing.T) {
	tests := []struct {
		in   string
		n    int
		want string
	}{
		{"pump-0001", 16, "pump-0001"},
		{"温度计-1", 16, "温度计-1"},
		{"a\nb", 16, `a\nb`},
		{"nul\x00ff\xff", 16, `nul\x00ff\xff`},
		{"esc\x1b[31mred", 32, `esc\x1b[31mred`},
		{strings.Repeat("x", 20), 8, "xxxxxxxx…"},
		{"温度计", 4, "温…"}, // never cuts inside a rune
		{`quote"back\`, 16, `quote"back\`},
	}
	for _, tc := range tests {
		if got := ClipN(tc.in, tc.n); got != tc.want {
			t.Errorf("ClipN(%q, %d) = %q, want %q", tc.in, tc.n, got, tc.want)
		}
	}
}

func FuzzClip(f *testing.F) {
	for _, s := range []string{"", "abc", "a\nb", "\xff\xfe", strings.Repeat("é", 100), "\u202e"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := Clip(s)
		if !utf8.ValidString(got) {
			t.Fatalf("Clip(%q) = %q: invalid UTF-8", s, got)
		}
		for _, c := range []byte(got) {
			if c < 0x20 || c == 0x7f {
				t.Fatalf("Clip(%q) = %q: control byte 0x%02x", s, got, c)
			}
		}
		// Escaping can at most quadruple a byte (\xNN); plus the ellipsis.
		if len(got) > 4*Max+len("…") {
			t.Fatalf("Clip(%q): %d bytes", s, len(got))
		}
	})
}
