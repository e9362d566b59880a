package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
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
	"sync"
	"text/tabwriter"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgegw/edgegw/gateway"
	"github.com/edgegw/edgegw/localbroker"
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
                   [-client-id C] [-disabled]
  device update PK/DN [-secret-file F | -secret -] [-local-password-file F | -local-password -]
                   [-clear-local-password] [-client-id C | -clear-client-id] [-enable | -disable]
  device rm PK/DN -spool discard|drain [-drain-timeout D]
  product list
  product add PK [-dialect aliyun|enos] [-secret-file F | -secret -]
  product rm PK
  queue stats [PK/DN]
  queue purge PK/DN
  import [-dialect D] [-disabled] [-batch N] FILE.csv    the console's ProductKey,DeviceName,DeviceSecret export

Secrets are never taken on the command line: "-secret -" reads one line from
standard input, "-secret-file F" reads it from a file. -json prints the reply's
data as JSON. The exit status is 0 on success, 1 when the gateway refused
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

	client *adminClient
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
	var re *replyError
	if c.json && errors.As(err, &re) {
		// Scripts get the refusal as JSON too; the one-line error still
		// goes to stderr and the exit status is 1.
		_ = c.printJSON(re)
	}
	return err
}

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
	var st gateway.AdminStatus
	if err := c.callInto(gateway.MethodGatewayStatus, nil, &st); err != nil || c.json {
		return err
	}
	w := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "edgegw\t%s, up %s (since %s)\n", st.Version,
		(time.Duration(st.UptimeSeconds * float64(time.Second))).Round(time.Second), st.Started)
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
	fmt.Fprintf(w, "cloud\t%s (%s): %s, %d/%d sessions connected", st.Cloud.Endpoint, st.Cloud.Dialect, reach, st.Cloud.Connected, st.Cloud.Sessions)
	if !st.Cloud.LastConnect.IsZero() {
		fmt.Fprintf(w, ", last connect %s", st.Cloud.LastConnect.Local().Format(time.DateTime))
	}
	fmt.Fprintln(w)
	for _, e := range st.Cloud.Errors {
		fmt.Fprintf(w, "\t%d× %s\n", e.Sessions, e.Error)
	}
	sp := st.Spool
	fmt.Fprintf(w, "spool\t%d messages, %s of %s (%s); appended %d, acked %d; dropped %s; %d dead letters\n",
		sp.Depth, humanBytes(sp.Bytes), humanBytes(sp.Budget), sp.Overflow, sp.Appended, sp.Acked, dropList(sp.Dropped), sp.DeadLetters)
	if sp.LastError != "" || sp.DiskFull {
		fmt.Fprintf(w, "\tlast error: %s (disk full: %t)\n", sp.LastError, sp.DiskFull)
	}
	fmt.Fprintf(w, "local\t%d clients connected, %d messages in, %d connects refused\n", st.Local.Clients, st.Local.MessagesIn, st.Local.Refused)
	return w.Flush()
}

