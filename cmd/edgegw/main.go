// Command edgegw is the edge gateway daemon and its tools: run, demo,
// cloudsim, sign, ctl and version. main only parses the subcommand, wires
// signals and picks the log handler; the work happens in the packages.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// summary is the one line about edgegw that heads the usage and edgegw(8).
const summary = "edge gateway: local MQTT broker, one signed cloud session per device, durable store-and-forward"

// command is one line of the command table. The usage text, the man page
// (edgegw man) and the shell completions (edgegw completion) are all made
// from this table and from each command's own -h output.
type command struct {
	name, args, about string
	hidden            bool // tooling for packagers: not in the usage
}

var commandTable = []command{
	{name: "run", args: "-config FILE", about: "the daemon"},
	{name: "demo", args: "[-devices N] [-state DIR]", about: "gateway + built-in cloud simulator + simulated devices"},
	{name: "cloudsim", args: "-listen ADDR -dialect aliyun|enos -devices FILE.csv …", about: "a strict simulated IoT platform"},
	{name: "sign", args: "-dialect aliyun|enos -product-key PK -device-name DN -device-secret S …", about: "CONNECT credentials"},
	{name: "ctl", args: "[-socket PATH] status | device list|show|add|rm|update | product add|rm | queue stats|purge | import FILE.csv", about: "manage a running gateway through its admin socket"},
	{name: "health", args: "[-url http://127.0.0.1:9464/healthz]", about: "exit 0 when the daemon is healthy (container HEALTHCHECK)"},
	{name: "bench", args: "forward|replay|sessions|storm …", about: "benchmarks on loopback"},
	{name: "backup", args: "-o DIR [-spool] [-state DIR]", about: "consistent copy of the registry (and spool); the key is not in it"},
	{name: "restore", args: "-from DIR -state DIR [-key FILE]", about: "restore a backup into a fresh state directory"},
	{name: "keygen", args: "-out FILE", about: "create the registry key if missing (systemd runs it)"},
	{name: "version", args: "[-json]", about: "version, commit, build date, Go version, platform"},
	{name: "man", args: "-section 8|5 [-example edgegw.toml] [-o DIR]", about: "write the manual page edgegw(8) or edgegw.toml(5) in roff", hidden: true},
	{name: "completion", args: "bash|zsh", about: "write the shell completion script", hidden: true},
}

// usage is the text of 'edgegw -h'.
var usage = func() string {
	var b strings.Builder
	fmt.Fprintf(&b, "edgegw — %s\n\nUsage:\n", summary)
	for _, c := range commandTable {
		if c.hidden {
			continue
		}
		line := fmt.Sprintf("  edgegw %-8s %s", c.name, c.args)
		if c.about != "" {
			sep := " "
			if len(line) >= 47 {
				sep = "   "
			}
			line = fmt.Sprintf("%-47s%s%s", line, sep, c.about)
		}
		b.WriteString(strings.TrimRight(line, " ") + "\n")
	}
	b.WriteString("\nRun 'edgegw COMMAND -h' for a command's flags.\n")
	return b.String()
}()

// run dispatches a subcommand and returns the process exit code.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cmd, rest := args[0], args[1:]
	var err error
	switch cmd {
	case "sign":
		err = runSign(rest, stdin, stdout, stderr)
	case "version", "-version", "--version":
		err = runVersion(rest, stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		if f, ok := commands[cmd]; ok {
			err = f(ctx, rest, stdin, stdout, stderr)
			break
		}
		fmt.Fprintf(stderr, "edgegw: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	}
	fmt.Fprintf(stderr, "edgegw %s: %v\n", cmd, err)
	return 1
}

// commands holds the subcommands that run until their context ends.
var commands = map[string]func(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error{}

// errUsage reports a flag error already printed by the flag package.
var errUsage = errors.New("usage")

// parseFlags parses args into fs, turning flag errors into errUsage (the flag
// package has already printed them).
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "unexpected argument %q\n", fs.Arg(0))
		return errUsage
	}
	return nil
}
