package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/edgegw/edgegw/gateway/config"
	"github.com/edgegw/edgegw/localbroker"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink"
	"github.com/edgegw/edgegw/uplink/spool"
)

// Admin API methods (see design §4, "Admin topic").
const (
	MethodGatewayStatus = "gateway.status"
	MethodDeviceList    = "device.list"
	MethodDeviceGet     = "device.get"
	MethodDeviceAdd     = "device.add"
	MethodDeviceUpdate  = "device.update"
	MethodDeviceRemove  = "device.remove"
	MethodDeviceImport  = "device.import"
	MethodProductAdd    = "product.add"
	MethodProductRemove = "product.remove"
	MethodProductList   = "product.list"
	MethodQueueStats    = "queue.stats"
	MethodQueuePurge    = "queue.purge"
)

// Admin reply codes; they follow HTTP meaning.
const (
	CodeOK         = 200
	CodeBadRequest = 400
	CodeForbidden  = 403
	CodeNotFound   = 404
	CodeConflict   = 409
	CodeInternal   = 500
)

// Admin API limits.
const (
	// AdminListMax is the largest page device.list returns.
	AdminListMax = 1000
	// AdminImportMax is the most rows one device.import request may carry.
	AdminImportMax = 1000
	// AdminDrainMax bounds device.remove's drain timeout.
	AdminDrainMax = time.Hour

	adminListDefault  = 100
	adminDrainDefault = time.Minute
	adminDrainPoll    = 100 * time.Millisecond
	adminIDMax        = 128
	adminIdentMax     = 128
	secretShapeMax    = 512
	localPasswordMax  = 256
)

// AdminCall is the JSON of a request published to
// localbroker.AdminRequestTopic. ID is echoed in the reply; over MQTT 3.1.1
// it is the only way to match a reply on the shared response topic, so it
// should be unique.
type AdminCall struct {
	ID     string `json:"id,omitempty"`
	Method string `json:"method"`
	Params any    `json:"params,omitempty"`
}

// AdminReply is the JSON of every admin reply. Code follows HTTP meaning
// (200, 400, 403, 404, 409, 500); Message names the outcome or the problem;
// Data is the method's result (present on success, and on some errors).
type AdminReply struct {
	ID      json.RawMessage `json:"id,omitempty"`
	Code    int             `json:"code"`
	Message string          `json:"message"`
	Data    json.RawMessage `json:"data,omitempty"`
}

// AdminStatus is the data of gateway.status.
type AdminStatus struct {
	Version       string  `json:"version"`
	Started       string  `json:"started"`
	UptimeSeconds float64 `json:"uptimeSeconds"`
	// Devices counts registered devices by registry state, and those
	// disabled.
	Devices AdminDeviceCounts `json:"devices"`
	// Sessions counts cloud sessions by state (idle, connecting, connected,
	// backoff, auth-failed, stopped).
	Sessions map[string]int `json:"sessions"`
	Cloud    AdminCloud     `json:"cloud"`
	Spool    AdminTotals    `json:"spool"`
	Local    AdminLocal     `json:"local"`
}

// AdminDeviceCounts counts the registry's devices.
type AdminDeviceCounts struct {
	Total    int            `json:"total"`
	Disabled int            `json:"disabled"`
	ByState  map[string]int `json:"byState"`
}

// AdminCloud describes how the cloud endpoint is reached.
type AdminCloud struct {
	Endpoint string `json:"endpoint"`
	Dialect  string `json:"dialect"`
	// Sessions and Connected count cloud sessions, all and up.
	Sessions  int `json:"sessions"`
	Connected int `json:"connected"`
	// Reachable is true when at least one session is up, false when there
	// are sessions and none is up, absent when there are no sessions.
	Reachable   *bool     `json:"reachable,omitempty"`
	LastConnect time.Time `json:"lastConnect,omitzero"`
	LastPuback  time.Time `json:"lastPuback,omitzero"`
	// Errors are the last errors of sessions that are not up, most
	// frequent first (at most 5).
	Errors []AdminErrorCount `json:"errors,omitempty"`
}

// AdminErrorCount is one distinct session error and how many sessions
// report it.
type AdminErrorCount struct {
	Error    string `json:"error"`
	Sessions int    `json:"sessions"`
}

// AdminLocal describes the local broker.
type AdminLocal struct {
	Clients    int64  `json:"clients"`
	MessagesIn uint64 `json:"messagesIn"`
	Refused    uint64 `json:"connectsRefused"`
}

// AdminTotals is the spool's state (gateway.status, queue.stats).
type AdminTotals struct {
	Devices            int               `json:"devices"`
	Depth              int               `json:"depth"`
	Bytes              int64             `json:"bytes"`
	Budget             int64             `json:"budget"`
	DeviceBudget       int64             `json:"deviceBudget"`
	Overflow           string            `json:"overflow"`
	Dropped            map[string]uint64 `json:"dropped"`
	Rejected           uint64            `json:"rejected"`
	DeadLetters        int               `json:"deadLetters"`
	DeadLetterBytes    int64             `json:"deadLetterBytes"`
	DeadLettersEvicted uint64            `json:"deadLettersEvicted"`
	Appended           uint64            `json:"appended"`
	Acked              uint64            `json:"acked"`
	Commits            uint64            `json:"commits"`
	CommitErrors       uint64            `json:"commitErrors"`
	CommitAvgMs        float64           `json:"commitAvgMs"`
	CommitMaxMs        float64           `json:"commitMaxMs"`
	LastError          string            `json:"lastError,omitempty"`
	DiskFull           bool              `json:"diskFull"`
	FileSize           int64             `json:"fileSize"`
}

// AdminDevice is a device as admin replies show it: never a secret, only
// whether one is set.
type AdminDevice struct {
	ProductKey       string    `json:"productKey"`
	DeviceName       string    `json:"deviceName"`
	Dialect          string    `json:"dialect,omitempty"`
	ClientID         string    `json:"clientId,omitempty"`
	State            string    `json:"state"`
	StateReason      string    `json:"stateReason,omitempty"`
	Disabled         bool      `json:"disabled"`
	HasDeviceSecret  bool      `json:"hasDeviceSecret"`
	HasLocalPassword bool      `json:"hasLocalPassword"`
	Session          string    `json:"session"` // the cloud session's state, or "none"
	Queued           int       `json:"queued"`
	Removing         bool      `json:"removing,omitempty"` // a device.remove with spool "drain" is waiting
	Created          time.Time `json:"created,omitzero"`
	Updated          time.Time `json:"updated,omitzero"`
	ActivatedAt      time.Time `json:"activatedAt,omitzero"`
}

// ID returns "productKey/deviceName".
func (d AdminDevice) ID() string { return d.ProductKey + "/" + d.DeviceName }

// AdminDeviceList is the data of device.list. Next, when set, is the After
// of the next page.
type AdminDeviceList struct {
	Devices []AdminDevice `json:"devices"`
	Next    string        `json:"next,omitempty"`
}

// AdminDeviceDetail is the data of device.get.
type AdminDeviceDetail struct {
	Device  AdminDevice   `json:"device"`
	Session *AdminSession `json:"session,omitempty"`
	Queue   AdminQueue    `json:"queue"`
}

// AdminSession is a cloud session's status.
type AdminSession struct {
	State         string    `json:"state"`
	Dialect       string    `json:"dialect"`
	ClientID      string    `json:"clientId,omitempty"`
	LastError     string    `json:"lastError,omitempty"`
	Attempts      uint64    `json:"attempts"`
	Connects      uint64    `json:"connects"`
	LastConnect   time.Time `json:"lastConnect,omitzero"`
	NextAttempt   time.Time `json:"nextAttempt,omitzero"`
	InFlight      int       `json:"inFlight"`
	LastPuback    time.Time `json:"lastPuback,omitzero"`
	Sent          uint64    `json:"sent"`
	Resent        uint64    `json:"resent"`
	DeadLettered  uint64    `json:"deadLettered"`
	Subscriptions int       `json:"subscriptions"`
}

// AdminQueue is one device's spool queue.
type AdminQueue struct {
	Device             string            `json:"device"`
	Depth              int               `json:"depth"`
	Bytes              int64             `json:"bytes"`
	Oldest             time.Time         `json:"oldest,omitzero"`
	OldestAgeSeconds   float64           `json:"oldestAgeSeconds"`
	LastSeq            uint64            `json:"lastSeq"`
	PendingAcks        int               `json:"pendingAcks"`
	LastAck            time.Time         `json:"lastAck,omitzero"`
	Dropped            map[string]uint64 `json:"dropped"`
	Rejected           uint64            `json:"rejected"`
	DeadLetters        int               `json:"deadLetters"`
	DeadLetterBytes    int64             `json:"deadLetterBytes"`
	DeadLettersEvicted uint64            `json:"deadLettersEvicted"`
}