func (c *ctl) device(args []string) error {
	if len(args) == 0 {
		return c.usageErr("device: want list, show, add, update or rm")
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
	case "import":
		return c.importCmd(rest)
	default:
		return c.usageErr("device %s: unknown (want list, show, add, update or rm)", sub)
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
	if *limit < 1 || *limit > gateway.AdminListMax {
		return c.usageErr("device list: -limit %d: want 1-%d", *limit, gateway.AdminListMax)
	}
	var out gateway.AdminDeviceList
	cursor := *after
	for {
		params := map[string]any{"limit": *limit}
		if *product != "" {
			params["productKey"] = *product
		}
		if *state != "" {
			params["state"] = *state
		}
		if cursor != "" {
			params["after"] = cursor
		}
		var page gateway.AdminDeviceList
		if err := c.callQuiet(gateway.MethodDeviceList, params, &page); err != nil {
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
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", d.ID(), state, yesNo(!d.Disabled), d.Session, d.Queued,
			setOrNot(d.HasDeviceSecret), setOrNot(d.HasLocalPassword))
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if out.Next != "" {
		fmt.Fprintf(c.stdout, "(more: edgegw ctl device list -after %s, or -all)\n", out.Next)
	}
	return nil
}

func (c *ctl) deviceShow(args []string) error {
	fs := c.flags("device show")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	params, err := c.deviceArg("device show", pos)
	if err != nil {
		return err
	}
	var det gateway.AdminDeviceDetail
	if err := c.callInto(gateway.MethodDeviceGet, params, &det); err != nil || c.json {
		return err
	}
	d := det.Device
	w := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "device\t%s\n", d.ID())
	fmt.Fprintf(w, "dialect\t%s\n", d.Dialect)
	state := d.State
	if d.StateReason != "" {
		state += " (" + d.StateReason + ")"
	}
	fmt.Fprintf(w, "state\t%s\n", state)
	fmt.Fprintf(w, "enabled\t%s\n", yesNo(!d.Disabled))
	if d.Removing {
		fmt.Fprintf(w, "removing\tyes (waiting for its queue to drain)\n")
	}
	fmt.Fprintf(w, "deviceSecret\t%s\n", setOrNot(d.HasDeviceSecret))
	fmt.Fprintf(w, "local password\t%s\n", setOrNot(d.HasLocalPassword))
	if d.ClientID != "" {
		fmt.Fprintf(w, "cloud clientId\t%s\n", d.ClientID)
	}
	fmt.Fprintf(w, "created\t%s\n", fmtTime(d.Created))
	fmt.Fprintf(w, "updated\t%s\n", fmtTime(d.Updated))
	if !d.ActivatedAt.IsZero() {
		fmt.Fprintf(w, "activated\t%s\n", fmtTime(d.ActivatedAt))
	}
	if s := det.Session; s != nil {
		fmt.Fprintf(w, "session\t%s (%d connects of %d attempts)\n", s.State, s.Connects, s.Attempts)
		if s.ClientID != "" {
			fmt.Fprintf(w, "  clientId\t%s\n", s.ClientID)
		}
		if !s.LastConnect.IsZero() {
			fmt.Fprintf(w, "  last connect\t%s\n", fmtTime(s.LastConnect))
		}
		if !s.NextAttempt.IsZero() {
			fmt.Fprintf(w, "  next attempt\t%s\n", fmtTime(s.NextAttempt))
		}
		if s.LastError != "" {
			fmt.Fprintf(w, "  last error\t%s\n", s.LastError)
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
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	params, err := c.deviceArg("device add", pos)
	if err != nil {
		return err
	}
	if err := c.readSecrets(map[string]*secretFlags{"deviceSecret": sec, "localPassword": pw}, params); err != nil {
		return err
	}
	if *clientID != "" {
		params["clientId"] = *clientID
	}
	if *disabled {
		params["disabled"] = true
	}
	return c.callDevice(gateway.MethodDeviceAdd, params)
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
	params, err := c.deviceArg("device update", pos)
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
	if err := c.readSecrets(map[string]*secretFlags{"deviceSecret": sec, "localPassword": pw}, params); err != nil {
		return err
	}
	if *clearPW {
		params["localPassword"] = nil
	}
	if *clientID != "" {
		params["clientId"] = *clientID
	}
	if *clearCID {
		params["clientId"] = nil
	}
	if *enable || *disable {
		params["disabled"] = *disable
	}
	if len(params) == 2 {
		return c.usageErr("device update: nothing to change (give -secret…, -local-password…, -client-id, -enable or -disable)")
	}
	return c.callDevice(gateway.MethodDeviceUpdate, params)
}

func (c *ctl) deviceRemove(args []string) error {
	fs := c.flags("device rm")
	mode := fs.String("spool", "", "what happens to the device's queued messages: `discard` them, or drain (deliver them first)")
	drainTimeout := fs.Duration("drain-timeout", time.Minute, "with -spool drain: how long to wait for the queue to empty")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	params, err := c.deviceArg("device rm", pos)
	if err != nil {
		return err
	}
	switch *mode {
	case "discard":
	case "drain":
		params["timeout"] = drainTimeout.String()
		// The reply comes when the queue is empty or the drain times out.
		c.timeout = max(c.timeout, *drainTimeout+15*time.Second)
	case "":
		return c.usageErr("device rm: -spool is required: discard (drop its queued messages) or drain (deliver them first)")
	default:
		return c.usageErr("device rm: -spool %q: want discard or drain", *mode)
	}
	params["spool"] = *mode
	var rm gateway.AdminRemoved
	msg, err := c.callMsg(gateway.MethodDeviceRemove, params, &rm)
	if err != nil || c.json {
		return err
	}
	fmt.Fprintln(c.stdout, msg)
	return nil
}

func (c *ctl) product(args []string) error {
	if len(args) == 0 {
		return c.usageErr("product: want list, add or rm")
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
		var ps []gateway.AdminProduct
		if err := c.callInto(gateway.MethodProductList, nil, &ps); err != nil || c.json {
			return err
		}
		w := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "PRODUCT\tDIALECT\tPRODUCT SECRET\tDEVICES")
		for _, p := range ps {
			fmt.Fprintf(w, "%s\t%s\t%s\t%d\n", p.ProductKey, p.Dialect, setOrNot(p.HasProductSecret), p.Devices)
		}
		return w.Flush()
	case "add":
		dialect := fs.String("dialect", "", "the product's cloud `dialect`: aliyun or enos (default: the gateway's)")
		sec := addSecretFlags(fs, "secret", "the productSecret (for dynamic activation of its devices)")
		pos, err := parseInterspersed(fs, rest)
		if err != nil {
			return err
		}
		if len(pos) != 1 {
			return c.usageErr("product add: want one productKey")
		}
		params := map[string]any{"productKey": pos[0]}
		if *dialect != "" {
			params["dialect"] = *dialect
		}
		if err := c.readSecrets(map[string]*secretFlags{"productSecret": sec}, params); err != nil {
			return err
		}
		return c.callPrint(gateway.MethodProductAdd, params)
	case "rm", "remove":
		pos, err := parseInterspersed(fs, rest)
		if err != nil {
			return err
		}
		if len(pos) != 1 {
			return c.usageErr("product rm: want one productKey")
		}
		return c.callPrint(gateway.MethodProductRemove, map[string]any{"productKey": pos[0]})
	}
	return c.usageErr("product %s: unknown (want list, add or rm)", sub)
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
		var params map[string]any
		if len(pos) > 0 {
			if params, err = c.deviceArg("queue stats", pos); err != nil {
				return err
			}
		}
		var qs gateway.AdminQueueStats
		if err := c.callInto(gateway.MethodQueueStats, params, &qs); err != nil || c.json {
			return err
		}
		w := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
		if q := qs.Device; q != nil {
			fmt.Fprintf(w, "device\t%s\n", q.Device)
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
				fmt.Fprintf(w, "last error\t%s\n", t.LastError)
			}
		}
		return w.Flush()
	case "purge":
		params, err := c.deviceArg("queue purge", pos)
		if err != nil {
			return err
		}
		return c.callPrint(gateway.MethodQueuePurge, params)
	}
	return c.usageErr("queue %s: unknown (want stats or purge)", sub)
}

