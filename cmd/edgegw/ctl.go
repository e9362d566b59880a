package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/edgegw/edgegw/gateway/adminapi"
	"github.com/edgegw/edgegw/internal/logsafe"
	"github.com/edgegw/edgegw/secrets"
)

func init() {
	commands["ctl"] = runCtl
}

// DefaultAdminSocket is where edgegw ctl finds the gateway by default (the
// packaged configuration's unix listener).
const DefaultAdminSocket = "/run/edgegw/admin.sock"

const ctlUsage = `edgegw ctl — manage a running edgegw through its admin topic

Usage:
  edgegw ctl [-socket PATH | -broker URL -user U -password-file F] [-json] [-timeout D] COMMAND …

Commands:
  status                                   version, uptime, devices, cloud sessions, spool
  device list [-product PK] [-state S] [-limit N] [-after PK/DN] [-all]
  device show PK/DN
  device add PK/DN [-secret-file F | -secret -] [-local-password-file F | -local-password -]
                   [-client-id C] [-disabled] [-fresh]
  device activate PK/DN [-fresh] [-wait D]   obtain the deviceSecret now (retries activation-failed)
  device update PK/DN [-secret-file F | -secret -] [-local-password-file F | -local-password -]
                   [-clear-local-password] [-client-id C | -clear-client-id] [-enable | -disable]
  device rm PK/DN -spool discard|drain [-drain-timeout D]
  product list
  product show PK
  product add PK [-dialect aliyun|enos] [-secret-file F | -secret -] [-default-connect-params _ss=1,ext=3]
  product update PK [-secret-file F | -secret -] [-dialect aliyun|enos]
                   [-default-connect-params P | -clear-default-connect-params]
  product rm PK
  queue stats [PK/DN]
  queue purge PK/DN
  import [-dialect D] [-disabled] [-batch N] FILE.csv    the console's ProductKey,DeviceName,DeviceSecret export

Secrets are never taken on the command line: "-secret -" reads one line from
standard input, "-secret-file F" reads it from a file. -json prints the reply's
data as JSON. A device added again without -secret… gets the deviceSecret kept
from its earlier activation (the clouds activate a device only once); -fresh
activates it with the cloud anyway. The exit status is 0 on success, 1 when the gateway refused
(its code and message are printed), 2 on a usage error.

Global flags:
`

// ctl is one 'edgegw ctl' invocation.
type ctl struct {
	ctx     context.Context
	stdin   io.Reader
	stdout  io.Writer
	stderr  io.Writer
	json    bool
	timeout time.Duration

	socket, broker, user, passwordFile, caFile string

	client *adminapi.Client
}

// runCtl implements 'edgegw ctl'.
func runCtl(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	c := &ctl{ctx: ctx, stdin: stdin, stdout: stdout, stderr: stderr}
	fs := flag.NewFlagSet("edgegw ctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, ctlUsage)
		fs.PrintDefaults()
	}
	fs.StringVar(&c.socket, "socket", DefaultAdminSocket, "the gateway's admin unix socket `path`")
	fs.StringVar(&c.broker, "broker", "", "connect to this broker `URL` (tcp://host:1883, tls://host:8883) instead of the unix socket")
	fs.StringVar(&c.user, "user", "", "admin user `name` for -broker (a [[broker.admin]] entry)")
	fs.StringVar(&c.passwordFile, "password-file", "", "`file` holding the admin user's password (first line)")
	fs.StringVar(&c.caFile, "cafile", "", "PEM `file` of CAs trusted for a tls:// -broker (default: the system's)")
	fs.BoolVar(&c.json, "json", false, "print the reply's data as JSON")
	fs.DurationVar(&c.timeout, "timeout", 30*time.Second, "how long to wait for the gateway's reply")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	rest := fs.Args()
	if len(rest) == 0 {
		fs.Usage()
		return errUsage
	}
	if c.timeout <= 0 {
		fmt.Fprintln(stderr, "-timeout must be positive")
		return errUsage
	}
	if c.broker != "" && (c.user == "") != (c.passwordFile == "") {
		fmt.Fprintln(stderr, "-user and -password-file go together")
		return errUsage
	}
	defer c.close()
	err := c.dispatch(fs, rest[0], rest[1:])
	var re *adminapi.Error
	if errors.As(err, &re) {
		// The message may echo what a request (or an import file) held.
		re.Message = logsafe.ClipN(re.Message, ctlTextMax)
	}
	if c.json && errors.As(err, &re) {
		// Scripts get the refusal as JSON too; the one-line error still
		// goes to stderr and the exit status is 1.
		_ = c.printJSON(re)
	}
	return err
}

// ctlTextMax bounds free-form text from the gateway (a message, an error)
// on the terminal. Every string ctl prints that it did not write itself —
// the gateway's replies, fields of an import file — goes through
// logsafe.ClipN (or logsafe.Clip for identifiers), which escapes control
// bytes and invalid UTF-8, so a device name with an escape sequence or a
// newline cannot rewrite the operator's screen or forge an output line.
const ctlTextMax = 1024