// AdminQueueStats is the data of queue.stats: Device for one device, else
// Totals.
type AdminQueueStats struct {
	Device *AdminQueue  `json:"device,omitempty"`
	Totals *AdminTotals `json:"totals,omitempty"`
}

// AdminProduct is a product as admin replies show it.
type AdminProduct struct {
	ProductKey       string    `json:"productKey"`
	Dialect          string    `json:"dialect"`
	HasProductSecret bool      `json:"hasProductSecret"`
	Devices          int       `json:"devices"`
	Created          time.Time `json:"created,omitzero"`
	Updated          time.Time `json:"updated,omitzero"`
}

// AdminRemoved is the data of device.remove (also on a drain that did not
// finish: State "disabled", with the messages still queued).
type AdminRemoved struct {
	Device    string `json:"device"`
	State     string `json:"state"` // "removed", or "disabled" when a drain did not finish
	Spool     string `json:"spool"` // "discard" or "drain"
	Discarded int    `json:"discarded"`
	Queued    int    `json:"queued"`
	Waited    string `json:"waited,omitempty"`
}

// AdminPurged is the data of queue.purge.
type AdminPurged struct {
	Device string `json:"device"`
	Purged int    `json:"purged"`
}

// AdminImportRow is one device of a device.import request. It carries a
// deviceSecret: never log it.
type AdminImportRow struct {
	Line         int    `json:"line,omitempty"`
	ProductKey   string `json:"productKey"`
	DeviceName   string `json:"deviceName"`
	DeviceSecret string `json:"deviceSecret,omitempty"`
}

// AdminImportResult is the data of device.import.
type AdminImportResult struct {
	Added         int             `json:"added"`
	Unchanged     int             `json:"unchanged"`
	Updated       int             `json:"updated"`
	Failed        int             `json:"failed"`
	Errors        []AdminRowError `json:"errors,omitempty"`
	ProductsAdded []string        `json:"productsAdded,omitempty"`
}

// AdminRowError is a device.import row that failed.
type AdminRowError struct {
	Line    int    `json:"line,omitempty"`
	Device  string `json:"device,omitempty"`
	Code    int    `json:"code"`
	Message string `json:"message"`
}

// AdminRowResult is what happened to one import row.
type AdminRowResult string

// Import row outcomes.
const (
	RowAdded     AdminRowResult = "added"
	RowUnchanged AdminRowResult = "unchanged"
	RowUpdated   AdminRowResult = "updated"
	RowFailed    AdminRowResult = "failed"
)

// apiError is a request that cannot be served: a code and a message naming
// the problem. Messages never contain a secret.
type apiError struct {
	code int
	msg  string
	data any
}

func (e *apiError) Error() string { return fmt.Sprintf("%d %s", e.code, e.msg) }

func badRequest(format string, args ...any) *apiError {
	return &apiError{code: CodeBadRequest, msg: fmt.Sprintf(format, args...)}
}

func notFound(format string, args ...any) *apiError {
	return &apiError{code: CodeNotFound, msg: fmt.Sprintf(format, args...)}
}

func conflict(format string, args ...any) *apiError {
	return &apiError{code: CodeConflict, msg: fmt.Sprintf(format, args...)}
}

// errAsync tells HandleAdmin that the handler replies later itself.
var errAsync = errors.New("reply follows asynchronously")

// result is a handler's success: the reply's message and data.
type result struct {
	msg  string
	data any
}

// call is one admin request being served.
type call struct {
	who      localbroker.Identity
	clientID string
	id       json.RawMessage
	method   string
	topic    string // where the reply goes
	corr     []byte
	start    time.Time
}

type handler func(*admin, *call, *params) (result, error)

// adminMethod is a method's handler and whether it changes anything (such
// methods are serialized and audited).
type adminMethod struct {
	h      handler
	change bool
}

var adminMethods = map[string]adminMethod{
	MethodGatewayStatus: {h: (*admin).status},
	MethodDeviceList:    {h: (*admin).deviceList},
	MethodDeviceGet:     {h: (*admin).deviceGet},
	MethodDeviceAdd:     {h: (*admin).deviceAdd, change: true},
	MethodDeviceUpdate:  {h: (*admin).deviceUpdate, change: true},
	MethodDeviceRemove:  {h: (*admin).deviceRemove, change: true},
	MethodDeviceImport:  {h: (*admin).deviceImport, change: true},
	MethodProductAdd:    {h: (*admin).productAdd, change: true},
	MethodProductRemove: {h: (*admin).productRemove, change: true},
	MethodProductList:   {h: (*admin).productList},
	MethodQueueStats:    {h: (*admin).queueStats},
	MethodQueuePurge:    {h: (*admin).queuePurge, change: true},
}

// AdminMethods lists the admin API's methods, sorted.
func AdminMethods() []string {
	out := make([]string, 0, len(adminMethods))
	for m := range adminMethods {
		out = append(out, m)
	}
	sort.Strings(out)
	return out
}

// admin serves the admin topic: it implements localbroker.AdminHandler.
// Changes are written to the registry first (so they survive a restart) and
// then applied to the running parts: cloud sessions started, restarted with
// a new secret or stopped, local connections of disabled devices closed.
type admin struct {
	g   *Gateway
	log *slog.Logger

	// mu serializes changes: a registry write and the session change that
	// follows it are one step for every other change.
	mu sync.Mutex
	// dmu guards drains: device.remove requests waiting for a queue to
	// empty.
	dmu    sync.Mutex
	drains map[secrets.DeviceID]*drainJob
}

// drainJob is a device.remove with spool "drain" in progress.
type drainJob struct {
	cancel chan struct{} // closed when a later request takes over
}

func newAdmin(g *Gateway) *admin {
	return &admin{g: g, log: g.log.With("part", "admin"), drains: map[secrets.DeviceID]*drainJob{}}
}

// parts returns the gateway's running parts (set before the broker serves,
// so before any admin request).
func (a *admin) parts() (*secrets.Registry, *uplink.Manager, Queue, *localbroker.Broker) {
	a.g.mu.Lock()
	defer a.g.mu.Unlock()
	return a.g.reg, a.g.mgr, a.g.queue, a.g.broker
}

// HandleAdmin implements localbroker.AdminHandler: it parses the request,
// runs the method and publishes the reply on the request's MQTT 5 Response
// Topic (with its Correlation Data) or on localbroker.AdminResponseTopic.
func (a *admin) HandleAdmin(id localbroker.Identity, req localbroker.AdminRequest) {
	c := &call{who: id, clientID: req.ClientID, topic: req.ResponseTopic, corr: req.CorrelationData, start: time.Now()}
	if c.topic == "" {
		c.topic = localbroker.AdminResponseTopic
	}
	if !id.Admin {
		// The broker's ACL keeps non-admins off the request topic; this is
		// a second line.
		a.log.Warn("admin request refused: not an admin identity", "who", id.String(), "client", req.ClientID)
		a.reply(c, nil, &apiError{code: CodeForbidden, msg: "not an admin identity"})
		return
	}
	p, err := a.parse(c, req.Payload)
	if err != nil {
		a.reply(c, nil, err)
		return
	}
	res, err := a.run(c, p)
	if errors.Is(err, errAsync) {
		return
	}
	a.reply(c, &res, err)
}

// run calls the method's handler; changes are serialized. A panic is
// answered with a 500 and logged, so that one bad request cannot stop the
// gateway.
func (a *admin) run(c *call, p *params) (res result, err error) {
	m := adminMethods[c.method]
	if m.change {
		a.mu.Lock()
		defer a.mu.Unlock()
	}
	defer func() {
		if v := recover(); v != nil {
			a.log.Error("admin request failed with a panic", "method", c.method, "panic", v, "stack", string(debug.Stack()))
			res, err = result{}, fmt.Errorf("internal error in %s (see the gateway log)", c.method)
		}
	}()
	return m.h(a, c, p)
}

