package main

import (
	"context"
	"flag"
	"io"
	"log/slog"

	"github.com/edgegw/edgegw/gateway"
)

func init() { commands["run"] = runDaemon }

// runDaemon implements 'edgegw run -config FILE'.
func runDaemon(ctx context.Context, args []string, _ io.Reader, _, stderr io.Writer) error {
	fs := flag.NewFlagSet("edgegw run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "/etc/edgegw/edgegw.toml", "configuration `file`")
	level := fs.String("log-level", "", "override log_level: debug, info, warn or error")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := gateway.LoadConfig(*cfgPath)
	if err != nil {
		return err
	}
	if *level != "" {
		cfg.LogLevel = *level
	}
	lvl, err := parseLevel(cfg.LogLevel)
	if err != nil {
		return err
	}
	log := loggerFor(stderr, lvl, cfg.LogFormat)
	log.Info("edgegw starting", "version", Version(), "config", *cfgPath)
	g, err := gateway.New(cfg, gateway.Options{Logger: log})
	if err != nil {
		return err
	}
	return g.Run(ctx)
}

// loggerFor builds the process logger on w.
func loggerFor(w io.Writer, lvl slog.Level, format string) *slog.Logger {
	if f, ok := stderrFile(w); ok {
		return newLogger(f, lvl, format)
	}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: lvl}))
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: lvl}))
}
