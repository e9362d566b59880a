package gateway

import (
	"errors"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/edgegw/edgegw/gateway/adminapi"
	"github.com/edgegw/edgegw/internal/logsafe"
	"github.com/edgegw/edgegw/localbroker"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink"
)

// device.remove, and the drains of its spool "drain" mode: a device is
// disabled, its queue delivered, then it is removed (or kept, disabled,
// when the drain times out).

func (a *admin) deviceRemove(c *call, p *params) (result, error) {
	id := p.device()
	mode := p.str("spool")
	timeout, timeoutSet := p.duration("timeout", adminDrainDefault, time.Second, adminapi.DrainMax)
	if err := p.finish(); err != nil {
		return result{}, err
	}
	switch mode {
	case "discard", "drain":
	case "":
		return result{}, badRequest("params.spool: required: \"discard\" (drop the device's queued messages) or \"drain\" (deliver them first)")
	default:
		return result{}, badRequest("params.spool %q: want \"discard\" or \"drain\"", logsafe.Clip(mode))
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
		return result{}, &apiError{code: adminapi.CodeConflict,
			msg:  fmt.Sprintf("device %s: not removed: it has no deviceSecret, so its %d queued messages cannot be delivered; it stays disabled (remove it with spool \"discard\")", id, queued(q, id)),
			data: adminapi.Removed{Device: id.String(), State: "disabled", Spool: "drain", Queued: queued(q, id)}}
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
		a.reply(c, nil, &apiError{code: adminapi.CodeConflict,
			msg: fmt.Sprintf("device %s: not removed: %d messages still queued after %s (cloud session %s); it stays disabled with its queue — repeat with a longer timeout, or use spool \"discard\"",
				id, n, timeout, detail),
			data: adminapi.Removed{Device: id.String(), State: "disabled", Spool: "drain", Queued: n, Waited: timeout.String()}})
		return
	}
	res, err := a.removeNow(c, reg, mgr, q, b, id, "drain")
	if rm, ok := res.data.(adminapi.Removed); ok {
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
	return result{msg: msg, data: adminapi.Removed{Device: id.String(), State: "removed", Spool: mode, Discarded: discarded}}, nil
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