// text makes free-form text from the gateway safe to print.
func text(s string) string { return logsafe.ClipN(s, ctlTextMax) }

// dispatch runs one command.
func (c *ctl) dispatch(fs *flag.FlagSet, cmd string, rest []string) error {
	stdout, stderr := c.stdout, c.stderr
	switch cmd {
	case "status":
		return c.status(rest)
	case "device", "devices":
		return c.device(rest)
	case "product", "products":
		return c.product(rest)
	case "queue":
		return c.queue(rest)
	case "import":
		return c.importCmd(rest)
	case "help":
		fs.SetOutput(stdout)
		fmt.Fprint(stdout, ctlUsage)
		fs.PrintDefaults()
		return nil
	}
	fmt.Fprintf(stderr, "edgegw ctl: unknown command %q\n\n", cmd)
	fs.Usage()
	return errUsage
}

func (c *ctl) usageErr(format string, args ...any) error {
	fmt.Fprintf(c.stderr, format+"\n", args...)
	fmt.Fprintln(c.stderr, "run 'edgegw ctl help' for usage")
	return errUsage
}

// --- commands ---

func (c *ctl) status(args []string) error {
	fs := c.flags("status")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return c.usageErr("status: unexpected argument %q", pos[0])
	}
	var st adminapi.Status
	if err := c.callInto(adminapi.MethodGatewayStatus, nil, &st); err != nil || c.json {
		return err
	}
	w := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "edgegw\t%s, up %s (since %s)\n", logsafe.Clip(st.Version),
		(time.Duration(st.UptimeSeconds * float64(time.Second))).Round(time.Second), logsafe.Clip(st.Started))
	fmt.Fprintf(w, "devices\t%d (%s), %d disabled\n", st.Devices.Total, countList(st.Devices.ByState), st.Devices.Disabled)
	sessions := countList(st.Sessions)
	if sessions == "" {
		sessions = "none"
	}
	fmt.Fprintf(w, "sessions\t%s\n", sessions)
	reach := "no sessions"
	if st.Cloud.Reachable != nil {
		reach = "UNREACHABLE"
		if *st.Cloud.Reachable {
			reach = "reachable"
		}
	}
	fmt.Fprintf(w, "cloud\t%s (%s): %s, %d/%d sessions connected", logsafe.Clip(st.Cloud.Endpoint), logsafe.Clip(st.Cloud.Dialect), reach, st.Cloud.Connected, st.Cloud.Sessions)
	if !st.Cloud.LastConnect.IsZero() {
		fmt.Fprintf(w, ", last connect %s", st.Cloud.LastConnect.Local().Format(time.DateTime))
	}
	fmt.Fprintln(w)
	for _, e := range st.Cloud.Errors {
		fmt.Fprintf(w, "\t%d× %s\n", e.Sessions, text(e.Error))
	}
	sp := st.Spool
	fmt.Fprintf(w, "spool\t%d messages, %s of %s (%s); appended %d, acked %d; dropped %s; %d dead letters\n",
		sp.Depth, humanBytes(sp.Bytes), humanBytes(sp.Budget), sp.Overflow, sp.Appended, sp.Acked, dropList(sp.Dropped), sp.DeadLetters)
	if sp.LastError != "" || sp.DiskFull {
		fmt.Fprintf(w, "\tlast error: %s (disk full: %t)\n", text(sp.LastError), sp.DiskFull)
	}
	fmt.Fprintf(w, "local\t%d clients connected, %d messages in, %d connects refused\n", st.Local.Clients, st.Local.MessagesIn, st.Local.Refused)
	return w.Flush()
}

func (c *ctl) device(args []string) error {
	if len(args) == 0 {
		return c.usageErr("device: want list, show, add, update, activate or rm")
	}
	switch sub, rest := args[0], args[1:]; sub {
	case "list", "ls":
		return c.deviceList(rest)
	case "show", "get":
		return c.deviceShow(rest)
	case "add":
		return c.deviceAdd(rest)
	case "update", "set":
		return c.deviceUpdate(rest)
	case "rm", "remove":
		return c.deviceRemove(rest)
	case "activate":
		return c.deviceActivate(rest)
	case "import":
		return c.importCmd(rest)
	default:
		return c.usageErr("device %s: unknown (want list, show, add, update, activate or rm)", sub)
	}
}