// parse reads the request envelope and checks the method.
func (a *admin) parse(c *call, payload []byte) (*params, error) {
	var env map[string]json.RawMessage
	if err := json.Unmarshal(payload, &env); err != nil {
		return nil, badRequest("request: %s", jsonProblem(err, "a JSON object {\"id\",\"method\",\"params\"}"))
	}
	if env == nil {
		return nil, badRequest("request: want a JSON object {\"id\",\"method\",\"params\"}, got null")
	}
	if raw, ok := env["id"]; ok && !isNull(raw) {
		raw = bytes.TrimSpace(raw)
		if raw[0] != '"' && raw[0] != '-' && (raw[0] < '0' || raw[0] > '9') {
			return nil, badRequest("id: want a string or a number")
		}
		if len(raw) > adminIDMax {
			return nil, badRequest("id: at most %d bytes", adminIDMax)
		}
		c.id = raw
	}
	for k := range env {
		if k != "id" && k != "method" && k != "params" {
			return nil, badRequest("request: unknown field %q (want id, method, params)", clip(k))
		}
	}
	raw, ok := env["method"]
	if !ok || isNull(raw) {
		return nil, badRequest("method: required")
	}
	if err := json.Unmarshal(raw, &c.method); err != nil {
		return nil, badRequest("method: want a string")
	}
	if _, ok := adminMethods[c.method]; !ok {
		m := c.method
		c.method = ""
		return nil, badRequest("method %q: unknown (want one of %s)", clip(m), strings.Join(AdminMethods(), ", "))
	}
	return newParams(env["params"])
}

// reply publishes the reply to c and logs the request.
func (a *admin) reply(c *call, res *result, err error) {
	r := AdminReply{ID: c.id, Code: CodeOK}
	var data any
	if err != nil {
		var ae *apiError
		if !errors.As(err, &ae) {
			ae = &apiError{code: CodeInternal, msg: err.Error()}
		}
		r.Code, r.Message, data = ae.code, ae.msg, ae.data
	} else {
		r.Message, data = res.msg, res.data
	}
	if data != nil {
		b, merr := json.Marshal(data)
		if merr != nil {
			r.Code, r.Message = CodeInternal, "encode reply: "+merr.Error()
		} else {
			r.Data = b
		}
	}
	payload, merr := json.Marshal(r)
	if merr != nil { // cannot happen: every field marshals
		a.log.Error("encode admin reply", "method", c.method, "err", merr)
		return
	}
	level := slog.LevelDebug
	switch {
	case r.Code >= 500:
		level = slog.LevelError
	case r.Code >= 400:
		level = slog.LevelInfo
	}
	a.log.Log(context.Background(), level, "admin request", "admin", c.who.Name, "via", c.who.Method, "client", c.clientID,
		"method", c.method, "code", r.Code, "message", r.Message, "took", time.Since(c.start).Round(time.Microsecond))
	_, _, _, b := a.parts()
	if b == nil {
		return
	}
	if err := b.PublishAdmin(c.topic, payload, c.corr); err != nil {
		a.log.Warn("admin reply not sent", "method", c.method, "topic", c.topic, "err", err)
	}
}

// audit logs an accepted change: who, what, when (the record's time). It
// never logs a secret; details are fixed words and identifiers.
func (a *admin) audit(c *call, target string, what string, attrs ...any) {
	args := append([]any{"admin", c.who.Name, "via", c.who.Method, "client", c.clientID, "method", c.method,
		"target", target, "change", what}, attrs...)
	a.log.Info("admin change", args...)
}

// --- gateway.status ---

func (a *admin) status(c *call, p *params) (result, error) {
	if err := p.finish(); err != nil {
		return result{}, err
	}
	reg, mgr, q, b := a.parts()
	devs, err := reg.Devices(secrets.DeviceFilter{})
	if err != nil {
		return result{}, err
	}
	st := AdminStatus{
		Version:       a.g.version,
		Started:       a.g.started.UTC().Format(time.RFC3339),
		UptimeSeconds: time.Since(a.g.started).Round(time.Millisecond).Seconds(),
		Devices: AdminDeviceCounts{Total: len(devs), ByState: map[string]int{
			string(secrets.StateReady): 0, string(secrets.StateAwaitingActivation): 0, string(secrets.StateActivationFailed): 0}},
		Sessions: map[string]int{},
	}
	for _, d := range devs {
		st.Devices.ByState[string(d.State)]++
		if d.Disabled {
			st.Devices.Disabled++
		}
	}
	cl := &st.Cloud
	cl.Endpoint = config.RedactURL(a.g.cfg.Cloud.EffectiveEndpoint())
	cl.Dialect = string(a.g.cfg.Cloud.Dialect)
	errCount := map[string]int{}
	for _, s := range mgr.Statuses() {
		st.Sessions[string(s.State)]++
		cl.Sessions++
		if s.State == uplink.StateConnected {
			cl.Connected++
		} else if s.LastError != "" {
			errCount[s.LastError]++
		}
		if s.LastConnect.After(cl.LastConnect) {
			cl.LastConnect = s.LastConnect
		}
		if s.LastPuback.After(cl.LastPuback) {
			cl.LastPuback = s.LastPuback
		}
	}
	if cl.Sessions > 0 {
		up := cl.Connected > 0
		cl.Reachable = &up
	}
	for e, n := range errCount {
		cl.Errors = append(cl.Errors, AdminErrorCount{Error: e, Sessions: n})
	}
	sort.Slice(cl.Errors, func(i, j int) bool {
		if cl.Errors[i].Sessions != cl.Errors[j].Sessions {
			return cl.Errors[i].Sessions > cl.Errors[j].Sessions
		}
		return cl.Errors[i].Error < cl.Errors[j].Error
	})
	if len(cl.Errors) > 5 {
		cl.Errors = cl.Errors[:5]
	}
	st.Spool = totalsView(q.Totals())
	bs := b.Stats()
	st.Local = AdminLocal{Clients: bs.ClientsConnected, MessagesIn: bs.MessagesIn, Refused: bs.ConnectsRefused}
	msg := fmt.Sprintf("edgegw %s up %s: %d devices, %d/%d cloud sessions connected, %d messages spooled",
		st.Version, time.Duration(st.UptimeSeconds*float64(time.Second)).Round(time.Second), st.Devices.Total,
		cl.Connected, cl.Sessions, st.Spool.Depth)
	return result{msg: msg, data: st}, nil
}

func versionString() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "devel"
}

// --- device.list / device.get ---

// listStates are the values device.list's state filter accepts beyond the
// registry states.
var sessionStates = []uplink.State{uplink.StateIdle, uplink.StateActivating, uplink.StateConnecting, uplink.StateConnected,
	uplink.StateBackoff, uplink.StateAuthFailed, uplink.StateStopped}

func (a *admin) deviceList(c *call, p *params) (result, error) {
	product := p.str("productKey")
	state := p.str("state")
	after := p.str("after")
	limit := p.integer("limit", adminListDefault, 1, AdminListMax)
	if err := p.finish(); err != nil {
		return result{}, err
	}
	reg, mgr, q, _ := a.parts()
	f := secrets.DeviceFilter{ProductKey: product, After: after}
	var match func(secrets.Device, string) bool
	switch {
	case state == "":
	case secrets.DeviceState(state).Valid():
		f.State = secrets.DeviceState(state)
	case state == "disabled" || state == "enabled":
		want := state == "disabled"
		match = func(d secrets.Device, _ string) bool { return d.Disabled == want }
	case state == "none" || isSessionState(state):
		match = func(_ secrets.Device, sess string) bool { return sess == state }
	default:
		return result{}, badRequest("params.state %q: unknown (want a registry state %s, %s, %s; a session state %s, none; or disabled, enabled)",
			clip(state), secrets.StateReady, secrets.StateAwaitingActivation, secrets.StateActivationFailed, joinStates(sessionStates))
	}
	chunk := limit + 1
	if match != nil {
		chunk = 500
	}
	removing := a.removing()
	out := AdminDeviceList{Devices: []AdminDevice{}}
	for {
		f.Limit = chunk
		page, err := reg.Devices(f)
		if err != nil {
			return result{}, err
		}
		for _, d := range page {
			f.After = d.ID().String()
			v := deviceView(d, mgr, q)
			v.Removing = removing[d.ID()]
			if match != nil && !match(d, v.Session) {
				continue
			}
			out.Devices = append(out.Devices, v)
			if len(out.Devices) > limit {
				break
			}
		}
		if len(out.Devices) > limit || len(page) < chunk {
			break
		}
	}
	if len(out.Devices) > limit {
		out.Devices = out.Devices[:limit]
		out.Next = out.Devices[limit-1].ID()
	}
	msg := fmt.Sprintf("%d devices", len(out.Devices))
	if out.Next != "" {
		msg += " (more after " + out.Next + ")"
	}
	return result{msg: msg, data: out}, nil
}

func isSessionState(s string) bool {
	for _, st := range sessionStates {
		if string(st) == s {
			return true
		}
	}
	return false
}

func joinStates(ss []uplink.State) string {
	var b strings.Builder
	for i, s := range ss {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(string(s))
	}
	return b.String()
}

