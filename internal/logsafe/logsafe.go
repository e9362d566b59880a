// Package logsafe makes client-supplied text safe to put in a log line or
// on a terminal: short, valid UTF-8, without control bytes.
package logsafe

import (
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Max is how many bytes of a client-supplied field Clip keeps by default.
const Max = 128

// Clip returns s cut to at most Max bytes (on a rune boundary, marked with
// "…"), with control characters and invalid UTF-8 escaped Go-style
// (\n, \x00, \ufffd…). Printable text, including non-ASCII, is unchanged,
// so the common case costs one scan and no allocation.
func Clip(s string) string { return ClipN(s, Max) }

// ClipN is Clip with a limit of n bytes.
func ClipN(s string, n int) string {
	if len(s) <= n && clean(s) {
		return s
	}
	cut := len(s) > n
	if cut {
		i := n
		for i > 0 && !utf8.RuneStart(s[i]) {
			i--
		}
		s = s[:i]
	}
	if !clean(s) {
		q := strconv.Quote(s)
		s = q[1 : len(q)-1]
		s = strings.ReplaceAll(s, `\"`, `"`)
		s = strings.ReplaceAll(s, `\\`, `\`)
	}
	if cut {
		s += "…"
	}
	return s
}

func clean(s string) bool {
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c < 0x20 || c == 0x7f {
				return false
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 || !unicode.IsPrint(r) && !unicode.IsSpace(r) {
			return false
		}
		i += size
	}
	return true
}
