package config

import (
	"testing"

	"github.com/BurntSushi/toml"
)

// TestLineFinder checks the key positions against hand-counted lines.
func TestLineFinder(t *testing.T) {
	doc := `# comment
top = 1
s = """
multi
line = 5
"""
[a]
b = 2
c.d = 3
e = { f = 4, g = [
  1, 2] }

[[arr]]
x = 1

[[arr]]
y = 2

[[arr]]
x = 3
[arr.sub]
z = 4
[[arr]]
x = 5
`
	lf := newLineFinder(doc)
	tests := []struct {
		path []string
		occ  int
		want int
	}{
		{[]string{"top"}, 0, 2},
		{[]string{"s"}, 0, 3},
		{[]string{"line"}, 0, 0}, // inside a string: not a key
		{[]string{"a"}, 0, 7},
		{[]string{"a", "b"}, 0, 8},
		{[]string{"a", "c"}, 0, 9}, // implicit table: its first key
		{[]string{"a", "c", "d"}, 0, 9},
		{[]string{"a", "e"}, 0, 10},
		{[]string{"a", "e", "f"}, 0, 10},
		{[]string{"a", "e", "g"}, 0, 10},
		{[]string{"arr"}, 0, 13},
		{[]string{"arr"}, 1, 16},
		{[]string{"arr"}, 3, 23},
		{[]string{"arr", "x"}, 0, 14},
		{[]string{"arr", "x"}, 1, 20},
		{[]string{"arr", "x"}, 2, 24},
		{[]string{"arr", "y"}, 0, 17},
		{[]string{"arr", "sub", "z"}, 0, 22},
		{[]string{"missing"}, 0, 0},
	}
	for _, tt := range tests {
		if got := lf.line(locator{path: tt.path, occ: tt.occ}); got != tt.want {
			t.Errorf("line(%v, occurrence %d) = %d, want %d", tt.path, tt.occ, got, tt.want)
		}
	}
	// "[[" lines inside a multi-line string or array are not cuts.
	tricky := "[[arr]]\nx = 1\ns = \"\"\"\n[[arr]]\nx = 99\n\"\"\"\nt = [\n[[1]],\n]\n[[arr]]\nx = 2\n"
	lf = newLineFinder(tricky)
	for occ, want := range []int{2, 11} {
		if got := lf.line(locator{path: toml.Key{"arr", "x"}, occ: occ}); got != want {
			t.Errorf("tricky: line(arr.x, occurrence %d) = %d, want %d", occ, got, want)
		}
	}
	if got := newLineFinder("a = [").line(locator{path: toml.Key{"a"}}); got != 0 {
		t.Errorf("line in an invalid document = %d, want 0", got)
	}
}

func TestParentKey(t *testing.T) {
	for in, want := range map[string]string{
		"broker.admin[1].user": "broker.admin[1]",
		"broker.admin[1]":      "broker.admin",
		"broker.admin":         "broker",
		"broker":               "",
		`a."b.c"`:              "a",
		`"x.y"`:                "",
		`a."q\"."`:             "a",
	} {
		if got := parentKey(in); got != want {
			t.Errorf("parentKey(%q) = %q, want %q", in, got, want)
		}
	}
}