// --- calls ---

// replyError is a reply with a code other than 200.
type replyError struct {
	Code    int             `json:"code"`
	Message string          `json:"message"`
	Data    json.RawMessage `json:"data,omitempty"`
}

func (e *replyError) Error() string { return fmt.Sprintf("%d %s", e.Code, e.Message) }

// call sends one request and returns a 200 reply; any other code is a
// *replyError.
func (c *ctl) call(method string, params map[string]any) (gateway.AdminReply, error) {
	if c.client == nil {
		spec, err := c.connSpec()
		if err != nil {
			return gateway.AdminReply{}, err
		}
		cl, err := dialAdmin(c.ctx, spec)
		if err != nil {
			return gateway.AdminReply{}, err
		}
		c.client = cl
	}
	var p any
	if params != nil {
		p = params
	}
	r, err := c.client.call(c.ctx, method, p, c.timeout)
	if err != nil {
		return r, err
	}
	if r.Code != gateway.CodeOK {
		return r, &replyError{Code: r.Code, Message: r.Message, Data: r.Data}
	}
	return r, nil
}

// callQuiet decodes the reply's data into v without printing it.
func (c *ctl) callQuiet(method string, params map[string]any, v any) error {
	r, err := c.call(method, params)
	if err != nil {
		return err
	}
	if v != nil && len(r.Data) > 0 {
		if err := json.Unmarshal(r.Data, v); err != nil {
			return fmt.Errorf("decode %s reply: %w", method, err)
		}
	}
	return nil
}

// callInto decodes the reply's data into v, and prints it with -json.
func (c *ctl) callInto(method string, params map[string]any, v any) error {
	r, err := c.call(method, params)
	if err != nil {
		return err
	}
	if c.json {
		return c.printRaw(r.Data)
	}
	if v != nil && len(r.Data) > 0 {
		if err := json.Unmarshal(r.Data, v); err != nil {
			return fmt.Errorf("decode %s reply: %w", method, err)
		}
	}
	return nil
}