func (c *ctl) deviceList(args []string) error {
	fs := c.flags("device list")
	product := fs.String("product", "", "only this `productKey`'s devices")
	state := fs.String("state", "", "only devices in this `state`: ready, awaiting-activation, activation-failed, a session state (connected, backoff, auth-failed, …, none), disabled or enabled")
	limit := fs.Int("limit", 100, "at most `N` devices per page (1-1000)")
	after := fs.String("after", "", "start after this `PK/DN` (the previous page's last)")
	all := fs.Bool("all", false, "fetch every page")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return c.usageErr("device list: unexpected argument %q", pos[0])
	}
	if *limit < 1 || *limit > adminapi.ListMax {
		return c.usageErr("device list: -limit %d: want 1-%d", *limit, adminapi.ListMax)
	}
	var out adminapi.DeviceList
	cursor := *after
	for {
		params := adminapi.DeviceListParams{ProductKey: *product, State: *state, After: cursor, Limit: *limit}
		var page adminapi.DeviceList
		if err := c.callQuiet(adminapi.MethodDeviceList, params, &page); err != nil {
			return err
		}
		out.Devices = append(out.Devices, page.Devices...)
		out.Next = page.Next
		if !*all || page.Next == "" {
			break
		}
		cursor = page.Next
	}
	if c.json {
		return c.printJSON(out)
	}
	w := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "DEVICE\tSTATE\tENABLED\tSESSION\tQUEUED\tSECRET\tLOCAL PASSWORD")
	for _, d := range out.Devices {
		state := d.State
		if d.Removing {
			state += " (removing)"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", logsafe.Clip(d.ID()), logsafe.Clip(state), yesNo(!d.Disabled), logsafe.Clip(d.Session), d.Queued,
			setOrNot(d.HasDeviceSecret), setOrNot(d.HasLocalPassword))
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if out.Next != "" {
		fmt.Fprintf(c.stdout, "(more: edgegw ctl device list -after %s, or -all)\n", logsafe.Clip(out.Next))
	}
	return nil
}

func (c *ctl) deviceShow(args []string) error {
	fs := c.flags("device show")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	id, err := c.deviceArg("device show", pos)
	if err != nil {
		return err
	}
	var det adminapi.DeviceDetail
	if err := c.callInto(adminapi.MethodDeviceGet, adminapi.DeviceGetParams{DeviceID: id}, &det); err != nil || c.json {
		return err
	}
	d := det.Device
	w := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "device\t%s\n", logsafe.Clip(d.ID()))
	fmt.Fprintf(w, "dialect\t%s\n", logsafe.Clip(d.Dialect))
	state := d.State
	if d.StateReason != "" {
		state += " (" + d.StateReason + ")"
	}
	fmt.Fprintf(w, "state\t%s\n", text(state))
	fmt.Fprintf(w, "enabled\t%s\n", yesNo(!d.Disabled))
	if d.Removing {
		fmt.Fprintf(w, "removing\tyes (waiting for its queue to drain)\n")
	}
	fmt.Fprintf(w, "deviceSecret\t%s\n", setOrNot(d.HasDeviceSecret))
	fmt.Fprintf(w, "local password\t%s\n", setOrNot(d.HasLocalPassword))
	if d.ClientID != "" {
		fmt.Fprintf(w, "cloud clientId\t%s\n", logsafe.Clip(d.ClientID))
	}
	fmt.Fprintf(w, "created\t%s\n", fmtTime(d.Created))
	fmt.Fprintf(w, "updated\t%s\n", fmtTime(d.Updated))
	if !d.ActivatedAt.IsZero() {
		fmt.Fprintf(w, "activated\t%s\n", fmtTime(d.ActivatedAt))
	}
	if s := det.Session; s != nil {
		fmt.Fprintf(w, "session\t%s (%d connects of %d attempts)\n", logsafe.Clip(s.State), s.Connects, s.Attempts)
		if s.ClientID != "" {
			fmt.Fprintf(w, "  clientId\t%s\n", logsafe.Clip(s.ClientID))
		}
		if !s.LastConnect.IsZero() {
			fmt.Fprintf(w, "  last connect\t%s\n", fmtTime(s.LastConnect))
		}
		if !s.NextAttempt.IsZero() {
			fmt.Fprintf(w, "  next attempt\t%s\n", fmtTime(s.NextAttempt))
		}
		if s.LastError != "" {
			fmt.Fprintf(w, "  last error\t%s\n", text(s.LastError))
		}
		fmt.Fprintf(w, "  sent\t%d (resent %d, dead-lettered %d, in flight %d)\n", s.Sent, s.Resent, s.DeadLettered, s.InFlight)
		fmt.Fprintf(w, "  subscriptions\t%d\n", s.Subscriptions)
	} else {
		fmt.Fprintf(w, "session\tnone\n")
	}
	q := det.Queue
	fmt.Fprintf(w, "queue\t%d messages, %s", q.Depth, humanBytes(q.Bytes))
	if q.Depth > 0 {
		fmt.Fprintf(w, ", oldest %s old", (time.Duration(q.OldestAgeSeconds * float64(time.Second))).Round(time.Second))
	}
	fmt.Fprintf(w, "; dropped %s; %d rejected; %d dead letters\n", dropList(q.Dropped), q.Rejected, q.DeadLetters)
	return w.Flush()
}

