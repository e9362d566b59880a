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

	"github.com/edgegw/edgegw/gateway/adminapi"
	"github.com/edgegw/edgegw/gateway/config"
	"github.com/edgegw/edgegw/internal/logsafe"
	"github.com/edgegw/edgegw/localbroker"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink"
)

// Admin API limits beyond adminapi's.
const (
	adminListDefault  = 100
	adminDrainDefault = time.Minute
	adminDrainPoll    = 100 * time.Millisecond
	adminIDMax        = 128
	adminIdentMax     = 128
	secretShapeMax    = 512
	localPasswordMax  = 256
)

// rowOutcome is what happened to one device.import row.
type rowOutcome int

const (
	rowAdded rowOutcome = iota
	rowUnchanged
	rowUpdated
	rowFailed
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
	return &apiError{code: adminapi.CodeBadRequest, msg: fmt.Sprintf(format, args...)}
}

func notFound(format string, args ...any) *apiError {
	return &apiError{code: adminapi.CodeNotFound, msg: fmt.Sprintf(format, args...)}
}

func conflict(format string, args ...any) *apiError {
	return &apiError{code: adminapi.CodeConflict, msg: fmt.Sprintf(format, args...)}
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
	adminapi.MethodGatewayStatus:  {h: (*admin).status},
	adminapi.MethodGatewayBackup:  {h: (*admin).backup},
	adminapi.MethodDeviceList:     {h: (*admin).deviceList},
	adminapi.MethodDeviceGet:      {h: (*admin).deviceGet},
	adminapi.MethodDeviceAdd:      {h: (*admin).deviceAdd, change: true},
	adminapi.MethodDeviceUpdate:   {h: (*admin).deviceUpdate, change: true},
	adminapi.MethodDeviceRemove:   {h: (*admin).deviceRemove, change: true},
	adminapi.MethodDeviceImport:   {h: (*admin).deviceImport, change: true},
	adminapi.MethodDeviceActivate: {h: (*admin).deviceActivate, change: true},
	adminapi.MethodProductAdd:     {h: (*admin).productAdd, change: true},
	adminapi.MethodProductRemove:  {h: (*admin).productRemove, change: true},
	adminapi.MethodProductUpdate:  {h: (*admin).productUpdate, change: true},
	adminapi.MethodProductList:    {h: (*admin).productList},
	adminapi.MethodProductGet:     {h: (*admin).productGet},
	adminapi.MethodQueueStats:     {h: (*admin).queueStats},
	adminapi.MethodQueuePurge:     {h: (*admin).queuePurge, change: true},
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
	// The clientId is only logged: clipped once here.
	c := &call{who: id, clientID: logsafe.Clip(req.ClientID), topic: req.ResponseTopic, corr: req.CorrelationData, start: time.Now()}
	if c.topic == "" {
		c.topic = localbroker.AdminResponseTopic
	}
	if !id.Admin {
		// The broker's ACL keeps non-admins off the request topic; this is
		// a second line.
		a.log.Warn("admin request refused: not an admin identity", "who", id.String(), "client", c.clientID)
		a.reply(c, nil, &apiError{code: adminapi.CodeForbidden, msg: "not an admin identity"})
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
			return nil, badRequest("request: unknown field %q (want id, method, params)", logsafe.Clip(k))
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
		return nil, badRequest("method %q: unknown (want one of %s)", logsafe.Clip(m), strings.Join(adminapi.Methods(), ", "))
	}
	return newParams(env["params"])
}

// adminLogMessageMax bounds a reply's message in the log line (messages
// quote request fields clipped; this bounds their sum).
const adminLogMessageMax = 512

// reply publishes the reply to c and logs the request.
func (a *admin) reply(c *call, res *result, err error) {
	r := adminapi.Reply{ID: c.id, Code: adminapi.CodeOK}
	var data any
	if err != nil {
		var ae *apiError
		if !errors.As(err, &ae) {
			ae = &apiError{code: adminapi.CodeInternal, msg: err.Error()}
		}
		r.Code, r.Message, data = ae.code, ae.msg, ae.data
	} else {
		r.Message, data = res.msg, res.data
	}
	if data != nil {
		b, merr := json.Marshal(data)
		if merr != nil {
			r.Code, r.Message = adminapi.CodeInternal, "encode reply: "+merr.Error()
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
		"method", c.method, "code", r.Code, "message", logsafe.ClipN(r.Message, adminLogMessageMax), "took", time.Since(c.start).Round(time.Microsecond))
	_, _, _, b := a.parts()
	if b == nil {
		return
	}
	if err := b.PublishAdmin(c.topic, payload, c.corr); err != nil {
		a.log.Warn("admin reply not sent", "method", c.method, "topic", logsafe.Clip(c.topic), "err", err)
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
	st, err := a.g.status()
	if err != nil {
		return result{}, err
	}
	cl := &st.Cloud
	msg := fmt.Sprintf("edgegw %s up %s: %d devices, %d/%d cloud sessions connected, %d messages spooled",
		st.Version, time.Duration(st.UptimeSeconds*float64(time.Second)).Round(time.Second), st.Devices.Total,
		cl.Connected, cl.Sessions, st.Spool.Depth)
	return result{msg: msg, data: st}, nil
}

// status is the data of gateway.status, and of the status page on the
// metrics listener: both show the same numbers. It needs the running
// parts (set before the broker serves and the observer starts).
func (g *Gateway) status() (adminapi.Status, error) {
	g.mu.Lock()
	reg, mgr, q, b := g.reg, g.mgr, g.queue, g.broker
	g.mu.Unlock()
	if reg == nil || mgr == nil || q == nil || b == nil {
		return adminapi.Status{}, errStarting
	}
	devs, err := reg.Devices(secrets.DeviceFilter{})
	if err != nil {
		return adminapi.Status{}, err
	}
	st := adminapi.Status{
		Version:       g.version,
		Started:       g.started.UTC().Format(time.RFC3339),
		UptimeSeconds: time.Since(g.started).Round(time.Millisecond).Seconds(),
		Devices: adminapi.DeviceCounts{Total: len(devs), ByState: map[string]int{
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
	cl.Endpoint = config.RedactURL(g.cfg.Cloud.EffectiveEndpoint())
	cl.Dialect = string(g.cfg.Cloud.Dialect)
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
		cl.Errors = append(cl.Errors, adminapi.ErrorCount{Error: e, Sessions: n})
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
	st.Local = adminapi.Local{Clients: bs.ClientsConnected, MessagesIn: bs.MessagesIn, Refused: bs.ConnectsRefused}
	st.Runtime = g.runtimeStatus()
	return st, nil
}