func (a *admin) removing() map[secrets.DeviceID]bool {
	a.dmu.Lock()
	defer a.dmu.Unlock()
	m := make(map[secrets.DeviceID]bool, len(a.drains))
	for id := range a.drains {
		m[id] = true
	}
	return m
}

// draining returns the drain in progress for id, if any.
func (a *admin) draining(id secrets.DeviceID) *drainJob {
	a.dmu.Lock()
	defer a.dmu.Unlock()
	return a.drains[id]
}

// endDrain forgets the drain of id if it is job (any drain when job is
// nil) and reports whether it did.
func (a *admin) endDrain(id secrets.DeviceID, job *drainJob) (*drainJob, bool) {
	a.dmu.Lock()
	defer a.dmu.Unlock()
	cur := a.drains[id]
	if cur == nil || (job != nil && cur != job) {
		return nil, false
	}
	delete(a.drains, id)
	return cur, true
}

// deviceView shows a registry record with its session state and queue
// depth.
func deviceView(d secrets.Device, mgr *uplink.Manager, q Queue) AdminDevice {
	id := d.ID()
	v := AdminDevice{
		ProductKey: d.ProductKey, DeviceName: d.DeviceName, ClientID: d.ClientID,
		State: string(d.State), StateReason: d.StateReason, Disabled: d.Disabled,
		HasDeviceSecret: !d.DeviceSecret.IsZero(), HasLocalPassword: d.LocalPassword != "",
		Session: "none", Queued: q.Stats(id).Depth,
		Created: d.Created, Updated: d.Updated, ActivatedAt: d.ActivatedAt,
	}
	if st, ok := mgr.Status(id); ok {
		v.Session = string(st.State)
	}
	return v
}

func sessionView(s uplink.SessionStatus) *AdminSession {
	return &AdminSession{
		State: string(s.State), Dialect: string(s.Dialect), ClientID: s.ClientID, LastError: s.LastError,
		Attempts: s.Attempts, Connects: s.Connects, LastConnect: s.LastConnect, NextAttempt: s.NextAttempt,
		InFlight: s.InFlight, LastPuback: s.LastPuback, Sent: s.Sent, Resent: s.Resent,
		DeadLettered: s.DeadLettered, Subscriptions: s.Subscriptions,
	}
}

func queueView(s spool.DeviceStats) AdminQueue {
	return AdminQueue{
		Device: s.Device.String(), Depth: s.Depth, Bytes: s.Bytes, Oldest: s.Oldest,
		OldestAgeSeconds: s.OldestAge.Seconds(), LastSeq: s.LastSeq, PendingAcks: s.PendingAcks,
		LastAck: s.LastAck, Dropped: reasonCounts(s.Dropped), Rejected: s.Rejected,
		DeadLetters: s.DeadLetters, DeadLetterBytes: s.DeadLetterBytes, DeadLettersEvicted: s.DeadLettersEvicted,
	}
}