func (c *ctl) deviceAdd(args []string) error {
	fs := c.flags("device add")
	sec := addSecretFlags(fs, "secret", "the deviceSecret (omit for dynamic activation with the productSecret)")
	pw := addSecretFlags(fs, "local-password", "a local password the device may log in with")
	clientID := fs.String("client-id", "", "the bare MQTT `clientId` towards the cloud (default: the configured template)")
	disabled := fs.Bool("disabled", false, "add it disabled (no cloud session, no local login)")
	fresh := fs.Bool("fresh", false, "without -secret…: activate with the cloud even though a deviceSecret kept from an earlier activation exists (after a reset in the cloud console)")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	id, err := c.deviceArg("device add", pos)
	if err != nil {
		return err
	}
	if *fresh && sec.given() {
		return c.usageErr("device add: -fresh is for a device added without -secret…")
	}
	params := adminapi.DeviceAddParams{DeviceID: id, ClientID: *clientID, Disabled: *disabled, Fresh: *fresh}
	if err := c.readSecrets(sec.into(&params.DeviceSecret), pw.into(&params.LocalPassword)); err != nil {
		return err
	}
	return c.callDevice(adminapi.MethodDeviceAdd, params)
}

func (c *ctl) deviceUpdate(args []string) error {
	fs := c.flags("device update")
	sec := addSecretFlags(fs, "secret", "a new deviceSecret (rotation: the session reconnects with it)")
	pw := addSecretFlags(fs, "local-password", "a new local password")
	clearPW := fs.Bool("clear-local-password", false, "remove the local password")
	clientID := fs.String("client-id", "", "a new bare MQTT `clientId` towards the cloud")
	clearCID := fs.Bool("clear-client-id", false, "go back to the configured clientId template")
	enable := fs.Bool("enable", false, "enable the device (cloud session and local logins)")
	disable := fs.Bool("disable", false, "disable the device: its cloud session stops, its local connections are closed")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	id, err := c.deviceArg("device update", pos)
	if err != nil {
		return err
	}
	if *enable && *disable {
		return c.usageErr("device update: -enable and -disable exclude each other")
	}
	if *clearPW && pw.given() {
		return c.usageErr("device update: -clear-local-password and -local-password exclude each other")
	}
	if *clearCID && *clientID != "" {
		return c.usageErr("device update: -clear-client-id and -client-id exclude each other")
	}
	params := adminapi.DeviceUpdateParams{DeviceID: id,
		LocalPassword: adminapi.Optional{Clear: *clearPW},
		ClientID:      adminapi.Optional{Value: *clientID, Clear: *clearCID}}
	if err := c.readSecrets(sec.into(&params.DeviceSecret), pw.into(&params.LocalPassword.Value)); err != nil {
		return err
	}
	if *enable || *disable {
		params.Disabled = disable
	}
	if params.DeviceSecret == "" && params.LocalPassword.IsZero() && params.ClientID.IsZero() && params.Disabled == nil {
		return c.usageErr("device update: nothing to change (give -secret…, -local-password…, -client-id, -enable or -disable)")
	}
	return c.callDevice(adminapi.MethodDeviceUpdate, params)
}

func (c *ctl) deviceActivate(args []string) error {
	fs := c.flags("device activate")
	fresh := fs.Bool("fresh", false, "activate with the cloud even though a deviceSecret kept from an earlier activation exists (after a reset in the cloud console)")
	wait := fs.Duration("wait", 0, "wait up to `D` for the outcome (ready or activation-failed)")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	id, err := c.deviceArg("device activate", pos)
	if err != nil {
		return err
	}
	if *wait < 0 {
		return c.usageErr("device activate: -wait must not be negative")
	}
	var d adminapi.Device
	r, err := c.call(adminapi.MethodDeviceActivate, adminapi.DeviceActivateParams{DeviceID: id, Fresh: *fresh})
	if err != nil {
		return err
	}
	if err := r.Decode(adminapi.MethodDeviceActivate, &d); err != nil {
		return err
	}
	if *wait > 0 && d.State == string(secrets.StateAwaitingActivation) {
		deadline := time.Now().Add(*wait)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for d.State == string(secrets.StateAwaitingActivation) && time.Now().Before(deadline) {
			select {
			case <-tick.C:
			case <-c.ctx.Done():
				return c.ctx.Err()
			}
			var det adminapi.DeviceDetail
			if err := c.callQuiet(adminapi.MethodDeviceGet, adminapi.DeviceGetParams{DeviceID: id}, &det); err != nil {
				return err
			}
			d = det.Device
		}
	}
	if c.json {
		return c.printJSON(d)
	}
	fmt.Fprintln(c.stdout, r.Message)
	if *wait > 0 {
		state := d.State
		if d.StateReason != "" {
			state += " (" + d.StateReason + ")"
		}
		fmt.Fprintf(c.stdout, "device %s: %s, session %s\n", d.ID(), state, d.Session)
		if d.State == string(secrets.StateActivationFailed) {
			return fmt.Errorf("device %s: activation failed: %s", d.ID(), d.StateReason)
		}
	}
	return nil
}

