package gateway

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/edgegw/edgegw/gateway/adminapi"
	"github.com/edgegw/edgegw/internal/logsafe"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink"
	"github.com/edgegw/edgegw/uplink/spool"
)

// device.list, device.get, device.add and device.update, and the views of
// registry records, sessions and queues that replies show.

// sessionStates are the values device.list's state filter accepts beyond the
// registry states.
var sessionStates = []uplink.State{uplink.StateIdle, uplink.StateActivating, uplink.StateConnecting, uplink.StateConnected,
	uplink.StateBackoff, uplink.StateAuthFailed, uplink.StateStopped}

func (a *admin) deviceList(c *call, p *params) (result, error) {
	product := p.str("productKey")
	state := p.str("state")
	after := p.str("after")
	limit := p.integer("limit", adminListDefault, 1, adminapi.ListMax)
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
			logsafe.Clip(state), secrets.StateReady, secrets.StateAwaitingActivation, secrets.StateActivationFailed, joinStates(sessionStates))
	}
	chunk := limit + 1
	if match != nil {
		chunk = 500
	}
	removing := a.removing()
	out := adminapi.DeviceList{Devices: []adminapi.Device{}}
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

// deviceView shows a registry record with its session state and queue
// depth.
func deviceView(d secrets.Device, mgr *uplink.Manager, q Queue) adminapi.Device {
	id := d.ID()
	v := adminapi.Device{
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

func sessionView(s uplink.SessionStatus) *adminapi.Session {
	return &adminapi.Session{
		State: string(s.State), Dialect: string(s.Dialect), ClientID: s.ClientID, LastError: s.LastError,
		Attempts: s.Attempts, Connects: s.Connects, LastConnect: s.LastConnect, NextAttempt: s.NextAttempt,
		InFlight: s.InFlight, LastPuback: s.LastPuback, Sent: s.Sent, Resent: s.Resent,
		DeadLettered: s.DeadLettered, Subscriptions: s.Subscriptions,
	}
}

func queueView(s spool.DeviceStats) adminapi.Queue {
	return adminapi.Queue{
		Device: s.Device.String(), Depth: s.Depth, Bytes: s.Bytes, Oldest: s.Oldest,
		OldestAgeSeconds: s.OldestAge.Seconds(), LastSeq: s.LastSeq, PendingAcks: s.PendingAcks,
		LastAck: s.LastAck, Dropped: reasonCounts(s.Dropped), Rejected: s.Rejected,
		DeadLetters: s.DeadLetters, DeadLetterBytes: s.DeadLetterBytes, DeadLettersEvicted: s.DeadLettersEvicted,
	}
}

func totalsView(t spool.Totals) adminapi.Totals {
	return adminapi.Totals{
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
	det := adminapi.DeviceDetail{Device: deviceView(d, mgr, q), Queue: queueView(q.Stats(id))}
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
		return p, notFound("product %s: not found (add it with %s)", pk, adminapi.MethodProductAdd)
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
	fresh, _ := p.boolean("fresh")
	if err := p.finish(); err != nil {
		return result{}, err
	}
	if fresh && secret != "" {
		return result{}, badRequest("params.fresh: only for a device added without deviceSecret (it activates with the cloud)")
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
	// A device added again without its deviceSecret gets the one kept
	// from its earlier activation: the cloud activates a device only once.
	var kept *secrets.ActivationRecord
	if secret != "" {
		if err := checkSecretShape("params.deviceSecret", secret); err != nil {
			return result{}, err
		}
	} else if !fresh {
		rec, found, err := keptActivation(reg, prod, id)
		if err != nil {
			return result{}, err
		}
		if found {
			kept = &rec
		}
	}
	if secret == "" && kept == nil && prod.ProductSecret.IsZero() {
		return result{}, badRequest("params.deviceSecret: required (product %s has no productSecret to obtain one by dynamic activation)", prod.ProductKey)
	}
	if password != "" {
		if err := checkPasswordShape("params.localPassword", password); err != nil {
			return result{}, err
		}
	}
	if _, err := reg.GetDevice(id.ProductKey, id.DeviceName); err == nil {
		return result{}, conflict("device %s: already exists (change it with %s)", id, adminapi.MethodDeviceUpdate)
	} else if !errors.Is(err, secrets.ErrNotFound) {
		return result{}, err
	}
	d := secrets.Device{ProductKey: id.ProductKey, DeviceName: id.DeviceName, ClientID: clientID, Disabled: disabled}
	if secret != "" {
		d.DeviceSecret = secrets.NewSecret(secret)
	}
	if kept != nil {
		d.DeviceSecret, d.ActivatedAt = kept.Secret, kept.Time
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
	attrs := []any{"state", stored.State, "disabled", stored.Disabled, "hasDeviceSecret", !stored.DeviceSecret.IsZero(),
		"hasLocalPassword", stored.LocalPassword != "", "clientId", stored.ClientID}
	if kept != nil {
		attrs = append(attrs, "deviceSecretFrom", "kept activation record", "activationSource", kept.Source, "activationSeq", kept.Seq)
	}
	if fresh {
		attrs = append(attrs, "fresh", true)
	}
	a.audit(c, id.String(), "added", attrs...)
	v := deviceView(stored, mgr, q)
	v.Dialect = string(prod.Dialect)
	msg := fmt.Sprintf("device %s added (%s, session %s)", id, stored.State, v.Session)
	if kept != nil {
		msg += " with " + keptNote(*kept)
	}
	return result{msg: msg, data: v}, nil
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
	msg := fmt.Sprintf("device %s updated: %s (session %s)", id, what, v.Session)
	if stored.State == secrets.StateActivationFailed && !stored.Disabled {
		msg += fmt.Sprintf("; its activation failed earlier (%s): retry it with %s ('edgegw ctl device activate %s')", stored.StateReason, adminapi.MethodDeviceActivate, id)
	}
	return result{msg: msg, data: v}, nil
}
