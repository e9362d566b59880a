package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/edgegw/edgegw/gateway/bench"
)

// 'edgegw man' and 'edgegw completion' are made from what the user sees:
// the command table, and each command's -h output (the flag package's
// PrintDefaults of the very flag sets the commands parse). build.sh runs
// them to put edgegw(8), edgegw.toml(5) and the completions in the packages.

func init() {
	commands["man"] = runMan
	commands["completion"] = runCompletion
}

// flagDoc is one flag as -h prints it.
type flagDoc struct {
	name, arg, usage string
}

// cmdDoc is one command (or ctl subcommand) as -h describes it.
type cmdDoc struct {
	path     string   // "run", "ctl device add"
	about    string   // one line from the command table
	preamble []string // -h text before the flags
	flags    []flagDoc
	subs     []string // words that may follow (ctl's commands, bench's scenarios)
}

// helpOf runs 'edgegw ARGS… -h' in-process and returns what it printed.
func helpOf(args ...string) (string, error) {
	var out bytes.Buffer
	if code := run(append(args, "-h"), strings.NewReader(""), &out, &out); code != 0 {
		return "", fmt.Errorf("edgegw %s -h: exit %d: %s", strings.Join(args, " "), code, out.String())
	}
	return out.String(), nil
}

// parseHelp splits -h output into the text before the flags and the flags,
// in the format of flag.PrintDefaults: "  -name type" then "    \tusage", or
// "  -x\tusage" for a one-letter flag without a value.
func parseHelp(text string) (preamble []string, flags []flagDoc) {
	for _, line := range strings.Split(strings.TrimRight(text, "\n"), "\n") {
		switch {
		case strings.HasPrefix(line, "  -") && len(line) > 3 && line[3] != ' ':
			head, usage, _ := strings.Cut(line[3:], "\t")
			name, arg, _ := strings.Cut(head, " ")
			flags = append(flags, flagDoc{name: name, arg: arg, usage: usage})
		case strings.HasPrefix(line, "    \t") && len(flags) > 0:
			f := &flags[len(flags)-1]
			f.usage = strings.TrimSpace(f.usage + "\n" + line[5:])
		case len(flags) == 0:
			if strings.HasPrefix(line, "Usage of ") {
				continue
			}
			preamble = append(preamble, line)
		}
	}
	for len(preamble) > 0 && strings.TrimSpace(preamble[len(preamble)-1]) == "" {
		preamble = preamble[:len(preamble)-1]
	}
	return preamble, flags
}

// ctlCommands lists ctl's commands ("status", "device add", …) from the
// Commands section of its usage text.
func ctlCommands() []string {
	var out []string
	in := false
	word := regexp.MustCompile(`^[a-z]+$`)
	for _, line := range strings.Split(ctlUsage, "\n") {
		switch {
		case line == "Commands:":
			in = true
			continue
		case !in:
			continue
		case line == "":
			return out
		case !strings.HasPrefix(line, "  ") || strings.HasPrefix(line, "   "):
			continue // a continuation line
		}
		head, _, _ := strings.Cut(strings.TrimSpace(line), "  ")
		var path []string
		for _, w := range strings.Fields(head) {
			if !word.MatchString(w) || len(path) == 2 {
				break
			}
			path = append(path, w)
		}
		if len(path) > 0 {
			out = append(out, strings.Join(path, " "))
		}
	}
	return out
}

// collectDocs asks every command for its -h.
func collectDocs() ([]cmdDoc, error) {
	var docs []cmdDoc
	add := func(path, about string, subs []string, args ...string) error {
		d := cmdDoc{path: path, about: about, subs: subs}
		if args != nil {
			text, err := helpOf(args...)
			if err != nil {
				return err
			}
			d.preamble, d.flags = parseHelp(text)
		}
		docs = append(docs, d)
		return nil
	}
	for _, c := range commandTable {
		if c.hidden {
			continue
		}
		var err error
		switch c.name {
		case "bench":
			var names []string
			for _, s := range bench.Scenarios() {
				names = append(names, s.Name)
			}
			err = add(c.name, c.about, names, "bench", names[0])
		case "ctl":
			paths := ctlCommands()
			var top []string
			sub := map[string][]string{}
			for _, p := range paths {
				first, second, _ := strings.Cut(p, " ")
				if len(sub[first]) == 0 && !contains(top, first) {
					top = append(top, first)
				}
				if second != "" {
					sub[first] = append(sub[first], second)
				}
			}
			if err = add(c.name, c.about, append(top, "help"), "ctl"); err != nil {
				return nil, err
			}
			for _, first := range top {
				if len(sub[first]) > 0 {
					docs = append(docs, cmdDoc{path: "ctl " + first, subs: sub[first]})
				}
			}
			for _, p := range paths {
				if err = add("ctl "+p, "", nil, append([]string{"ctl"}, strings.Fields(p)...)...); err != nil {
					return nil, err
				}
			}
		default:
			err = add(c.name, c.about, nil, c.name)
		}
		if err != nil {
			return nil, err
		}
	}
	return docs, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// runMan implements the hidden 'edgegw man -section 8|5'.
func runMan(_ context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("edgegw man", flag.ContinueOnError)
	fs.SetOutput(stderr)
	section := fs.Int("section", 8, "manual `section`: 8 is edgegw(8), 5 is edgegw.toml(5)")
	example := fs.String("example", "", "the example configuration `file` edgegw.toml(5) is made from (packaging/edgegw.toml)")
	dir := fs.String("o", "", "write the page into this `directory` (as edgegw.8 or edgegw.toml.5) instead of standard output")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	date := ""
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		sec, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return fmt.Errorf("SOURCE_DATE_EPOCH=%q: %v", s, err)
		}
		date = time.Unix(sec, 0).UTC().Format("2006-01-02")
	}
	var page, name string
	switch *section {
	case 8:
		docs, err := collectDocs()
		if err != nil {
			return err
		}
		page, name = manPage8(docs, date), "edgegw.8"
	case 5:
		if *example == "" {
			return errors.New("-section 5 needs -example packaging/edgegw.toml")
		}
		src, err := os.ReadFile(*example)
		if err != nil {
			return err
		}
		page, name = manPage5(string(src), date), "edgegw.toml.5"
	default:
		return fmt.Errorf("-section %d: want 8 or 5", *section)
	}
	if *dir == "" {
		_, err := io.WriteString(stdout, page)
		return err
	}
	return os.WriteFile(filepath.Join(*dir, name), []byte(page), 0o644)
}