func (c *ctl) deviceRemove(args []string) error {
	fs := c.flags("device rm")
	mode := fs.String("spool", "", "what happens to the device's queued messages: `discard` them, or drain (deliver them first)")
	drainTimeout := fs.Duration("drain-timeout", time.Minute, "with -spool drain: how long to wait for the queue to empty")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	id, err := c.deviceArg("device rm", pos)
	if err != nil {
		return err
	}
	params := adminapi.DeviceRemoveParams{DeviceID: id, Spool: *mode}
	switch *mode {
	case adminapi.SpoolDiscard:
	case adminapi.SpoolDrain:
		params.Timeout = drainTimeout
		// The reply comes when the queue is empty or the drain times out.
		c.timeout = max(c.timeout, *drainTimeout+15*time.Second)
	case "":
		return c.usageErr("device rm: -spool is required: discard (drop its queued messages) or drain (deliver them first)")
	default:
		return c.usageErr("device rm: -spool %q: want discard or drain", *mode)
	}
	var rm adminapi.Removed
	msg, err := c.callMsg(adminapi.MethodDeviceRemove, params, &rm)
	if err != nil || c.json {
		return err
	}
	fmt.Fprintln(c.stdout, text(msg))
	return nil
}

func (c *ctl) product(args []string) error {
	if len(args) == 0 {
		return c.usageErr("product: want list, show, add, update or rm")
	}
	sub, rest := args[0], args[1:]
	fs := c.flags("product " + sub)
	switch sub {
	case "list", "ls":
		pos, err := parseInterspersed(fs, rest)
		if err != nil {
			return err
		}
		if len(pos) > 0 {
			return c.usageErr("product list: unexpected argument %q", pos[0])
		}
		var ps []adminapi.Product
		if err := c.callInto(adminapi.MethodProductList, nil, &ps); err != nil || c.json {
			return err
		}
		w := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "PRODUCT\tDIALECT\tPRODUCT SECRET\tDEFAULT PARAMS\tDEVICES")
		for _, p := range ps {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\n", logsafe.Clip(p.ProductKey), logsafe.Clip(p.Dialect), setOrNot(p.HasProductSecret), logsafe.Clip(orDash(p.DefaultConnectParams)), p.Devices)
		}
		return w.Flush()
	case "show", "get":
		pos, err := parseInterspersed(fs, rest)
		if err != nil {
			return err
		}
		if len(pos) != 1 {
			return c.usageErr("product show: want one productKey")
		}
		var p adminapi.Product
		if err := c.callInto(adminapi.MethodProductGet, adminapi.ProductGetParams{ProductKey: pos[0]}, &p); err != nil || c.json {
			return err
		}
		w := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintf(w, "product\t%s\n", logsafe.Clip(p.ProductKey))
		fmt.Fprintf(w, "dialect\t%s\n", logsafe.Clip(p.Dialect))
		fmt.Fprintf(w, "productSecret\t%s\n", setOrNot(p.HasProductSecret))
		fmt.Fprintf(w, "default connect params\t%s\n", logsafe.Clip(orDash(p.DefaultConnectParams)))
		fmt.Fprintf(w, "devices\t%d\n", p.Devices)
		fmt.Fprintf(w, "created\t%s\n", fmtTime(p.Created))
		fmt.Fprintf(w, "updated\t%s\n", fmtTime(p.Updated))
		return w.Flush()
	case "add":
		dialect := fs.String("dialect", "", "the product's cloud `dialect`: aliyun or enos (default: the gateway's)")
		sec := addSecretFlags(fs, "secret", "the productSecret (for dynamic activation of its devices)")
		defaults := fs.String("default-connect-params", "", "Alibaba clientId `params` its devices' cloud sessions carry until a device logs in with its own, e.g. _ss=1,ext=3")
		pos, err := parseInterspersed(fs, rest)
		if err != nil {
			return err
		}
		if len(pos) != 1 {
			return c.usageErr("product add: want one productKey")
		}
		params := adminapi.ProductAddParams{ProductKey: pos[0], Dialect: *dialect, DefaultConnectParams: *defaults}
		if err := c.readSecrets(sec.into(&params.ProductSecret)); err != nil {
			return err
		}
		return c.callPrint(adminapi.MethodProductAdd, params)
	case "update", "set":
		dialect := fs.String("dialect", "", "a new cloud `dialect`: aliyun or enos (only while the product has no devices)")
		sec := addSecretFlags(fs, "secret", "a new productSecret (devices without a deviceSecret activate again with it)")
		defaults := fs.String("default-connect-params", "", "new default Alibaba clientId `params`, e.g. _ss=1,ext=3")
		clearDefaults := fs.Bool("clear-default-connect-params", false, "remove the default connect params")
		pos, err := parseInterspersed(fs, rest)
		if err != nil {
			return err
		}
		if len(pos) != 1 {
			return c.usageErr("product update: want one productKey")
		}
		if *clearDefaults && *defaults != "" {
			return c.usageErr("product update: -default-connect-params and -clear-default-connect-params exclude each other")
		}
		params := adminapi.ProductUpdateParams{ProductKey: pos[0], Dialect: *dialect,
			DefaultConnectParams: adminapi.Optional{Value: *defaults, Clear: *clearDefaults}}
		if err := c.readSecrets(sec.into(&params.ProductSecret)); err != nil {
			return err
		}
		if params.ProductSecret == "" && params.Dialect == "" && params.DefaultConnectParams.IsZero() {
			return c.usageErr("product update: nothing to change (give -secret…, -dialect, -default-connect-params or -clear-default-connect-params)")
		}
		var res adminapi.ProductUpdate
		msg, err := c.callMsg(adminapi.MethodProductUpdate, params, &res)
		if err != nil || c.json {
			return err
		}
		fmt.Fprintln(c.stdout, msg)
		for _, e := range res.Errors {
			fmt.Fprintf(c.stdout, "  %s: %s\n", e.Device, e.Message)
		}
		return nil
	case "rm", "remove":
		pos, err := parseInterspersed(fs, rest)
		if err != nil {
			return err
		}
		if len(pos) != 1 {
			return c.usageErr("product rm: want one productKey")
		}
		return c.callPrint(adminapi.MethodProductRemove, adminapi.ProductRemoveParams{ProductKey: pos[0]})
	}
	return c.usageErr("product %s: unknown (want list, show, add, update or rm)", sub)
}

