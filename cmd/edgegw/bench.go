package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/edgegw/edgegw/gateway/bench"
)

func init() { commands["bench"] = runBench }

// runBench implements 'edgegw bench SCENARIO [flags]'.
func runBench(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	var b strings.Builder
	for _, s := range bench.Scenarios() {
		fmt.Fprintf(&b, "  %-9s %s\n", s.Name, s.Summary)
	}
	usage := func(w io.Writer) {
		fmt.Fprintf(w, "usage: edgegw bench SCENARIO [flags]\n\nScenarios (each starts what it needs on loopback and prints a markdown table):\n%s", b.String())
	}
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		w, err := stderr, errUsage
		if len(args) > 0 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help") {
			w, err = stdout, flag.ErrHelp
		}
		usage(w)
		fmt.Fprintln(w, "\nRun 'edgegw bench SCENARIO -h' for the flags.")
		return err
	}
	name, args := args[0], args[1:]

	fs := flag.NewFlagSet("edgegw bench "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		usage(fs.Output())
		fmt.Fprintln(fs.Output(), "\nFlags (0 = the scenario's default):")
		fs.PrintDefaults()
	}
	var o bench.Options
	fs.IntVar(&o.Devices, "devices", 0, "simulated devices (forward 1000, replay 1000, storm 9000)")
	fs.DurationVar(&o.Duration, "duration", 0, "forward: publishing time (20s)")
	fs.IntVar(&o.Window, "window", 0, "forward: QoS 1 messages in flight per device (1; 16 with -rate)")
	fs.Float64Var(&o.Rate, "rate", 0, "forward: fixed offered load, msg/s over all devices (default: as fast as the window allows)")
	fs.IntVar(&o.PayloadSize, "payload", 0, "forward: payload bytes (200)")
	fs.IntVar(&o.Messages, "messages", 0, "replay: messages per device spooled during the outage (1000)")
	fs.Float64Var(&o.DeviceRate, "device-rate", 0, "replay: per-device cap of the capped run, msg/s (30, Alibaba's limit)")
	sessions := fs.String("sessions", "", "sessions: comma-separated fleet sizes (1000,5000,9000)")
	transports := fs.String("transport", "", "sessions: comma-separated cloud transports, each measured for every fleet size: tcp, tls (tcp,tls)")
	fs.DurationVar(&o.Idle, "idle", 0, "sessions: window for the idle CPU measurement (10s)")
	fs.Float64Var(&o.ConnectRate, "connect-rate", 0, "gateway connect budget, CONNECTs/s (forward, replay, sessions 1000; storm 500)")
	fs.IntVar(&o.ConnectBurst, "connect-burst", 0, "gateway connect burst (forward, replay, sessions 1000; storm 50)")
	fs.StringVar(&o.Mosquitto, "mosquitto", "", "mosquitto `binary` (default: from PATH or /usr/sbin)")
	fs.StringVar(&o.WorkDir, "workdir", "", "`directory` for temporary state (default: the system's)")
	fs.BoolVar(&o.Quick, "quick", false, "a tiny run that takes seconds (for tests)")
	jsonOut := fs.Bool("json", false, "print the report as JSON instead of markdown")
	quiet := fs.Bool("q", false, "no progress lines on stderr")
	fs.BoolVar(&o.Verbose, "v", false, "also print the children's output on stderr")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *sessions != "" {
		for _, f := range strings.Split(*sessions, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil {
				return fmt.Errorf("-sessions: %q is not a number", f)
			}
			o.Sessions = append(o.Sessions, n)
		}
	}
	if *transports != "" {
		for _, f := range strings.Split(*transports, ",") {
			o.Transports = append(o.Transports, strings.TrimSpace(f))
		}
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find the edgegw executable: %w", err)
	}
	o.Executable = exe
	if !*quiet {
		o.Progress = stderr
	}
	r, err := bench.Run(ctx, name, o)
	if errors.Is(err, bench.ErrPeerMissing) {
		return fmt.Errorf("%w\nthe %s scenario compares against Debian's mosquitto: apt-get install mosquitto", err, name)
	}
	if err != nil {
		return err
	}
	if *jsonOut {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	return r.WriteMarkdown(stdout)
}