var roffReplacer = strings.NewReplacer(`\`, `\e`, "-", `\-`, "—", `\(em`, "–", `\(en`, "…", `.\|.\|.`, "×", `\(mu`, "÷", `\(di`, "'", `\(aq`, `"`, `\(dq`)

// roffEscape makes text safe inside a roff line.
func roffEscape(s string) string { return roffReplacer.Replace(s) }

// roffText escapes a paragraph; lines never start with a control character.
func roffText(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		l = roffEscape(strings.TrimSpace(l))
		if strings.HasPrefix(l, ".") {
			l = `\&` + l
		}
		lines[i] = l
	}
	return strings.Join(lines, "\n")
}

// roffLiteral is a no-fill block of -h text.
func roffLiteral(b *strings.Builder, lines []string) {
	b.WriteString(".PP\n.nf\n.RS 4\n")
	for _, l := range lines {
		if strings.TrimSpace(l) == "" {
			b.WriteString(".sp\n")
			continue
		}
		b.WriteString(`\&` + roffEscape(strings.ReplaceAll(l, "\t", "    ")) + "\n")
	}
	b.WriteString(".RE\n.fi\n")
}

func manPage8(docs []cmdDoc, date string) string {
	var b strings.Builder
	fmt.Fprintf(&b, ".\\\" Generated by 'edgegw man -section 8' from the command table and each command's -h; do not edit.\n")
	fmt.Fprintf(&b, ".TH EDGEGW 8 %q \"edgegw %s\" \"System Manager's Manual\"\n", date, Version())
	fmt.Fprintf(&b, ".SH NAME\nedgegw \\- %s\n", roffEscape(summary))
	b.WriteString(".SH SYNOPSIS\n")
	for _, c := range commandTable {
		if c.hidden {
			continue
		}
		fmt.Fprintf(&b, ".B edgegw %s\n", roffEscape(c.name))
		if c.args != "" {
			fmt.Fprintf(&b, "%s\n", roffText(c.args))
		}
		b.WriteString(".br\n")
	}
	b.WriteString(`.SH DESCRIPTION
.B edgegw
runs a local MQTT broker for field devices, keeps one signed MQTT session per
device to a cloud IoT platform (Alibaba Cloud IoT Platform or EnOS IoT Hub),
stores messages durably while the cloud is unreachable and keeps device
identities in an encrypted registry.
.PP
The packaged daemon runs as the systemd service
.B edgegw.service
(user edgegw, state in
.IR /var/lib/edgegw ),
configured by
.IR /etc/edgegw/edgegw.toml ,
see
.BR edgegw.toml (5).
The other commands are tools: the admin client
.BR "edgegw ctl" ,
a credential calculator, a cloud simulator, a demo and benchmarks.
Each command takes its flags after its name; run
.B edgegw
.I command
.B \-h
for them.
.SH COMMANDS
`)
	for _, d := range docs {
		fmt.Fprintf(&b, ".SS \"edgegw %s\"\n", roffEscape(d.path))
		if d.about != "" {
			fmt.Fprintf(&b, "%s.\n", roffText(d.about))
		}
		if len(d.subs) > 0 {
			fmt.Fprintf(&b, ".PP\nCommands: %s.\n", roffText(strings.Join(d.subs, ", ")))
		}
		if len(d.preamble) > 0 {
			roffLiteral(&b, d.preamble)
		}
		for _, f := range d.flags {
			if f.arg != "" {
				fmt.Fprintf(&b, ".TP\n.BI \"\\-%s \" %s\n", roffEscape(f.name), roffEscape(f.arg))
			} else {
				fmt.Fprintf(&b, ".TP\n.B \\-%s\n", roffEscape(f.name))
			}
			fmt.Fprintf(&b, "%s\n", roffText(f.usage))
		}
	}
	b.WriteString(`.SH EXIT STATUS
0 on success, 1 on failure (for
.BR "edgegw ctl" :
the gateway refused; its code and message are printed), 2 on a usage error.
.B "edgegw health"
exits 1, never 2, when the daemon is not healthy.
.SH FILES
.TP
.I /etc/edgegw/edgegw.toml
the configuration, see
.BR edgegw.toml (5)
.TP
.I /var/lib/edgegw
state: the device registry, the spool and (unless systemd provides it) the registry key
.TP
.I /run/edgegw/admin.sock
the admin socket
.B "edgegw ctl"
uses
.SH SEE ALSO
.BR edgegw.toml (5),
.BR systemctl (1),
.BR journalctl (1)
`)
	return b.String()
}

// tomlLine splits an example line into key, value and comment; a key
// commented out ("# key = value  # comment") is reported with commented set.
func tomlLine(line string) (key, value, comment string, commented, ok bool) {
	s := line
	if strings.HasPrefix(s, "# ") {
		s, commented = s[2:], true
	}
	k, rest, found := strings.Cut(s, " = ")
	if !found || !regexp.MustCompile(`^[a-z_]+$`).MatchString(k) {
		return "", "", "", false, false
	}
	inStr := false
	for i, r := range rest {
		switch {
		case r == '"':
			inStr = !inStr
		case r == '#' && !inStr:
			return k, strings.TrimSpace(rest[:i]), strings.TrimSpace(rest[i+1:]), commented, true
		}
	}
	return k, strings.TrimSpace(rest), "", commented, true
}

func manPage5(src, date string) string {
	var b strings.Builder
	fmt.Fprintf(&b, ".\\\" Generated by 'edgegw man -section 5' from packaging/edgegw.toml; do not edit.\n")
	fmt.Fprintf(&b, ".TH EDGEGW.TOML 5 %q \"edgegw %s\" \"File Formats Manual\"\n", date, Version())
	b.WriteString(".SH NAME\nedgegw.toml \\- configuration of the edgegw edge gateway\n")
	b.WriteString(".SH SYNOPSIS\n.I /etc/edgegw/edgegw.toml\n.SH DESCRIPTION\n")
	var para []string
	item := false // para is a list item ("#   - …")
	flush := func() {
		if len(para) > 0 {
			macro := ".PP"
			if item {
				macro, para[0] = ".IP \\(bu 2", strings.TrimPrefix(para[0], "- ")
			}
			fmt.Fprintf(&b, "%s\n%s\n", macro, roffText(strings.Join(para, "\n")))
			para, item = nil, false
		}
	}
	table := regexp.MustCompile(`^(# )?(\[\[?([a-z_.]+)\]\]?)\s*(?:#\s*(.*))?$`)
	section := ""
	header := true
	sc := bufio.NewScanner(strings.NewReader(src))
	for sc.Scan() {
		line := sc.Text()
		if m := table.FindStringSubmatch(line); m != nil {
			flush()
			if header {
				b.WriteString(".SH KEYS\n")
				header = false
			}
			section = m[3]
			fmt.Fprintf(&b, ".SS \"%s\"\n", roffEscape(m[2]))
			if m[4] != "" {
				fmt.Fprintf(&b, "%s.\n", roffText(upperFirst(m[4])))
			}
			if m[1] != "" {
				b.WriteString("An optional table; the example has it commented out.\n")
			}
			continue
		}
		if key, value, comment, commented, ok := tomlLine(line); ok {
			flush()
			if header {
				b.WriteString(".SH KEYS\n.SS \"Top level\"\n")
				header = false
			}
			full := key
			if section != "" {
				full = section + "." + key
			}
			fmt.Fprintf(&b, ".TP\n.B %s\n", roffEscape(full))
			if commented {
				fmt.Fprintf(&b, "(example: %s)\n", roffText(value))
			} else {
				fmt.Fprintf(&b, "(default: %s)\n", roffText(value))
			}
			if comment != "" {
				fmt.Fprintf(&b, "%s\n", roffText(comment))
			}
			continue
		}
		switch {
		case line == "#" || strings.TrimSpace(line) == "":
			flush()
		case strings.HasPrefix(line, "#"):
			text := strings.TrimPrefix(strings.TrimPrefix(line, "#"), " ")
			if strings.HasPrefix(strings.TrimSpace(text), "- ") {
				flush()
				para, item = append(para, strings.TrimSpace(text)), true
				continue
			}
			if item && !strings.HasPrefix(text, " ") {
				flush() // the list ended
			}
			para = append(para, text)
		}
	}
	flush()
	b.WriteString(`.SH FILES
.TP
.I /etc/edgegw/edgegw.toml
the configuration the packaged service reads
.TP
.I /usr/share/doc/edgegw
the README
.SH SEE ALSO
.BR edgegw (8)
`)
	return b.String()
}

func upperFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}