func (c *ctl) queue(args []string) error {
	if len(args) == 0 {
		return c.usageErr("queue: want stats or purge")
	}
	sub, rest := args[0], args[1:]
	fs := c.flags("queue " + sub)
	pos, err := parseInterspersed(fs, rest)
	if err != nil {
		return err
	}
	switch sub {
	case "stats":
		var params adminapi.QueueStatsParams
		if len(pos) > 0 {
			id, err := c.deviceArg("queue stats", pos)
			if err != nil {
				return err
			}
			params.Device = &id
		}
		var qs adminapi.QueueStats
		if err := c.callInto(adminapi.MethodQueueStats, params, &qs); err != nil || c.json {
			return err
		}
		w := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
		if q := qs.Device; q != nil {
			fmt.Fprintf(w, "device\t%s\n", logsafe.Clip(q.Device))
			fmt.Fprintf(w, "queued\t%d messages, %s\n", q.Depth, humanBytes(q.Bytes))
			if q.Depth > 0 {
				fmt.Fprintf(w, "oldest\t%s (%s old)\n", fmtTime(q.Oldest), (time.Duration(q.OldestAgeSeconds * float64(time.Second))).Round(time.Second))
			}
			fmt.Fprintf(w, "last seq\t%d\n", q.LastSeq)
			fmt.Fprintf(w, "dropped\t%s\n", dropList(q.Dropped))
			fmt.Fprintf(w, "rejected\t%d\n", q.Rejected)
			fmt.Fprintf(w, "dead letters\t%d (%s)\n", q.DeadLetters, humanBytes(q.DeadLetterBytes))
		} else if t := qs.Totals; t != nil {
			fmt.Fprintf(w, "devices\t%d\n", t.Devices)
			fmt.Fprintf(w, "queued\t%d messages, %s of %s (per device at most %s)\n", t.Depth, humanBytes(t.Bytes), humanBytes(t.Budget), humanBytes(t.DeviceBudget))
			fmt.Fprintf(w, "overflow\t%s\n", t.Overflow)
			fmt.Fprintf(w, "appended\t%d\n", t.Appended)
			fmt.Fprintf(w, "acked\t%d\n", t.Acked)
			fmt.Fprintf(w, "dropped\t%s\n", dropList(t.Dropped))
			fmt.Fprintf(w, "rejected\t%d\n", t.Rejected)
			fmt.Fprintf(w, "dead letters\t%d (%s)\n", t.DeadLetters, humanBytes(t.DeadLetterBytes))
			if t.Commits > 0 {
				fmt.Fprintf(w, "commits\t%d (avg %.2f ms, max %.2f ms, %d errors)\n", t.Commits, t.CommitAvgMs, t.CommitMaxMs, t.CommitErrors)
			}
			if t.LastError != "" {
				fmt.Fprintf(w, "last error\t%s\n", text(t.LastError))
			}
		}
		return w.Flush()
	case "purge":
		id, err := c.deviceArg("queue purge", pos)
		if err != nil {
			return err
		}
		return c.callPrint(adminapi.MethodQueuePurge, adminapi.QueuePurgeParams{DeviceID: id})
	}
	return c.usageErr("queue %s: unknown (want stats or purge)", sub)
}