// callMsg is callInto returning the reply's message.
func (c *ctl) callMsg(method string, params map[string]any, v any) (string, error) {
	r, err := c.call(method, params)
	if err != nil {
		return "", err
	}
	if c.json {
		return r.Message, c.printRaw(r.Data)
	}
	if v != nil && len(r.Data) > 0 {
		if err := json.Unmarshal(r.Data, v); err != nil {
			return "", fmt.Errorf("decode %s reply: %w", method, err)
		}
	}
	return r.Message, nil
}

// callPrint sends a request and prints the reply's message (or data with
// -json).
func (c *ctl) callPrint(method string, params map[string]any) error {
	msg, err := c.callMsg(method, params, nil)
	if err != nil || c.json {
		return err
	}
	fmt.Fprintln(c.stdout, msg)
	return nil
}

// callDevice sends a request whose data is a device and prints the message.
func (c *ctl) callDevice(method string, params map[string]any) error {
	var d gateway.AdminDevice
	msg, err := c.callMsg(method, params, &d)
	if err != nil || c.json {
		return err
	}
	fmt.Fprintln(c.stdout, msg)
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
		c.client.close()
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
func (c *ctl) deviceArg(cmd string, pos []string) (map[string]any, error) {
	var pk, dn string
	switch len(pos) {
	case 1:
		var ok bool
		if pk, dn, ok = strings.Cut(pos[0], "/"); !ok {
			return nil, c.usageErr("%s: want the device as productKey/deviceName, got %q", cmd, pos[0])
		}
	case 2:
		pk, dn = pos[0], pos[1]
	default:
		return nil, c.usageErr("%s: want one device (productKey/deviceName)", cmd)
	}
	if pk == "" || dn == "" {
		return nil, c.usageErr("%s: want the device as productKey/deviceName", cmd)
	}
	return map[string]any{"productKey": pk, "deviceName": dn}, nil
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

// readSecrets reads each given secret into params[key]; at most one may come
// from standard input.
func (c *ctl) readSecrets(flags map[string]*secretFlags, params map[string]any) error {
	keys := make([]string, 0, len(flags))
	for k := range flags {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	fromStdin := ""
	for _, key := range keys {
		s := flags[key]
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
			params[key] = v
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
			params[key] = v
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

// connSpec says how to reach the admin topic.
type connSpec struct {
	url      string
	user     string
	password string
	tls      *tls.Config
}

func (c *ctl) connSpec() (spec connSpec, err error) {
	if c.broker == "" {
		p, err := filepath.Abs(c.socket)
		if err != nil {
			return spec, fmt.Errorf("socket path %q: %w", c.socket, err)
		}
		return connSpec{url: "unix://" + p}, nil
	}
	u, err := url.Parse(c.broker)
	if err != nil || u.Host == "" {
		return spec, fmt.Errorf("-broker %q: want tcp://host:port or tls://host:port", c.broker)
	}
	spec.url = c.broker
	switch u.Scheme {
	case "tcp", "mqtt":
	case "tls", "ssl", "mqtts":
		spec.tls = &tls.Config{MinVersion: tls.VersionTLS12, ServerName: u.Hostname()}
		if c.caFile != "" {
			pem, err := os.ReadFile(c.caFile)
			if err != nil {
				return spec, fmt.Errorf("-cafile: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return spec, fmt.Errorf("-cafile %s: no PEM certificate found", c.caFile)
			}
			spec.tls.RootCAs = pool
		}
	default:
		return spec, fmt.Errorf("-broker %q: scheme %q not supported (want tcp or tls)", c.broker, u.Scheme)
	}
	if c.user != "" {
		b, err := os.ReadFile(c.passwordFile)
		if err != nil {
			return spec, fmt.Errorf("read -password-file: %w", err)
		}
		line, _, _ := strings.Cut(string(b), "\n")
		spec.user, spec.password = c.user, strings.TrimSpace(line)
		if spec.password == "" {
			return spec, fmt.Errorf("-password-file %s: empty", c.passwordFile)
		}
	}
	return spec, nil
}

// adminClient is an MQTT 3.1.1 client of the admin topic. Replies arrive on
// the shared response topic and are matched to requests by id.
type adminClient struct {
	c       mqtt.Client
	url     string
	mu      sync.Mutex
	pending map[string]chan gateway.AdminReply
	lost    chan struct{}
	lostErr error
}

func dialAdmin(ctx context.Context, spec connSpec) (*adminClient, error) {
	a := &adminClient{url: spec.url, pending: map[string]chan gateway.AdminReply{}, lost: make(chan struct{})}
	o := mqtt.NewClientOptions().AddBroker(spec.url).
		SetClientID("edgegw-ctl-" + randomID(6)).
		SetProtocolVersion(4).SetCleanSession(true).
		SetAutoReconnect(false).SetConnectRetry(false).SetOrderMatters(false).
		SetKeepAlive(30 * time.Second).SetConnectTimeout(10 * time.Second).SetWriteTimeout(10 * time.Second).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			a.mu.Lock()
			if a.lostErr == nil {
				a.lostErr = err
				close(a.lost)
			}
			a.mu.Unlock()
		})
	if spec.tls != nil {
		o.SetTLSConfig(spec.tls)
	}
	if spec.user != "" {
		o.SetUsername(spec.user)
		o.SetPassword(spec.password)
	}
	a.c = mqtt.NewClient(o)
	hint := ""
	if strings.HasPrefix(spec.url, "unix://") {
		hint = " (is edgegw running, and may this user open its admin socket? see -socket)"
	}
	if err := wait(ctx, a.c.Connect(), 15*time.Second); err != nil {
		a.c.Disconnect(0)
		return nil, fmt.Errorf("connect to %s: %w%s", spec.url, err, hint)
	}
	tok := a.c.Subscribe(localbroker.AdminResponseTopic, 1, a.onReply)
	if err := wait(ctx, tok, 10*time.Second); err != nil {
		a.close()
		return nil, fmt.Errorf("subscribe to %s: %w", localbroker.AdminResponseTopic, err)
	}
	if st, ok := tok.(*mqtt.SubscribeToken); ok {
		if code := st.Result()[localbroker.AdminResponseTopic]; code >= 0x80 {
			a.close()
			return nil, fmt.Errorf("subscribe to %s: refused: not an admin identity", localbroker.AdminResponseTopic)
		}
	}
	return a, nil
}

func (a *adminClient) onReply(_ mqtt.Client, m mqtt.Message) {
	var r gateway.AdminReply
	if json.Unmarshal(m.Payload(), &r) != nil {
		return
	}
	var id string
	if json.Unmarshal(r.ID, &id) != nil {
		return // another client's reply, or one to a request without id
	}
	a.mu.Lock()
	ch := a.pending[id]
	delete(a.pending, id)
	a.mu.Unlock()
	if ch != nil {
		ch <- r // buffered: never blocks
	}
}

// call publishes one request and waits for the reply with its id.
func (a *adminClient) call(ctx context.Context, method string, params any, timeout time.Duration) (gateway.AdminReply, error) {
	id := randomID(12)
	payload, err := json.Marshal(gateway.AdminCall{ID: id, Method: method, Params: params})
	if err != nil {
		return gateway.AdminReply{}, fmt.Errorf("encode %s request: %w", method, err)
	}
	ch := make(chan gateway.AdminReply, 1)
	a.mu.Lock()
	a.pending[id] = ch
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		delete(a.pending, id)
		a.mu.Unlock()
	}()
	if err := wait(ctx, a.c.Publish(localbroker.AdminRequestTopic, 1, false, payload), 10*time.Second); err != nil {
		return gateway.AdminReply{}, fmt.Errorf("send %s request: %w", method, a.lostOr(err))
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case r := <-ch:
		return r, nil
	case <-a.lost:
		return gateway.AdminReply{}, fmt.Errorf("%s: %w", method, a.lostOr(nil))
	case <-ctx.Done():
		return gateway.AdminReply{}, fmt.Errorf("%s: %w", method, ctx.Err())
	case <-t.C:
		return gateway.AdminReply{}, fmt.Errorf("%s: no reply from the gateway within %s", method, timeout)
	}
}

func (a *adminClient) lostOr(err error) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.lostErr != nil {
		return fmt.Errorf("the gateway closed the connection (%v): is this an admin identity?", a.lostErr)
	}
	return err
}

func (a *adminClient) close() { a.c.Disconnect(250) }

// wait waits for a paho token, bounded by d and ctx.
func wait(ctx context.Context, tok mqtt.Token, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-tok.Done():
		return tok.Error()
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return fmt.Errorf("timed out after %s", d)
	}
}

func randomID(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// --- formatting ---

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
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
