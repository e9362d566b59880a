package main

import (
	"bytes"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// declaredFlags scans Go source files for flag definitions (fs.String("name",
// …), fs.BoolVar(&v, "name", …), addSecretFlags(fs, "name", …)) and returns
// the flag names — read from the code, not from -h, so the man page and the
// completions cannot drift from the flags that really exist.
func declaredFlags(t *testing.T, files ...string) []string {
	t.Helper()
	seen := map[string]bool{}
	fset := token.NewFileSet()
	for _, file := range files {
		f, err := parser.ParseFile(fset, file, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			lit := func(i int) string {
				if i >= len(call.Args) {
					return ""
				}
				b, ok := call.Args[i].(*ast.BasicLit)
				if !ok || b.Kind != token.STRING {
					return ""
				}
				s, _ := strconv.Unquote(b.Value)
				return s
			}
			switch fn := call.Fun.(type) {
			case *ast.Ident:
				if fn.Name == "addSecretFlags" {
					if name := lit(1); name != "" {
						seen[name], seen[name+"-file"] = true, true
					}
				}
			case *ast.SelectorExpr:
				if x, ok := fn.X.(*ast.Ident); !ok || x.Name != "fs" {
					return true
				}
				switch fn.Sel.Name {
				case "String", "Int", "Int64", "Uint", "Uint64", "Bool", "Duration", "Float64", "Func", "BoolFunc":
					if name := lit(0); name != "" {
						seen[name] = true
					}
				case "StringVar", "IntVar", "Int64Var", "UintVar", "Uint64Var", "BoolVar", "DurationVar", "Float64Var", "Var", "TextVar":
					if name := lit(1); name != "" {
						seen[name] = true
					}
				}
			}
			return true
		})
	}
	var names []string
	for n := range seen {
		names = append(names, n)
	}
	sort.Strings(names)
	if len(names) < 20 {
		t.Fatalf("found only %d flags in %v; the scan is broken", len(names), files)
	}
	return names
}

func flagSources(t *testing.T) []string {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	var src []string
	for _, f := range files {
		// man and completion are hidden packaging tools, not documented.
		if !strings.HasSuffix(f, "_test.go") && f != "man.go" && f != "completion.go" {
			src = append(src, f)
		}
	}
	return append(src, "../../uplink/cloudsim/main.go")
}

func runOut(t *testing.T, args ...string) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	if code := run(args, nil, &stdout, &stderr); code != 0 {
		t.Fatalf("edgegw %s: exit %d\n%s", strings.Join(args, " "), code, stderr.String())
	}
	return stdout.String()
}

// Every subcommand and every flag the code declares is in edgegw(8).
func TestManPageListsEveryCommandAndFlag(t *testing.T) {
	page := runOut(t, "man", "-section", "8")
	if !strings.Contains(page, "\n.TH EDGEGW 8 ") {
		t.Fatalf("not a roff page for section 8:\n%.200s", page)
	}
	hidden := map[string]bool{}
	for _, c := range commandTable {
		hidden[c.name] = c.hidden
	}
	for name := range commands {
		if !hidden[name] && !strings.Contains(page, `.SS "edgegw `+name) {
			t.Errorf("edgegw(8) lacks the command %q", name)
		}
	}
	for _, name := range []string{"sign", "version"} {
		if !strings.Contains(page, `.SS "edgegw `+name) {
			t.Errorf("edgegw(8) lacks the command %q", name)
		}
	}
	for _, path := range ctlCommands() {
		if !strings.Contains(page, `.SS "edgegw ctl `+path+`"`) {
			t.Errorf("edgegw(8) lacks ctl %s", path)
		}
	}
	for _, f := range declaredFlags(t, flagSources(t)...) {
		e := roffEscape(f)
		if !strings.Contains(page, ".B \\-"+e+"\n") && !strings.Contains(page, `.BI "\-`+e+` "`) {
			t.Errorf("edgegw(8) lacks the flag -%s", f)
		}
	}
	// Every command the dispatcher knows is in the table (and so in the
	// usage, the man page and the completions), and the other way round.
	inTable := map[string]bool{}
	for _, c := range commandTable {
		inTable[c.name] = true
	}
	for name := range commands {
		if !inTable[name] {
			t.Errorf("command %q is missing from commandTable", name)
		}
	}
	for _, c := range commandTable {
		if _, ok := commands[c.name]; !ok && c.name != "sign" && c.name != "version" {
			t.Errorf("commandTable lists %q, which run does not dispatch", c.name)
		}
	}
	// The ctl commands parsed from its usage are real commands.
	if len(ctlCommands()) < 10 {
		t.Fatalf("ctlCommands = %v", ctlCommands())
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"ctl", "device", "nonsense", "-h"}, nil, &stdout, &stderr); code == 0 {
		t.Fatal("ctl device nonsense -h succeeded; the help probe cannot tell real commands")
	}
	checkRoff(t, "edgegw.8", page)
}