// --- calls ---

// call sends one request and returns a 200 reply; any other code is an
// *adminapi.Error. It connects on the first call.
func (c *ctl) call(method string, params any) (adminapi.Reply, error) {
	if c.client == nil {
		opts, err := c.dialOptions()
		if err != nil {
			return adminapi.Reply{}, err
		}
		cl, err := adminapi.Dial(c.ctx, opts)
		var ce *adminapi.ConnectError
		if errors.As(err, &ce) && strings.HasPrefix(opts.URL, "unix://") {
			err = fmt.Errorf("%w (is edgegw running, and may this user open its admin socket? see -socket)", err)
		}
		if err != nil {
			return adminapi.Reply{}, err
		}
		c.client = cl
	}
	ctx, cancel := context.WithTimeoutCause(c.ctx, c.timeout, fmt.Errorf("no reply from the gateway within %s", c.timeout))
	defer cancel()
	r, err := c.client.Do(ctx, method, params)
	if err != nil {
		return r, err
	}
	return r, r.Err()
}

// callQuiet decodes the reply's data into v without printing it.
func (c *ctl) callQuiet(method string, params, v any) error {
	r, err := c.call(method, params)
	if err != nil {
		return err
	}
	return r.Decode(method, v)
}

// callInto decodes the reply's data into v, and prints it with -json.
func (c *ctl) callInto(method string, params, v any) error {
	r, err := c.call(method, params)
	if err != nil {
		return err
	}
	if c.json {
		return c.printRaw(r.Data)
	}
	return r.Decode(method, v)
}

// callMsg is callInto returning the reply's message.
func (c *ctl) callMsg(method string, params, v any) (string, error) {
	r, err := c.call(method, params)
	if err != nil {
		return "", err
	}
	if c.json {
		return r.Message, c.printRaw(r.Data)
	}
	return r.Message, r.Decode(method, v)
}

// callPrint sends a request and prints the reply's message (or data with
// -json).
func (c *ctl) callPrint(method string, params any) error {
	msg, err := c.callMsg(method, params, nil)
	if err != nil || c.json {
		return err
	}
	fmt.Fprintln(c.stdout, text(msg))
	return nil
}

// callDevice sends a request whose data is a device and prints the message.
func (c *ctl) callDevice(method string, params any) error {
	var d adminapi.Device
	msg, err := c.callMsg(method, params, &d)
	if err != nil || c.json {
		return err
	}
	fmt.Fprintln(c.stdout, text(msg))
	return nil
}

func (c *ctl) printRaw(data json.RawMessage) error {
	if len(data) == 0 {
		data = json.RawMessage("null")
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, data, "", "  "); err != nil {
		return fmt.Errorf("format reply: %w", err)
	}
	buf.WriteByte('\n')
	_, err := c.stdout.Write(buf.Bytes())
	return err
}

func (c *ctl) printJSON(v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = c.stdout.Write(append(b, '\n'))
	return err
}

func (c *ctl) close() {
	if c.client != nil {
		c.client.Close()
		c.client = nil
	}
}

// --- arguments ---

func (c *ctl) flags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet("edgegw ctl "+name, flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	return fs
}

// parseInterspersed parses flags that may come before, between or after the
// positional arguments, and returns the positional ones.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, errUsage
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// deviceArg reads a device given as "PK/DN" or as "PK DN".
func (c *ctl) deviceArg(cmd string, pos []string) (secrets.DeviceID, error) {
	var pk, dn string
	switch len(pos) {
	case 1:
		var ok bool
		if pk, dn, ok = strings.Cut(pos[0], "/"); !ok {
			return secrets.DeviceID{}, c.usageErr("%s: want the device as productKey/deviceName, got %q", cmd, pos[0])
		}
	case 2:
		pk, dn = pos[0], pos[1]
	default:
		return secrets.DeviceID{}, c.usageErr("%s: want one device (productKey/deviceName)", cmd)
	}
	if pk == "" || dn == "" {
		return secrets.DeviceID{}, c.usageErr("%s: want the device as productKey/deviceName", cmd)
	}
	return secrets.DeviceID{ProductKey: pk, DeviceName: dn}, nil
}

// secretFlags are the two ways to give a secret: -NAME - (standard input)
// or -NAME-file F.
type secretFlags struct {
	name  string
	value string // only "-" is accepted
	file  string
}

func addSecretFlags(fs *flag.FlagSet, name, what string) *secretFlags {
	s := &secretFlags{name: name}
	fs.StringVar(&s.value, name, "", "\"-\" reads "+what+" from standard input (never on the command line)")
	fs.StringVar(&s.file, name+"-file", "", "`file` holding "+what+" (first line)")
	return s
}