func totalsView(t spool.Totals) AdminTotals {
	return AdminTotals{
		Devices: t.Devices, Depth: t.Depth, Bytes: t.Bytes, Budget: t.Budget, DeviceBudget: t.DeviceBudget,
		Overflow: string(t.Overflow), Dropped: reasonCounts(t.Dropped), Rejected: t.Rejected,
		DeadLetters: t.DeadLetters, DeadLetterBytes: t.DeadLetterBytes, DeadLettersEvicted: t.DeadLettersEvicted,
		Appended: t.Appended, Acked: t.Acked, Commits: t.Commits, CommitErrors: t.CommitErrors,
		CommitAvgMs: ms(t.Commit.Avg), CommitMaxMs: ms(t.Commit.Max), LastError: t.LastError,
		DiskFull: t.DiskFull, FileSize: t.FileSize,
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func reasonCounts(m map[spool.Reason]uint64) map[string]uint64 {
	out := make(map[string]uint64, len(m))
	for r, n := range m {
		out[string(r)] = n
	}
	return out
}

func (a *admin) deviceGet(c *call, p *params) (result, error) {
	id := p.device()
	if err := p.finish(); err != nil {
		return result{}, err
	}
	reg, mgr, q, _ := a.parts()
	d, err := getDevice(reg, id)
	if err != nil {
		return result{}, err
	}
	det := AdminDeviceDetail{Device: deviceView(d, mgr, q), Queue: queueView(q.Stats(id))}
	if prod, err := reg.GetProduct(d.ProductKey); err == nil {
		det.Device.Dialect = string(prod.Dialect)
	}
	if st, ok := mgr.Status(id); ok {
		det.Session = sessionView(st)
	}
	det.Device.Removing = a.removing()[id]
	return result{msg: fmt.Sprintf("device %s: %s, session %s, %d queued", id, d.State, det.Device.Session, det.Queue.Depth), data: det}, nil
}

// getDevice loads a device, turning "not found" into a 404.
func getDevice(reg *secrets.Registry, id secrets.DeviceID) (secrets.Device, error) {
	d, err := reg.GetDevice(id.ProductKey, id.DeviceName)
	if errors.Is(err, secrets.ErrNotFound) {
		return d, notFound("device %s: not found", id)
	}
	return d, err
}

// getProduct loads a product, turning "not found" into a 404.
func getProduct(reg *secrets.Registry, pk string) (secrets.Product, error) {
	p, err := reg.GetProduct(pk)
	if errors.Is(err, secrets.ErrNotFound) {
		return p, notFound("product %s: not found (add it with %s)", pk, MethodProductAdd)
	}
	return p, err
}

// --- device.add ---

func (a *admin) deviceAdd(c *call, p *params) (result, error) {
	id := p.device()
	secret := p.str("deviceSecret")
	password := p.str("localPassword")
	clientID := p.str("clientId")
	disabled, _ := p.boolean("disabled")
	if err := p.finish(); err != nil {
		return result{}, err
	}
	reg, mgr, q, _ := a.parts()
	prod, err := getProduct(reg, id.ProductKey)
	if err != nil {
		return result{}, err
	}
	if err := secrets.ValidateDeviceName(prod.Dialect, id.DeviceName); err != nil {
		return result{}, badRequest("params.%v", err)
	}
	if clientID != "" {
		if err := secrets.ValidateClientID(clientID); err != nil {
			return result{}, badRequest("params.%v", err)
		}
	}
	if secret != "" {
		if err := checkSecretShape("params.deviceSecret", secret); err != nil {
			return result{}, err
		}
	} else if prod.ProductSecret.IsZero() {
		return result{}, badRequest("params.deviceSecret: required (product %s has no productSecret to obtain one by dynamic activation)", prod.ProductKey)
	}
	if password != "" {
		if err := checkPasswordShape("params.localPassword", password); err != nil {
			return result{}, err
		}
	}
	if _, err := reg.GetDevice(id.ProductKey, id.DeviceName); err == nil {
		return result{}, conflict("device %s: already exists (change it with %s)", id, MethodDeviceUpdate)
	} else if !errors.Is(err, secrets.ErrNotFound) {
		return result{}, err
	}
	d := secrets.Device{ProductKey: id.ProductKey, DeviceName: id.DeviceName, ClientID: clientID, Disabled: disabled}
	if secret != "" {
		d.DeviceSecret = secrets.NewSecret(secret)
	}
	if password != "" {
		h, err := secrets.HashPassword(secrets.NewSecret(password))
		if err != nil {
			return result{}, fmt.Errorf("hash local password: %w", err)
		}
		d.LocalPassword = h
	}
	if err := reg.AddDevice(d); err != nil {
		if errors.Is(err, secrets.ErrExists) {
			return result{}, conflict("device %s: already exists", id)
		}
		return result{}, err
	}
	stored, err := reg.GetDevice(id.ProductKey, id.DeviceName)
	if err != nil {
		return result{}, err
	}
	if err := a.syncSession(stored, false); err != nil {
		if errors.Is(err, uplink.ErrStopped) {
			return result{}, fmt.Errorf("device %s stored; its cloud session starts with the next run (the gateway is stopping)", id)
		}
		if derr := reg.DeleteDevice(id.ProductKey, id.DeviceName); derr != nil {
			a.log.Error("roll back device.add", "device", id.String(), "err", derr)
		}
		return result{}, fmt.Errorf("start cloud session of device %s (not added): %w", id, err)
	}
	a.audit(c, id.String(), "added", "state", stored.State, "disabled", stored.Disabled,
		"hasDeviceSecret", !stored.DeviceSecret.IsZero(), "hasLocalPassword", stored.LocalPassword != "", "clientId", stored.ClientID)
	v := deviceView(stored, mgr, q)
	v.Dialect = string(prod.Dialect)
	return result{msg: fmt.Sprintf("device %s added (%s, session %s)", id, stored.State, v.Session), data: v}, nil
}

// syncSession makes a device's cloud session match its registry record:
// started when it is enabled and has a deviceSecret, restarted (new secret,
// new clientId) when restart is set, stopped otherwise.
func (a *admin) syncSession(d secrets.Device, restart bool) error {
	_, mgr, _, _ := a.parts()
	id := d.ID()
	_, running := mgr.Status(id)
	ud, want, err := a.g.uplinkDevice(d)
	if err != nil {
		return err
	}
	switch {
	case want && !running:
		if err := mgr.Add(ud); err != nil {
			return err
		}
		a.restoreSubs(mgr, id)
	case want && restart:
		return mgr.Update(ud)
	case !want && running:
		if err := mgr.Remove(id); err != nil && !errors.Is(err, uplink.ErrUnknownDevice) {
			return err
		}
	}
	return nil
}

// restoreSubs mirrors the filters the device's local connections still hold
// onto its new cloud session (a device re-enabled while a persistent local
// session kept its subscriptions).
func (a *admin) restoreSubs(mgr *uplink.Manager, id secrets.DeviceID) {
	s := a.g.subs
	if s == nil {
		return
	}
	s.mu.Lock()
	filters := make(map[string]byte, len(s.holders[id]))
	for f := range s.holders[id] {
		filters[f] = 1
	}
	s.mu.Unlock()
	if len(filters) > 0 {
		if err := mgr.Subscribe(id, filters); err != nil {
			a.log.Warn("restore cloud subscriptions", "device", id.String(), "err", err)
		}
	}
}

// --- device.update ---

func (a *admin) deviceUpdate(c *call, p *params) (result, error) {
	id := p.device()
	secret, secretSet, secretNull := p.nullable("deviceSecret")
	password, passwordSet, passwordNull := p.nullable("localPassword")
	clientID, clientIDSet, _ := p.nullable("clientId")
	disabled, disabledSet := p.boolean("disabled")
	if err := p.finish(); err != nil {
		return result{}, err
	}
	if !secretSet && !passwordSet && !clientIDSet && !disabledSet {
		return result{}, badRequest("params: nothing to change (give deviceSecret, localPassword, clientId or disabled)")
	}
	if secretNull || (secretSet && secret == "") {
		return result{}, badRequest("params.deviceSecret: cannot be cleared (give a new one to rotate it)")
	}
	if a.draining(id) != nil {
		return result{}, conflict("device %s: being removed (waiting for its queue to drain); wait for it, or remove it with spool \"discard\"", id)
	}
	reg, mgr, q, b := a.parts()
	old, err := getDevice(reg, id)
	if err != nil {
		return result{}, err
	}
	prod, err := getProduct(reg, id.ProductKey)
	if err != nil {
		return result{}, err
	}
	if secretSet {
		if err := checkSecretShape("params.deviceSecret", secret); err != nil {
			return result{}, err
		}
	}
	if passwordSet && !passwordNull {
		if password == "" {
			return result{}, badRequest("params.localPassword: empty (use null to remove the local password)")
		}
		if err := checkPasswordShape("params.localPassword", password); err != nil {
			return result{}, err
		}
	}
	if clientIDSet && clientID != "" {
		if err := secrets.ValidateClientID(clientID); err != nil {
			return result{}, badRequest("params.%v", err)
		}
	}

	var changes []string
	newSecret := secrets.NewSecret(secret)
	rotate := secretSet && !old.DeviceSecret.Equal(newSecret)
	if rotate {
		changes = append(changes, "deviceSecret rotated")
	}
	var hash string
	setPassword := passwordSet && !passwordNull && !(old.LocalPassword != "" && secrets.CheckPassword(old.LocalPassword, secrets.NewSecret(password)))
	clearPassword := passwordNull && old.LocalPassword != ""
	if setPassword {
		if hash, err = secrets.HashPassword(secrets.NewSecret(password)); err != nil {
			return result{}, fmt.Errorf("hash local password: %w", err)
		}
		changes = append(changes, "localPassword set")
	}
	if clearPassword {
		changes = append(changes, "localPassword removed")
	}
	newClientID := clientIDSet && clientID != old.ClientID
	if newClientID {
		changes = append(changes, "clientId changed")
	}
	toggle := disabledSet && disabled != old.Disabled
	if toggle {
		if disabled {
			changes = append(changes, "disabled")
		} else {
			changes = append(changes, "enabled")
		}
	}
	if len(changes) == 0 {
		v := deviceView(old, mgr, q)
		v.Dialect = string(prod.Dialect)
		return result{msg: fmt.Sprintf("device %s unchanged", id), data: v}, nil
	}
	stored, err := reg.UpdateDevice(id.ProductKey, id.DeviceName, func(d *secrets.Device) error {
		if rotate {
			d.DeviceSecret = newSecret
			d.State, d.StateReason = secrets.StateReady, ""
		}
		if setPassword {
			d.LocalPassword = hash
		}
		if clearPassword {
			d.LocalPassword = ""
		}
		if newClientID {
			d.ClientID = clientID
		}
		if toggle {
			d.Disabled = disabled
		}
		return nil
	})
	if errors.Is(err, secrets.ErrNotFound) {
		return result{}, notFound("device %s: not found", id)
	}
	if err != nil {
		return result{}, err
	}
	if err := a.syncSession(stored, rotate || newClientID); err != nil {
		if errors.Is(err, uplink.ErrStopped) {
			return result{}, fmt.Errorf("device %s: change stored; it applies with the next run (the gateway is stopping)", id)
		}
		// Put the record back as it was, so that registry and sessions agree.
		if _, rerr := reg.UpdateDevice(id.ProductKey, id.DeviceName, func(d *secrets.Device) error {
			d.DeviceSecret, d.State, d.StateReason = old.DeviceSecret, old.State, old.StateReason
			d.LocalPassword, d.ClientID, d.Disabled = old.LocalPassword, old.ClientID, old.Disabled
			return nil
		}); rerr != nil {
			a.log.Error("roll back device.update", "device", id.String(), "err", rerr)
		}
		if serr := a.syncSession(old, rotate || newClientID); serr != nil {
			a.log.Error("restore cloud session after a failed device.update", "device", id.String(), "err", serr)
		}
		return result{}, fmt.Errorf("apply change to the cloud session of device %s (not changed): %w", id, err)
	}
	kicked := 0
	if (toggle && disabled) || setPassword || clearPassword {
		// A disabled device, or one whose local password changed, must log
		// in again: the authenticator now refuses the old credentials.
		kicked = b.DisconnectDevice(id)
	}
	what := strings.Join(changes, ", ")
	a.audit(c, id.String(), what, "localConnectionsClosed", kicked)
	v := deviceView(stored, mgr, q)
	v.Dialect = string(prod.Dialect)
	return result{msg: fmt.Sprintf("device %s updated: %s (session %s)", id, what, v.Session), data: v}, nil
}

// --- device.remove ---

func (a *admin) deviceRemove(c *call, p *params) (result, error) {
	id := p.device()
	mode := p.str("spool")
	timeout, timeoutSet := p.duration("timeout", adminDrainDefault, time.Second, AdminDrainMax)
	if err := p.finish(); err != nil {
		return result{}, err
	}
	switch mode {
	case "discard", "drain":
	case "":
		return result{}, badRequest("params.spool: required: \"discard\" (drop the device's queued messages) or \"drain\" (deliver them first)")
	default:
		return result{}, badRequest("params.spool %q: want \"discard\" or \"drain\"", clip(mode))
	}
	if mode == "discard" && timeoutSet {
		return result{}, badRequest("params.timeout: only with spool \"drain\"")
	}
	reg, mgr, q, b := a.parts()
	d, err := getDevice(reg, id)
	if err != nil {
		return result{}, err
	}
	if mode == "discard" {
		if job, ok := a.endDrain(id, nil); ok {
			close(job.cancel)
		}
		return a.removeNow(c, reg, mgr, q, b, id, "discard")
	}

	if a.draining(id) != nil {
		return result{}, conflict("device %s: already being removed (draining); wait for that request, or use spool \"discard\"", id)
	}
	// Refuse new logins and close the local connections, so that nothing
	// new is queued, then keep the cloud session until the queue is empty.
	if !d.Disabled {
		if d, err = reg.UpdateDevice(id.ProductKey, id.DeviceName, func(x *secrets.Device) error {
			x.Disabled = true
			return nil
		}); err != nil {
			return result{}, err
		}
	}
	kicked := b.DisconnectDevice(id)
	a.audit(c, id.String(), "disabled for removal (draining its queue)", "localConnectionsClosed", kicked, "timeout", timeout.String())
	if queued(q, id) == 0 {
		return a.removeNow(c, reg, mgr, q, b, id, "drain")
	}
	if d.DeviceSecret.IsZero() {
		if err := a.syncSession(d, false); err != nil {
			a.log.Warn("stop cloud session", "device", id.String(), "err", err)
		}
		return result{}, &apiError{code: CodeConflict,
			msg:  fmt.Sprintf("device %s: not removed: it has no deviceSecret, so its %d queued messages cannot be delivered; it stays disabled (remove it with spool \"discard\")", id, queued(q, id)),
			data: AdminRemoved{Device: id.String(), State: "disabled", Spool: "drain", Queued: queued(q, id)}}
	}
	// Keep (or start) the session although the device is disabled.
	if _, running := mgr.Status(id); !running {
		ud, _, err := a.g.uplinkDevice(secrets.Device{ProductKey: d.ProductKey, DeviceName: d.DeviceName,
			DeviceSecret: d.DeviceSecret, ClientID: d.ClientID})
		if err == nil {
			err = mgr.Add(ud)
		}
		if err != nil {
			return result{}, fmt.Errorf("start cloud session of device %s to drain its queue (device stays disabled): %w", id, err)
		}
	}
	job := &drainJob{cancel: make(chan struct{})}
	a.dmu.Lock()
	a.drains[id] = job
	a.dmu.Unlock()
	go a.drain(c, id, job, timeout)
	return result{}, errAsync
}

// queued returns the messages of a device still in its queue. It counts
// acknowledged messages until their deletion commits rather than
// subtracting PendingAcks: while the spool writes a commit, a deleted
// message has already left Depth but is still pending, so Depth minus
// PendingAcks undercounts, and a drain that trusted it removed the device
// with its last, undelivered message.
func queued(q Queue, id secrets.DeviceID) int {
	return q.Stats(id).Depth
}

// drain waits until the device's queue is empty, then removes the device,
// and replies. On timeout the device stays disabled with its queue and its
// session is stopped.
func (a *admin) drain(c *call, id secrets.DeviceID, job *drainJob, timeout time.Duration) {
	defer func() {
		if v := recover(); v != nil {
			a.endDrain(id, job)
			a.log.Error("device.remove drain failed with a panic", "device", id.String(), "panic", v, "stack", string(debug.Stack()))
			a.reply(c, nil, fmt.Errorf("internal error while draining device %s (see the gateway log)", id))
		}
	}()
	reg, mgr, q, b := a.parts()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(adminDrainPoll)
	defer tick.Stop()
wait:
	for queued(q, id) > 0 {
		select {
		case <-job.cancel:
			break wait
		default:
		}
		if st, ok := mgr.Status(id); !ok || st.State == uplink.StateStopped {
			// The manager stopped: the gateway is shutting down. The
			// device stays disabled (stored) with its queue.
			if _, mine := a.endDrain(id, job); mine {
				a.reply(c, nil, fmt.Errorf("device %s: not removed: the gateway is stopping; it stays disabled with %d queued messages", id, queued(q, id)))
				return
			}
			break wait
		}
		select {
		case <-tick.C:
		case <-job.cancel:
			break wait
		case <-deadline.C:
			break wait
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, mine := a.endDrain(id, job); !mine {
		a.reply(c, nil, conflict("device %s: drain cancelled: a later request removed it with spool \"discard\"", id))
		return
	}
	if n := queued(q, id); n > 0 {
		st, _ := mgr.Status(id)
		if err := mgr.Remove(id); err != nil && !errors.Is(err, uplink.ErrUnknownDevice) {
			a.log.Warn("stop cloud session after an unfinished drain", "device", id.String(), "err", err)
		}
		a.audit(c, id.String(), "drain timed out; device kept disabled with its queue", "queued", n)
		detail := string(st.State)
		if st.LastError != "" {
			detail += ": " + st.LastError
		}
		a.reply(c, nil, &apiError{code: CodeConflict,
			msg: fmt.Sprintf("device %s: not removed: %d messages still queued after %s (cloud session %s); it stays disabled with its queue — repeat with a longer timeout, or use spool \"discard\"",
				id, n, timeout, detail),
			data: AdminRemoved{Device: id.String(), State: "disabled", Spool: "drain", Queued: n, Waited: timeout.String()}})
		return
	}
	res, err := a.removeNow(c, reg, mgr, q, b, id, "drain")
	if rm, ok := res.data.(AdminRemoved); ok {
		rm.Waited = time.Since(c.start).Round(time.Millisecond).String()
		res.data = rm
	}
	a.reply(c, &res, err)
}

// removeNow deletes the device from the registry, stops its session, closes
// its local connections and drops its queue. The caller holds a.mu.
func (a *admin) removeNow(c *call, reg *secrets.Registry, mgr *uplink.Manager, q Queue, b *localbroker.Broker, id secrets.DeviceID, mode string) (result, error) {
	if err := reg.DeleteDevice(id.ProductKey, id.DeviceName); err != nil {
		if errors.Is(err, secrets.ErrNotFound) {
			return result{}, notFound("device %s: not found", id)
		}
		return result{}, err
	}
	if err := mgr.Remove(id); err != nil && !errors.Is(err, uplink.ErrUnknownDevice) {
		a.log.Warn("stop cloud session of a removed device", "device", id.String(), "err", err)
	}
	kicked := b.DisconnectDevice(id)
	discarded := queued(q, id)
	if err := q.Remove(id); err != nil {
		a.audit(c, id.String(), "removed", "spool", mode, "localConnectionsClosed", kicked)
		return result{}, fmt.Errorf("device %s removed, but its queue was not dropped: %w", id, err)
	}
	a.audit(c, id.String(), "removed", "spool", mode, "discarded", discarded, "localConnectionsClosed", kicked)
	msg := fmt.Sprintf("device %s removed", id)
	if discarded > 0 {
		msg += fmt.Sprintf(", %d queued messages discarded", discarded)
	}
	return result{msg: msg, data: AdminRemoved{Device: id.String(), State: "removed", Spool: mode, Discarded: discarded}}, nil
}

// --- device.import ---

func (a *admin) deviceImport(c *call, p *params) (result, error) {
	rows := p.rows("rows")
	dialectName := p.str("dialect")
	disabled, _ := p.boolean("disabled")
	if err := p.finish(); err != nil {
		return result{}, err
	}
	dialect := a.g.cfg.Cloud.Dialect
	if dialectName != "" {
		d, err := secrets.ParseDialect(dialectName)
		if err != nil {
			return result{}, badRequest("params.dialect %q: want aliyun or enos", clip(dialectName))
		}
		dialect = d
	}
	reg, _, _, _ := a.parts()
	var res AdminImportResult
	products := map[string]secrets.Product{}
	for i, raw := range rows {
		row, outcome, err := a.importRow(c, reg, raw, i, dialect, disabled, products, &res)
		switch outcome {
		case RowAdded:
			res.Added++
		case RowUpdated:
			res.Updated++
		case RowUnchanged:
			res.Unchanged++
		case RowFailed:
			res.Failed++
			re := AdminRowError{Line: row.Line, Code: CodeInternal, Message: err.Error()}
			if row.ProductKey != "" || row.DeviceName != "" {
				re.Device = clip(row.ProductKey) + "/" + clip(row.DeviceName)
			}
			var ae *apiError
			if errors.As(err, &ae) {
				re.Code, re.Message = ae.code, ae.msg
			}
			res.Errors = append(res.Errors, re)
		}
	}
	if res.Added+res.Updated > 0 || len(res.ProductsAdded) > 0 {
		a.audit(c, fmt.Sprintf("%d rows", len(rows)), "import", "added", res.Added, "updated", res.Updated,
			"unchanged", res.Unchanged, "failed", res.Failed, "productsAdded", strings.Join(res.ProductsAdded, " "))
	}
	return result{msg: fmt.Sprintf("%d rows: %d added, %d unchanged, %d updated, %d failed",
		len(rows), res.Added, res.Unchanged, res.Updated, res.Failed), data: res}, nil
}

// importRow applies one row: add the device, or rotate its secret, or
// nothing when it is already as the row says. A device whose row has no
// DeviceSecret but which holds one (obtained by activation) is unchanged:
// a secret is never dropped by an import.
func (a *admin) importRow(c *call, reg *secrets.Registry, raw json.RawMessage, i int, dialect secrets.Dialect, disabled bool,
	products map[string]secrets.Product, res *AdminImportResult) (AdminImportRow, AdminRowResult, error) {
	var row AdminImportRow
	rp, err := newParams(raw)
	if err != nil {
		return row, RowFailed, badRequest("params.rows[%d]: want an object {line, productKey, deviceName, deviceSecret}", i)
	}
	rp.prefix = fmt.Sprintf("params.rows[%d].", i)
	row.Line = rp.integer("line", 0, 0, 1<<31-1)
	row.ProductKey = rp.str("productKey")
	row.DeviceName = rp.str("deviceName")
	row.DeviceSecret = rp.str("deviceSecret")
	if err := rp.finish(); err != nil {
		return row, RowFailed, err
	}
	if row.ProductKey == "" {
		return row, RowFailed, badRequest("ProductKey: empty")
	}
	if row.DeviceName == "" {
		return row, RowFailed, badRequest("DeviceName: empty")
	}
	id := secrets.DeviceID{ProductKey: row.ProductKey, DeviceName: row.DeviceName}
	prod, ok := products[row.ProductKey]
	if !ok {
		prod, err = reg.GetProduct(row.ProductKey)
		if errors.Is(err, secrets.ErrNotFound) {
			if err := secrets.ValidateProductKey(dialect, row.ProductKey); err != nil {
				return row, RowFailed, badRequest("%v", err)
			}
			prod = secrets.Product{ProductKey: row.ProductKey, Dialect: dialect}
			if _, err := reg.PutProduct(prod); err != nil {
				return row, RowFailed, err
			}
			res.ProductsAdded = append(res.ProductsAdded, row.ProductKey)
			a.audit(c, row.ProductKey, "product added", "dialect", dialect, "hasProductSecret", false)
		} else if err != nil {
			return row, RowFailed, err
		}
		products[row.ProductKey] = prod
	}
	if err := secrets.ValidateDeviceName(prod.Dialect, row.DeviceName); err != nil {
		return row, RowFailed, badRequest("%v", err)
	}
	if row.DeviceSecret != "" {
		if err := checkSecretShape("DeviceSecret", row.DeviceSecret); err != nil {
			return row, RowFailed, err
		}
	}
	if a.draining(id) != nil {
		return row, RowFailed, conflict("device %s: being removed (draining)", id)
	}
	old, err := reg.GetDevice(row.ProductKey, row.DeviceName)
	switch {
	case errors.Is(err, secrets.ErrNotFound):
		if row.DeviceSecret == "" && prod.ProductSecret.IsZero() {
			return row, RowFailed, badRequest("DeviceSecret: empty, and product %s has no productSecret to obtain one by dynamic activation", prod.ProductKey)
		}
		d := secrets.Device{ProductKey: row.ProductKey, DeviceName: row.DeviceName, Disabled: disabled}
		if row.DeviceSecret != "" {
			d.DeviceSecret = secrets.NewSecret(row.DeviceSecret)
		}
		if err := reg.AddDevice(d); err != nil {
			if errors.Is(err, secrets.ErrExists) {
				return row, RowFailed, conflict("device %s: already exists", id)
			}
			return row, RowFailed, err
		}
		d.State = secrets.StateReady
		if d.DeviceSecret.IsZero() {
			d.State = secrets.StateAwaitingActivation
		}
		if err := a.syncSession(d, false); err != nil && !errors.Is(err, uplink.ErrStopped) {
			if derr := reg.DeleteDevice(id.ProductKey, id.DeviceName); derr != nil {
				a.log.Error("roll back imported device", "device", id.String(), "err", derr)
			}
			return row, RowFailed, fmt.Errorf("start cloud session (not added): %w", err)
		}
		a.audit(c, id.String(), "added", "state", d.State, "disabled", disabled, "line", row.Line)
		return row, RowAdded, nil
	case err != nil:
		return row, RowFailed, err
	}
	if row.DeviceSecret == "" || old.DeviceSecret.Equal(secrets.NewSecret(row.DeviceSecret)) {
		return row, RowUnchanged, nil
	}
	stored, err := reg.UpdateDevice(id.ProductKey, id.DeviceName, func(d *secrets.Device) error {
		d.DeviceSecret = secrets.NewSecret(row.DeviceSecret)
		d.State, d.StateReason = secrets.StateReady, ""
		return nil
	})
	if err != nil {
		return row, RowFailed, err
	}
	if err := a.syncSession(stored, true); err != nil && !errors.Is(err, uplink.ErrStopped) {
		if _, rerr := reg.UpdateDevice(id.ProductKey, id.DeviceName, func(d *secrets.Device) error {
			d.DeviceSecret, d.State, d.StateReason = old.DeviceSecret, old.State, old.StateReason
			return nil
		}); rerr != nil {
			a.log.Error("roll back imported device", "device", id.String(), "err", rerr)
		}
		return row, RowFailed, fmt.Errorf("restart cloud session (not updated): %w", err)
	}
	a.audit(c, id.String(), "deviceSecret rotated", "line", row.Line)
	return row, RowUpdated, nil
}

// --- products ---

func (a *admin) productAdd(c *call, p *params) (result, error) {
	pk := p.str("productKey")
	dialectName := p.str("dialect")
	secret := p.str("productSecret")
	if err := p.finish(); err != nil {
		return result{}, err
	}
	if pk == "" {
		return result{}, badRequest("params.productKey: required")
	}
	dialect := a.g.cfg.Cloud.Dialect
	if dialectName != "" {
		d, err := secrets.ParseDialect(dialectName)
		if err != nil {
			return result{}, badRequest("params.dialect %q: want aliyun or enos", clip(dialectName))
		}
		dialect = d
	}
	if err := secrets.ValidateProductKey(dialect, pk); err != nil {
		return result{}, badRequest("params.%v", err)
	}
	if secret != "" {
		if err := checkSecretShape("params.productSecret", secret); err != nil {
			return result{}, err
		}
	}
	reg, _, _, _ := a.parts()
	if _, err := reg.GetProduct(pk); err == nil {
		return result{}, conflict("product %s: already exists", pk)
	} else if !errors.Is(err, secrets.ErrNotFound) {
		return result{}, err
	}
	prod := secrets.Product{ProductKey: pk, Dialect: dialect}
	if secret != "" {
		prod.ProductSecret = secrets.NewSecret(secret)
	}
	created, err := reg.PutProduct(prod)
	if err != nil {
		return result{}, err
	}
	if !created {
		return result{}, conflict("product %s: already exists", pk)
	}
	a.audit(c, pk, "product added", "dialect", dialect, "hasProductSecret", secret != "")
	return result{msg: fmt.Sprintf("product %s added (%s)", pk, dialect),
		data: AdminProduct{ProductKey: pk, Dialect: string(dialect), HasProductSecret: secret != ""}}, nil
}

func (a *admin) productRemove(c *call, p *params) (result, error) {
	pk := p.str("productKey")
	if err := p.finish(); err != nil {
		return result{}, err
	}
	if pk == "" {
		return result{}, badRequest("params.productKey: required")
	}
	reg, _, _, _ := a.parts()
	if err := reg.DeleteProduct(pk); err != nil {
		switch {
		case errors.Is(err, secrets.ErrNotFound):
			return result{}, notFound("product %s: not found", pk)
		case errors.Is(err, secrets.ErrConflict):
			n := 0
			if devs, derr := reg.Devices(secrets.DeviceFilter{ProductKey: pk}); derr == nil {
				n = len(devs)
			}
			return result{}, conflict("product %s: still has %d devices (remove them first)", pk, n)
		}
		return result{}, err
	}
	a.audit(c, pk, "product removed")
	return result{msg: fmt.Sprintf("product %s removed", pk), data: AdminProduct{ProductKey: pk}}, nil
}

func (a *admin) productList(c *call, p *params) (result, error) {
	if err := p.finish(); err != nil {
		return result{}, err
	}
	reg, _, _, _ := a.parts()
	ps, err := reg.Products()
	if err != nil {
		return result{}, err
	}
	devs, err := reg.Devices(secrets.DeviceFilter{})
	if err != nil {
		return result{}, err
	}
	count := map[string]int{}
	for _, d := range devs {
		count[d.ProductKey]++
	}
	out := make([]AdminProduct, 0, len(ps))
	for _, pr := range ps {
		out = append(out, AdminProduct{ProductKey: pr.ProductKey, Dialect: string(pr.Dialect),
			HasProductSecret: !pr.ProductSecret.IsZero(), Devices: count[pr.ProductKey], Created: pr.Created, Updated: pr.Updated})
	}
	return result{msg: fmt.Sprintf("%d products", len(out)), data: out}, nil
}

// --- queues ---

func (a *admin) queueStats(c *call, p *params) (result, error) {
	var id secrets.DeviceID
	one := p.has("productKey") || p.has("deviceName")
	if one {
		id = p.device()
	}
	if err := p.finish(); err != nil {
		return result{}, err
	}
	reg, _, q, _ := a.parts()
	if !one {
		t := totalsView(q.Totals())
		return result{msg: fmt.Sprintf("%d messages queued for %d devices", t.Depth, t.Devices), data: AdminQueueStats{Totals: &t}}, nil
	}
	st := q.Stats(id)
	if _, err := reg.GetDevice(id.ProductKey, id.DeviceName); errors.Is(err, secrets.ErrNotFound) && st.Depth == 0 && st.DeadLetters == 0 {
		return result{}, notFound("device %s: not found", id)
	}
	v := queueView(st)
	return result{msg: fmt.Sprintf("device %s: %d messages queued", id, v.Depth), data: AdminQueueStats{Device: &v}}, nil
}

func (a *admin) queuePurge(c *call, p *params) (result, error) {
	id := p.device()
	if err := p.finish(); err != nil {
		return result{}, err
	}
	reg, _, q, _ := a.parts()
	if _, err := reg.GetDevice(id.ProductKey, id.DeviceName); errors.Is(err, secrets.ErrNotFound) && q.Stats(id).Depth == 0 {
		return result{}, notFound("device %s: not found", id)
	} else if err != nil && !errors.Is(err, secrets.ErrNotFound) {
		return result{}, err
	}
	n, err := q.Purge(id)
	if err != nil {
		return result{}, fmt.Errorf("purge queue of device %s: %w", id, err)
	}
	a.audit(c, id.String(), "queue purged", "purged", n)
	return result{msg: fmt.Sprintf("device %s: %d queued messages purged", id, n), data: AdminPurged{Device: id.String(), Purged: n}}, nil
}

// --- validation ---

// checkSecretShape checks a deviceSecret or productSecret without ever
// quoting it: 1-512 bytes of printable ASCII without spaces (the registry's
// rule; a trailing newline pasted from a file is the usual mistake).
func checkSecretShape(field, v string) error {
	if v == "" {
		return badRequest("%s: must not be empty", field)
	}
	if len(v) > secretShapeMax {
		return badRequest("%s: is %d bytes, at most %d allowed", field, len(v), secretShapeMax)
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; c <= ' ' || c >= 0x7f {
			return badRequest("%s: byte %d is whitespace, a control character or not ASCII", field, i)
		}
	}
	return nil
}

// checkPasswordShape checks a local password without quoting it: 1-256
// bytes of UTF-8 without control characters.
func checkPasswordShape(field, v string) error {
	if v == "" {
		return badRequest("%s: must not be empty", field)
	}
	if len(v) > localPasswordMax {
		return badRequest("%s: is %d bytes, at most %d allowed", field, len(v), localPasswordMax)
	}
	if !utf8.ValidString(v) {
		return badRequest("%s: not valid UTF-8", field)
	}
	for i, r := range v {
		if r < ' ' || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return badRequest("%s: byte %d is a control character", field, i)
		}
	}
	return nil
}

// params reads a request's params object. The first problem is kept and
// reported by finish, which also refuses parameters no getter asked for.
type params struct {
	raw    map[string]json.RawMessage
	used   map[string]bool
	prefix string
	err    *apiError
}

func newParams(raw json.RawMessage) (*params, error) {
	p := &params{raw: map[string]json.RawMessage{}, used: map[string]bool{}, prefix: "params."}
	if len(raw) == 0 || isNull(raw) {
		return p, nil
	}
	if err := json.Unmarshal(raw, &p.raw); err != nil || p.raw == nil {
		return nil, badRequest("params: want a JSON object")
	}
	return p, nil
}

func isNull(raw json.RawMessage) bool { return string(bytes.TrimSpace(raw)) == "null" }

func (p *params) fail(name, format string, args ...any) {
	if p.err == nil {
		p.err = badRequest("%s%s: %s", p.prefix, name, fmt.Sprintf(format, args...))
	}
}

// get returns the raw value of name; ok is false when absent or null.
func (p *params) get(name string) (json.RawMessage, bool) {
	p.used[name] = true
	raw, ok := p.raw[name]
	if !ok || isNull(raw) {
		return nil, false
	}
	return raw, true
}

func (p *params) has(name string) bool {
	_, ok := p.raw[name]
	return ok
}

// str returns a string parameter ("" when absent or null).
func (p *params) str(name string) string {
	raw, ok := p.get(name)
	if !ok {
		return ""
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		p.fail(name, "want a string")
		return ""
	}
	return s
}

// nullable returns a string parameter and whether it was given, and given
// as null.
func (p *params) nullable(name string) (v string, set, null bool) {
	p.used[name] = true
	raw, ok := p.raw[name]
	if !ok {
		return "", false, false
	}
	if isNull(raw) {
		return "", true, true
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		p.fail(name, "want a string or null")
		return "", false, false
	}
	return v, true, false
}

func (p *params) boolean(name string) (v, set bool) {
	raw, ok := p.get(name)
	if !ok {
		return false, false
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		p.fail(name, "want true or false")
		return false, false
	}
	return v, true
}

func (p *params) integer(name string, def, lo, hi int) int {
	raw, ok := p.get(name)
	if !ok {
		return def
	}
	var f float64
	if err := json.Unmarshal(raw, &f); err != nil || f != float64(int64(f)) {
		p.fail(name, "want a whole number")
		return def
	}
	if f < float64(lo) || f > float64(hi) {
		p.fail(name, "%v is out of range %d-%d", f, lo, hi)
		return def
	}
	return int(f)
}

// duration accepts a Go duration string ("90s", "5m") or a number of
// seconds.
func (p *params) duration(name string, def, lo, hi time.Duration) (time.Duration, bool) {
	raw, ok := p.get(name)
	if !ok {
		return def, false
	}
	var d time.Duration
	var s string
	var f float64
	switch {
	case json.Unmarshal(raw, &s) == nil:
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			p.fail(name, "%q is not a duration (e.g. \"90s\", \"5m\")", clip(s))
			return def, true
		}
	case json.Unmarshal(raw, &f) == nil:
		d = time.Duration(f * float64(time.Second))
	default:
		p.fail(name, "want a duration such as \"90s\", or seconds")
		return def, true
	}
	if d < lo || d > hi {
		p.fail(name, "%s is out of range %s-%s", d, lo, hi)
		return def, true
	}
	return d, true
}

// device reads productKey and deviceName, both required.
func (p *params) device() secrets.DeviceID {
	pk := p.str("productKey")
	dn := p.str("deviceName")
	for _, f := range []struct{ name, v string }{{"productKey", pk}, {"deviceName", dn}} {
		switch {
		case p.err != nil:
		case f.v == "":
			p.fail(f.name, "required")
		case len(f.v) > adminIdentMax:
			p.fail(f.name, "is %d bytes, at most %d allowed", len(f.v), adminIdentMax)
		case strings.ContainsAny(f.v, "/\x00"):
			p.fail(f.name, "%q: must not contain '/'", clip(f.v))
		}
	}
	return secrets.DeviceID{ProductKey: pk, DeviceName: dn}
}

// rows reads device.import's rows: an array of 1 to AdminImportMax
// objects, decoded one by one later so that a bad row fails alone.
func (p *params) rows(name string) []json.RawMessage {
	raw, ok := p.get(name)
	if !ok {
		p.fail(name, "required (an array of {line, productKey, deviceName, deviceSecret})")
		return nil
	}
	var rows []json.RawMessage
	if err := json.Unmarshal(raw, &rows); err != nil {
		p.fail(name, "want an array of {line, productKey, deviceName, deviceSecret}")
		return nil
	}
	if len(rows) == 0 || len(rows) > AdminImportMax {
		p.fail(name, "%d rows; want 1 to %d per request", len(rows), AdminImportMax)
		return nil
	}
	return rows
}

// finish reports the first problem, or a parameter nobody asked for.
func (p *params) finish() error {
	if p.err != nil {
		return p.err
	}
	var unknown []string
	for k := range p.raw {
		if !p.used[k] {
			unknown = append(unknown, strconvQuote(clip(k)))
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		known := make([]string, 0, len(p.used))
		for k := range p.used {
			known = append(known, k)
		}
		sort.Strings(known)
		want := strings.Join(known, ", ")
		if want == "" {
			want = "none"
		}
		return badRequest("%s%s: unknown parameter (want %s)", p.prefix, strings.Join(unknown, ", "), want)
	}
	return nil
}

func strconvQuote(s string) string { return fmt.Sprintf("%q", s) }

// jsonProblem describes a JSON decoding error without quoting the input
// (which may hold a secret).
func jsonProblem(err error, want string) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("invalid JSON at byte %d (want %s)", se.Offset, want)
	case errors.As(err, &te):
		return fmt.Sprintf("want %s, got a JSON %s", want, te.Value)
	}
	return "invalid JSON (want " + want + ")"
}
