package main

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// rawControl returns the first control byte (other than a line's own
// newline and tab) or invalid UTF-8 in s, and whether there is one.
func rawControl(s string) (string, bool) {
	for i, r := range s {
		switch {
		case r == utf8.RuneError && !strings.HasPrefix(s[i:], "\uFFFD"):
			return s[max(0, i-20):min(len(s), i+20)], true
		case r < 0x20 && r != '\n' && r != '\t', r == 0x7f, r >= 0x80 && r < 0xa0:
			return s[max(0, i-20):min(len(s), i+20)], true
		}
	}
	return "", false
}

// TestCtlImportControlBytes: CSV fields holding NUL, 0xFF, an escape
// sequence or a newline reach the terminal escaped, whoever reports the
// row (ctl itself, or the gateway in its reply), in the text and the JSON
// output, and no printed line comes from inside a field.
func TestCtlImportControlBytes(t *testing.T) {
	r := newCtlRig(t)
	csvText := "ProductKey,DeviceName,DeviceSecret\n" +
		ctlPK + ",nul-\x00-name,secret-0001\n" + // line 2
		ctlPK + ",ff-\xff-name,secret-0002\n" + // 3
		ctlPK + ",\"nl-\nname\",secret-0003\n" + // 4-5: a quoted newline
		ctlPK + ",esc-\x1b[2J-name,secret-0004\n" + // 6
		ctlPK + ",nul-\x00-name,secret-0001\n" + // 7: listed twice (ctl's own report)
		"pk\x07bell,dev-0001,secret-0005\n" // 8
	path := writeFile(t, "devices.csv", csvText)
	code, out, errOut := r.ctl("", "import", path)
	if code != 1 {
		t.Fatalf("import: exit %d\n%s\n%s", code, out, errOut)
	}
	for _, s := range []string{out, errOut} {
		if ctx, bad := rawControl(s); bad {
			t.Errorf("import output holds a raw control byte or invalid UTF-8 near %q:\n%q", ctx, s)
		}
	}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if !strings.HasPrefix(line, path) && !strings.HasPrefix(line, "products added") {
			t.Errorf("output line %q does not start a report (a field's newline printed raw?)", line)
		}
	}
	for _, want := range []string{`nul-\x00-name`, `esc-\x1b[2J-name`, `nl-\nname`} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks the escaped field %q:\n%s", want, out)
		}
	}
	code, out, errOut = r.ctl("", "-json", "import", path)
	if code != 1 {
		t.Fatalf("import -json: exit %d\n%s\n%s", code, out, errOut)
	}
	if ctx, bad := rawControl(out + errOut); bad {
		t.Errorf("import -json output holds a raw control byte near %q", ctx)
	}
}
