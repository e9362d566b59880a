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
	"runtime/debug"
	"syscall"
)

// version is stamped at build time with -ldflags "-X main.version=…".
var version = ""

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

const usage = `edgegw — edge gateway: local MQTT broker, one signed cloud session per device, durable store-and-forward

Usage:
  edgegw run      -config FILE                  the daemon
  edgegw demo     [-devices N] [-state DIR]     gateway + built-in cloud simulator + simulated devices
  edgegw cloudsim -listen ADDR -dialect aliyun|enos -devices FILE.csv …   a strict simulated IoT platform
  edgegw sign     -dialect aliyun|enos -product-key PK -device-name DN -device-secret S …   CONNECT credentials
  edgegw ctl      [-socket PATH] status | device list|show|add|rm|update | product add|rm | queue stats|purge | import FILE.csv
  edgegw health   [-url http://127.0.0.1:9464/healthz]   exit 0 when the daemon is healthy (container HEALTHCHECK)
  edgegw bench    forward|replay|sessions|storm …       benchmarks on loopback
  edgegw backup   -o DIR [-spool] [-state DIR]  consistent copy of the registry (and spool); the key is not in it
  edgegw restore  -from DIR -state DIR [-key FILE]   restore a backup into a fresh state directory
  edgegw keygen   -out FILE                      create the registry key if missing (systemd runs it)
  edgegw version

Run 'edgegw COMMAND -h' for a command's flags.
`

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
		fmt.Fprintln(stdout, "edgegw", Version())
		return 0
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

// Version returns the stamped version, else the module version from the
// build info, else "devel". run and demo pass it to the gateway
// (gateway.Options.Version), which reports it in gateway.status.
func Version() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "devel"
}

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
