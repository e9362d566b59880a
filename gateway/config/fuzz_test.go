package config

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzParseConfig feeds arbitrary documents to Parse. It must never
// panic; an accepted configuration must validate and survive a round trip
// through the TOML encoder; every error must be one line, carry the file
// name and a line inside the document, and an unknown key's line must be
// one that names it.
func FuzzParseConfig(f *testing.F) {
	seeds, err := filepath.Glob("testdata/*.toml")
	if err != nil {
		f.Fatal(err)
	}
	seeds = append(seeds, examplePath)
	for _, path := range seeds {
		data, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	for _, doc := range []string{
		"",
		"\ufeffstate_dir = \"/x\"\r\n",
		"broker.max_clients = 7\ncloud.keepalive = \"60s\"\n",
		"[broker]\nadmin = [{ user = \"a\", password_file = \"/p\" }, { user = 5 }]\n",
		"[[broker.admin]]\nuser = \"a\"\n[[broker.admin]]\nx = 1\n[[broker.admin]]\nx = 2\n",
		"a = \"\"\"\nb = 1\n\"\"\"\n[a]\n",
		"[cloud]\ndevice_rate = nan\nmax_payload = \"9999999TiB\"\n",
		"[spool]\nbudget = -1\nttl = 5\n",
	} {
		f.Add([]byte(doc))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse(bytes.NewReader(data), "fuzz.toml")
		if err == nil {
			if verr := cfg.Validate(); verr != nil {
				t.Fatalf("Parse accepted a config that Validate rejects: %v", verr)
			}
			roundTrip(t, cfg)
			return
		}
		if cfg != nil {
			t.Fatalf("Parse returned a config with error %v", err)
		}
		text := string(data)
		lines := strings.Split(stripBOM(text), "\n")
		errs := configErrors(t, err)
		if len(errs) == 0 {
			t.Fatalf("error %q holds no *Error", err)
		}
		for _, ce := range errs {
			msg := ce.Error()
			if strings.ContainsAny(msg, "\n\r") {
				t.Fatalf("error spans lines: %q", msg)
			}
			if ce.File != "fuzz.toml" || !strings.HasPrefix(msg, "fuzz.toml") {
				t.Fatalf("error does not name the file: %q", msg)
			}
			if ce.Line < 0 || ce.Line > len(lines) {
				t.Fatalf("error line %d outside the document's %d lines: %q", ce.Line, len(lines), msg)
			}
			// An unknown bare key outside arrays: its line names it. (The
			// parser files an empty key's position under its table, so
			// documents with one are left out.)
			if !strings.HasPrefix(ce.Msg, "unknown key") || strings.ContainsAny(ce.Key, `"]`) ||
				strings.Contains(text, `""`) || strings.Contains(text, "''") {
				continue
			}
			name := ce.Key[strings.LastIndexByte(ce.Key, '.')+1:]
			if ce.Line == 0 || !strings.Contains(lines[ce.Line-1], name) {
				t.Fatalf("unknown key %s reported at line %d, which does not name it:\n%s", ce.Key, ce.Line, text)
			}
		}
	})
}
