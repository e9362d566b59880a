package cloudsim

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/edgegw/edgegw/secrets"
)

// LoadTLSConfig builds a server TLS configuration from PEM files. With a
// client CA file, clients must present a certificate signed by it (mutual
// TLS).
func LoadTLSConfig(certFile, keyFile, clientCAFile string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load TLS key pair %s, %s: %w", certFile, keyFile, err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if clientCAFile != "" {
		pem, err := os.ReadFile(clientCAFile)
		if err != nil {
			return nil, fmt.Errorf("load client CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("load client CA %s: no PEM certificate found", clientCAFile)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// rateFlag is -device-rate: unset means the dialect's default, 0 off.
type rateFlag struct {
	set  bool
	rate float64
}

func (r *rateFlag) String() string {
	if r == nil || !r.set {
		return "dialect default"
	}
	return strconv.FormatFloat(r.rate, 'g', -1, 64)
}

func (r *rateFlag) Set(v string) error {
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f < 0 || f != f {
		return fmt.Errorf("want a non-negative number of messages per second, not %q", v)
	}
	r.set, r.rate = true, f
	return nil
}

// Main is the "edgegw cloudsim" subcommand: it parses args (without the
// program and subcommand names), runs a simulator until ctx is done, and
// returns nil then. It prints the bound addresses to stdout and logs to
// stderr. -h returns flag.ErrHelp after printing the usage.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("cloudsim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		listen      = fs.String("listen", "", "MQTT over TCP listen `address`, e.g. 127.0.0.1:1883")
		dialect     = fs.String("dialect", "", "cloud to simulate: aliyun or enos (required)")
		devicesFile = fs.String("devices", "", "device list `file` (CSV: ProductKey,DeviceName,DeviceSecret; required)")
		productFile = fs.String("products", "", "product list `file` (CSV: ProductKey,ProductSecret), enables dynamic activation")
		observer    = fs.String("observer", "", "observer account `USER:PASS`: may subscribe to '#' and publish downlink")
		tlsListen   = fs.String("tls-listen", "", "MQTT over TLS listen `address` (needs -tls-cert and -tls-key)")
		tlsCert     = fs.String("tls-cert", "", "server certificate PEM `file`")
		tlsKey      = fs.String("tls-key", "", "server private key PEM `file`")
		clientCA    = fs.String("client-ca", "", "CA PEM `file` for client certificates (mutual TLS)")
		wsListen    = fs.String("ws", "", "MQTT over WebSocket listen `address`")
		wssListen   = fs.String("wss", "", "MQTT over secure WebSocket listen `address` (needs -tls-cert and -tls-key)")
		control     = fs.String("control", "", "HTTP control API listen `address` (loopback only: it has no authentication)")
		logLevel    = fs.String("log-level", "info", "log `level`: debug, info, warn or error")
		rate        rateFlag
	)
	fs.Var(&rate, "device-rate", "per-device upstream limit in messages/s; 0 turns it off (default: aliyun 30, enos off)")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: edgegw cloudsim -listen ADDR -dialect aliyun|enos -devices FILE.csv [flags]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("cloudsim: unexpected argument %q", fs.Arg(0))
	}
	d, err := secrets.ParseDialect(*dialect)
	if err != nil {
		return fmt.Errorf("cloudsim: -dialect: %w", err)
	}
	if *devicesFile == "" {
		return errors.New("cloudsim: -devices is required")
	}
	if *listen == "" && *tlsListen == "" && *wsListen == "" && *wssListen == "" {
		return errors.New("cloudsim: give at least one of -listen, -tls-listen, -ws, -wss")
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("cloudsim: -log-level: %w", err)
	}
	cfg := Config{
		Dialect: d, Listen: *listen, TLSListen: *tlsListen, WSListen: *wsListen, WSSListen: *wssListen,
		Logger: slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lvl})),
	}
	if rate.set {
		cfg.DeviceRate = rate.rate
		if rate.rate == 0 {
			cfg.DeviceRate = RateUnlimited
		}
	}
	if *tlsListen != "" || *wssListen != "" || *tlsCert != "" || *tlsKey != "" || *clientCA != "" {
		if *tlsCert == "" || *tlsKey == "" {
			return errors.New("cloudsim: TLS needs both -tls-cert and -tls-key")
		}
		if *tlsListen == "" && *wssListen == "" {
			return errors.New("cloudsim: -tls-cert given without -tls-listen or -wss")
		}
		if cfg.TLSConfig, err = LoadTLSConfig(*tlsCert, *tlsKey, *clientCA); err != nil {
			return fmt.Errorf("cloudsim: %w", err)
		}
	}
	if *observer != "" {
		user, pass, ok := strings.Cut(*observer, ":")
		if !ok || user == "" || pass == "" {
			return errors.New("cloudsim: -observer wants USER:PASS")
		}
		cfg.ObserverUser, cfg.ObserverPassword = user, secrets.NewSecret(pass)
	}
	if cfg.Devices, err = LoadDevicesFile(*devicesFile, d); err != nil {
		return fmt.Errorf("cloudsim: %w", err)
	}
	if *productFile != "" {
		if cfg.Products, err = LoadProductsFile(*productFile, d); err != nil {
			return fmt.Errorf("cloudsim: %w", err)
		}
	}
	sim, err := New(cfg)
	if err != nil {
		return fmt.Errorf("cloudsim: %w", err)
	}
	if err := sim.Start(ctx); err != nil {
		_ = sim.Close()
		return fmt.Errorf("cloudsim: %w", err)
	}
	defer sim.Close()

	var ctl *http.Server
	ctlErr := make(chan error, 1)
	if *control != "" {
		ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", *control)
		if err != nil {
			return fmt.Errorf("cloudsim: listen control API on %s: %w", *control, err)
		}
		ctl = &http.Server{Handler: sim.ControlHandler(), ReadHeaderTimeout: 10 * time.Second}
		go func() { ctlErr <- ctl.Serve(ln) }()
		*control = ln.Addr().String()
	}

	fmt.Fprintf(stdout, "cloudsim %s: %d devices, %d products\n", d, len(cfg.Devices), len(cfg.Products))
	for _, kind := range []string{TCP, TLS, WS, WSS} {
		if a := sim.Addr(kind); a != "" {
			fmt.Fprintf(stdout, "%-7s %s\n", kind, a)
		}
	}
	if ctl != nil {
		fmt.Fprintf(stdout, "control http://%s\n", *control)
	}

	select {
	case <-ctx.Done():
	case err := <-ctlErr:
		return fmt.Errorf("cloudsim: control API: %w", err)
	}
	if ctl != nil {
		shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = ctl.Shutdown(shutCtx)
	}
	return sim.Close()
}