// Every key of packaging/edgegw.toml, set or commented out, is in edgegw.toml(5).
func TestManPageConfigListsEveryKey(t *testing.T) {
	example := "../../packaging/edgegw.toml"
	page := runOut(t, "man", "-section", "5", "-example", example)
	if !strings.Contains(page, "\n.TH EDGEGW.TOML 5 ") {
		t.Fatalf("not a roff page for section 5:\n%.200s", page)
	}
	src, err := os.ReadFile(example)
	if err != nil {
		t.Fatal(err)
	}
	key := regexp.MustCompile(`^(?:# )?([a-z_]+) = `)
	table := regexp.MustCompile(`^(?:# )?\[\[?([a-z_.]+)\]\]?`)
	n := 0
	section := ""
	for _, line := range strings.Split(string(src), "\n") {
		if m := table.FindStringSubmatch(line); m != nil {
			section = m[1]
			if !strings.Contains(page, `.SS "[`) || !strings.Contains(page, roffEscape(section)) {
				t.Errorf("edgegw.toml(5) lacks the table [%s]", section)
			}
			continue
		}
		if m := key.FindStringSubmatch(line); m != nil {
			n++
			full := m[1]
			if section != "" {
				full = section + "." + m[1]
			}
			if !strings.Contains(page, `.B `+roffEscape(full)) {
				t.Errorf("edgegw.toml(5) lacks the key %s", full)
			}
		}
	}
	if n < 40 {
		t.Fatalf("found only %d keys in %s", n, example)
	}
	checkRoff(t, "edgegw.toml.5", page)
}

// checkRoff renders a page with man-db the way lintian does and fails on
// any warning.
func checkRoff(t *testing.T, name, page string) {
	t.Helper()
	if _, err := exec.LookPath("man"); err != nil {
		if os.Getenv("EDGEGW_REQUIRE_PEERS") != "" {
			t.Fatalf("man (man-db) not installed; %s not rendered", name)
		}
		t.Logf("man not installed; %s not rendered", name)
		return
	}
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(page), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", path)
	cmd.Env = append(os.Environ(), "MANWIDTH=80", "LC_ALL=C.UTF-8")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil || stderr.Len() > 0 {
		t.Errorf("man -l %s: %v\n%s", name, err, stderr.String())
	}
}

// The completion scripts offer every command and every declared flag, and
// the shells accept them.
func TestCompletion(t *testing.T) {
	flags := declaredFlags(t, flagSources(t)...)
	for _, shell := range []string{"bash", "zsh"} {
		t.Run(shell, func(t *testing.T) {
			script := runOut(t, "completion", shell)
			for _, c := range commandTable {
				if !c.hidden && !strings.Contains(script, c.name) {
					t.Errorf("%s completion lacks the command %q", shell, c.name)
				}
			}
			for _, f := range flags {
				if !strings.Contains(script, "-"+f) {
					t.Errorf("%s completion lacks the flag -%s", shell, f)
				}
			}
			sh, err := exec.LookPath(shell)
			if err != nil {
				if os.Getenv("EDGEGW_REQUIRE_PEERS") != "" {
					t.Fatalf("%s not installed", shell)
				}
				t.Skipf("%s not installed", shell)
			}
			path := filepath.Join(t.TempDir(), "edgegw."+shell)
			if err := os.WriteFile(path, []byte(script), 0o644); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command(sh, "-n", path).CombinedOutput(); err != nil {
				t.Fatalf("%s -n: %v\n%s", shell, err, out)
			}
			if shell != "bash" {
				return
			}
			// Load it and complete a few command lines.
			probe := `source "$1"; complete -p edgegw >/dev/null || exit 1
c() { COMP_WORDS=("$@"); COMP_CWORD=$(($#-1)); COMPREPLY=(); _edgegw; echo "${COMPREPLY[*]}"; }
c edgegw ct; c edgegw run -con; c edgegw ctl device a; c edgegw ctl -json device add -fr; c edgegw bench st`
			out, err := exec.Command(sh, "-c", probe, "probe", path).CombinedOutput()
			if err != nil {
				t.Fatalf("bash: %v\n%s", err, out)
			}
			want := "ctl\n-config\nadd activate\n-fresh\nstorm\n"
			if string(out) != want {
				t.Errorf("completions:\n%s\nwant:\n%s", out, want)
			}
		})
	}
}