func (s *secretFlags) given() bool { return s.value != "" || s.file != "" }

// secretArg is a secret flag pair and where its value goes.
type secretArg struct {
	flags *secretFlags
	dst   *string
}

func (s *secretFlags) into(dst *string) secretArg { return secretArg{flags: s, dst: dst} }

// readSecrets reads each given secret into its destination; at most one
// may come from standard input.
func (c *ctl) readSecrets(args ...secretArg) error {
	fromStdin := ""
	for _, a := range args {
		s := a.flags
		switch {
		case s.value != "" && s.file != "":
			return c.usageErr("-%s and -%s-file exclude each other", s.name, s.name)
		case s.value != "" && s.value != "-":
			return c.usageErr("-%s takes only \"-\" (read it from standard input): secrets are never taken on the command line; or use -%s-file FILE", s.name, s.name)
		case s.value == "-":
			if fromStdin != "" {
				return c.usageErr("-%s - and -%s - cannot both read standard input; use a -…-file for one", fromStdin, s.name)
			}
			fromStdin = s.name
			v, err := readSecretLine(c.stdin, "standard input")
			if err != nil {
				return fmt.Errorf("read -%s: %w", s.name, err)
			}
			*a.dst = v
		case s.file != "":
			f, err := os.Open(s.file)
			if err != nil {
				return fmt.Errorf("read -%s-file: %w", s.name, err)
			}
			v, err := readSecretLine(f, s.file)
			f.Close()
			if err != nil {
				return fmt.Errorf("read -%s-file: %w", s.name, err)
			}
			*a.dst = v
		}
	}
	return nil
}

// readSecretLine reads a secret: the first line, without its line end. More
// non-empty lines are an error (a file holding something else).
func readSecretLine(r io.Reader, name string) (string, error) {
	b, err := io.ReadAll(io.LimitReader(r, 64<<10))
	if err != nil {
		return "", fmt.Errorf("%s: %w", name, err)
	}
	line, rest, _ := strings.Cut(string(b), "\n")
	line = strings.TrimSuffix(line, "\r")
	if strings.TrimSpace(rest) != "" {
		return "", fmt.Errorf("%s: holds more than one line (want just the secret)", name)
	}
	if line == "" {
		return "", fmt.Errorf("%s: empty", name)
	}
	return line, nil
}

// --- transport ---

// dialOptions turns the global flags into how to reach the admin topic.
func (c *ctl) dialOptions() (opts adminapi.Options, err error) {
	opts.Name = "edgegw-ctl"
	if c.broker == "" {
		p, err := filepath.Abs(c.socket)
		if err != nil {
			return opts, fmt.Errorf("socket path %q: %w", c.socket, err)
		}
		opts.URL = "unix://" + p
		return opts, nil
	}
	u, err := url.Parse(c.broker)
	if err != nil || u.Host == "" {
		return opts, fmt.Errorf("-broker %q: want tcp://host:port or tls://host:port", c.broker)
	}
	opts.URL = c.broker
	switch u.Scheme {
	case "tcp", "mqtt":
	case "tls", "ssl", "mqtts":
		opts.TLS = &tls.Config{MinVersion: tls.VersionTLS12, ServerName: u.Hostname()}
		if c.caFile != "" {
			pem, err := os.ReadFile(c.caFile)
			if err != nil {
				return opts, fmt.Errorf("-cafile: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return opts, fmt.Errorf("-cafile %s: no PEM certificate found", c.caFile)
			}
			opts.TLS.RootCAs = pool
		}
	default:
		return opts, fmt.Errorf("-broker %q: scheme %q not supported (want tcp or tls)", c.broker, u.Scheme)
	}
	if c.user != "" {
		b, err := os.ReadFile(c.passwordFile)
		if err != nil {
			return opts, fmt.Errorf("read -password-file: %w", err)
		}
		line, _, _ := strings.Cut(string(b), "\n")
		opts.User, opts.Password = c.user, strings.TrimSpace(line)
		if opts.Password == "" {
			return opts, fmt.Errorf("-password-file %s: empty", c.passwordFile)
		}
	}
	return opts, nil
}

// --- formatting ---

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func setOrNot(b bool) string {
	if b {
		return "set"
	}
	return "-"
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format(time.DateTime)
}

// countList prints a count map as "a 1, b 2", sorted by name, zeros kept.
func countList(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	return strings.Join(parts, ", ")
}

func dropList(m map[string]uint64) string {
	keys := make([]string, 0, len(m))
	var total uint64
	for k, n := range m {
		keys = append(keys, k)
		total += n
	}
	if total == 0 {
		return "none"
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		if m[k] > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
		}
	}
	return strings.Join(parts, ", ")
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
