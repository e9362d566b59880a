package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/edgegw/edgegw/gateway"
	"github.com/edgegw/edgegw/gateway/config"
	"github.com/edgegw/edgegw/gateway/devsim"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink/cloudsim"
)

func init() { commands["demo"] = runDemo }

// runDemo implements 'edgegw demo': a cloud simulator, the gateway and N
// simulated field devices in one process, on loopback, with a live summary.
func runDemo(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("edgegw demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	n := fs.Int("devices", 10, "number of simulated field devices")
	stateDir := fs.String("state", "", "state `directory` (registry, spool, key); default: a temporary one, removed at exit")
	dialectName := fs.String("dialect", "aliyun", "cloud dialect to simulate: aliyun or enos")
	interval := fs.Duration("interval", time.Second, "time between two posts of one device")
	duration := fs.Duration("duration", 0, "stop after this long (default: run until Ctrl-C)")
	every := fs.Duration("every", 2*time.Second, "time between two summary lines")
	downEvery := fs.Duration("downlink-every", 5*time.Second, "time between two writes of the cloud to a device")
	outage := fs.Duration("outage", 0, "take the simulated cloud down for this long after 5 s, to show store-and-forward")
	verbose := fs.Bool("v", false, "also print the gateway's log")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *n < 1 || *n > 5000 {
		return fmt.Errorf("-devices %d: want 1 to 5000", *n)
	}
	for _, f := range []struct {
		name string
		d    time.Duration
	}{{"every", *every}, {"downlink-every", *downEvery}} {
		if f.d <= 0 {
			return fmt.Errorf("-%s %v: must be positive", f.name, f.d)
		}
	}
	d, err := secrets.ParseDialect(*dialectName)
	if err != nil {
		return err
	}
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}
	logLevel := slog.LevelError
	if *verbose {
		logLevel = slog.LevelInfo
	}
	log := loggerFor(stderr, logLevel, "auto")

	dir := *stateDir
	if dir == "" {
		dir, err = os.MkdirTemp("", "edgegw-demo-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	}

	// The fleet: one product, N devices with random secrets.
	pk := "a1DemoPump0"
	if d == secrets.EnOS {
		pk = "DemoPumpPK"
	}
	devices := make([]devsim.Device, *n)
	simDevices := make([]cloudsim.Device, *n)
	for i := range devices {
		sec := secrets.NewSecret(randomHex(16))
		dn := fmt.Sprintf("pump-%04d", i+1)
		// Firmware that never subscribes: Link SDK 4.x style (_ss=1) on
		// Alibaba, and EnOS, which pushes commands without a SUBSCRIBE.
		devices[i] = devsim.Device{Dialect: d, ProductKey: pk, DeviceName: dn, Secret: sec, ServerSubscribed: true}
		simDevices[i] = cloudsim.Device{ProductKey: pk, DeviceName: dn, Secret: sec}
	}

	// The cloud.
	sim, err := cloudsim.New(cloudsim.Config{Dialect: d, Listen: "127.0.0.1:0", Devices: simDevices,
		Logger: log.With("part", "cloudsim"), DeviceRate: cloudsim.RateUnlimited})
	if err != nil {
		return err
	}
	if err := sim.Start(ctx); err != nil {
		return err
	}
	defer sim.Close()

	// The gateway, configured as an operator would, with the devices in its registry.
	cfg := config.Default()
	cfg.StateDir = dir
	cfg.Broker.Listeners = []string{"tcp://127.0.0.1:0"}
	cfg.Cloud.Dialect = d
	cfg.Cloud.Endpoint = "tcp://" + sim.Addr(cloudsim.TCP)
	// Quick reconnects after -outage. EnOS blocks a device for 5 minutes
	// after 4 connection requests within 2 minutes, so its sessions wait at
	// least config.EnOSBackoffFloor after a failed attempt, as they would
	// against the real cloud (the simulator enforces the block too); the
	// jitter above the floor stays short.
	cfg.Cloud.BackoffMin = config.Duration(500 * time.Millisecond)
	cfg.Cloud.BackoffMax = config.Duration(5 * time.Second)
	if d == secrets.EnOS {
		cfg.Cloud.Keepalive = config.Duration(60 * time.Second)
		cfg.Cloud.BackoffMax = config.Duration(config.EnOSBackoffFloor + 5*time.Second)
	}
	cfg.Metrics.Listen = ""
	if err := seedRegistry(cfg, d, devices, slog.New(slog.DiscardHandler)); err != nil {
		return err
	}
	gw, err := gateway.New(cfg, gateway.Options{Logger: log.With("part", "gateway"), Version: Version(), Commit: build().Commit})
	if err != nil {
		return err
	}
	gwCtx, stopGW := context.WithCancel(context.WithoutCancel(ctx))
	defer stopGW()
	gwDone := make(chan error, 1)
	go func() { gwDone <- gw.Run(gwCtx) }()
	select {
	case <-gw.Ready():
	case err := <-gwDone:
		return fmt.Errorf("gateway: %w", err)
	case <-ctx.Done():
		return nil
	}
	var local string
	for _, a := range gw.Addrs() {
		if ta, ok := a.(*net.TCPAddr); ok {
			local = ta.String()
		}
	}

	fmt.Fprintf(stdout, "edgegw demo: %d simulated %s devices → edgegw (local broker %s, state %s) → simulated %s cloud at %s\n",
		*n, d, local, dir, d, sim.Addr(cloudsim.TCP))
	fmt.Fprintf(stdout, "each device posts a property every %s with QoS 1; the cloud writes a property to one device every %s. Ctrl-C stops.\n", *interval, *downEvery)
	if d == secrets.EnOS {
		fmt.Fprintln(stdout, "the devices never subscribe: EnOS pushes commands, and edgegw delivers them as the cloud would.")
	} else {
		fmt.Fprintln(stdout, "the devices never subscribe: their firmware signs with _ss=1 (server-side subscription), and edgegw's cloud sessions carry it.")
	}
	if d == secrets.EnOS && *outage > 0 {
		fmt.Fprintf(stdout, "EnOS allows 4 connection requests per device within 2 minutes: after the outage, sessions wait at least %s before they reconnect.\n", config.EnOSBackoffFloor)
	}
	fmt.Fprintln(stdout)

	var writes atomic.Int64 // cloud writes that reached a device
	fleet, err := devsim.Start(ctx, devsim.Config{Broker: "tcp://" + local, Devices: devices, Interval: *interval, QoS: 1,
		Logger: log.With("part", "devsim"),
		OnDownlink: func(dev devsim.Device, topic string, payload []byte) {
			if topic == dev.DownlinkTopic() {
				writes.Add(1)
				fmt.Fprintf(stdout, "device %s/%s ← %s (never subscribed)\n", dev.ProductKey, dev.DeviceName, payload)
			}
		}})
	if err != nil {
		return err
	}
	defer fleet.Close()

	start := time.Now()
	tick := time.NewTicker(*every)
	defer tick.Stop()
	downTick := time.NewTicker(*downEvery)
	defer downTick.Stop()
	var outageStart, outageEnd <-chan time.Time
	if *outage > 0 {
		outageStart = time.After(5 * time.Second)
	}
	var lastCloud int64
	lastT := start
	downSeq := 0
	for {
		select {
		case <-ctx.Done():
			stopGW()
			err := <-gwDone
			fmt.Fprintf(stdout, "\nstopped after %s: %s\n", time.Since(start).Round(time.Second), fleet.Stats())
			if err != nil && !errors.Is(err, context.Canceled) {
				return err
			}
			return nil
		case <-outageStart:
			fmt.Fprintf(stdout, "--- cloud goes DOWN for %s: devices keep publishing, edgegw spools to disk ---\n", *outage)
			if err := sim.Down(); err != nil {
				return err
			}
			outageEnd = time.After(*outage)
		case <-outageEnd:
			fmt.Fprintln(stdout, "--- cloud is back UP: edgegw drains the backlog in order ---")
			if err := sim.Up(ctx); err != nil {
				return err
			}
		case <-downTick.C:
			if recs := sim.Messages(); len(recs) > 0 {
				r := recs[len(recs)-1]
				fmt.Fprintf(stdout, "cloud ← %s  %s  %s\n", r.Device, r.Topic, r.Payload)
			}
			downSeq++
			dev := devices[downSeq%len(devices)]
			body := fmt.Sprintf(`{"id":"%d","version":"1.0","method":"thing.service.property.set","params":{"setpoint":%d}}`, downSeq, 40+downSeq%10)
			if d == secrets.EnOS {
				body = fmt.Sprintf(`{"id":"%d","version":"1.0","method":"thing.service.measurepoint.set","params":{"measurepoints":{"setpoint":%d}}}`, downSeq, 40+downSeq%10)
			}
			if err := sim.Publish(dev.ProductKey, dev.DeviceName, dev.DownlinkTopic(), []byte(body), 1); err == nil {
				fmt.Fprintf(stdout, "cloud → %s/%s  %s\n", dev.ProductKey, dev.DeviceName, body)
			}
		case now := <-tick.C:
			fs := fleet.Stats()
			ss := sim.Stats()
			snap := gw.Snapshot()
			rate := float64(ss.Messages-lastCloud) / now.Sub(lastT).Seconds()
			lastCloud, lastT = ss.Messages, now
			fmt.Fprintf(stdout, "t=%-5s devices %d/%d connected | posted %d, acked by edgegw %d | cloud sessions up %d/%d | spool %d msgs | cloud received %d (%.0f msg/s), writes delivered %d\n",
				now.Sub(start).Round(time.Second), fs.Connected, *n, fs.Published, fs.Acked,
				snap.Sessions["connected"], *n, snap.Spool.Depth, ss.Messages, rate, writes.Load())
		}
	}
}

// seedRegistry puts the demo product and devices into the gateway's
// registry, as 'edgegw ctl import' would.
func seedRegistry(cfg *config.Config, d secrets.Dialect, devices []devsim.Device, log *slog.Logger) error {
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return err
	}
	key, _, err := secrets.LoadOrCreateKey(cfg.EffectiveKeyFile(), log)
	if err != nil {
		return err
	}
	reg, err := secrets.OpenRegistry(filepath.Join(cfg.StateDir, "registry.db"), key, nil)
	if err != nil {
		return err
	}
	defer reg.Close()
	if _, err := reg.PutProduct(secrets.Product{ProductKey: devices[0].ProductKey, Dialect: d}); err != nil {
		return err
	}
	for _, dev := range devices {
		err := reg.AddDevice(secrets.Device{ProductKey: dev.ProductKey, DeviceName: dev.DeviceName, DeviceSecret: dev.Secret})
		if errors.Is(err, secrets.ErrExists) {
			_, err = reg.UpdateDevice(dev.ProductKey, dev.DeviceName, func(x *secrets.Device) error {
				x.DeviceSecret = dev.Secret
				return nil
			})
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}
