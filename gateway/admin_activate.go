package gateway

import (
	"errors"
	"fmt"
	"time"

	"github.com/edgegw/edgegw/gateway/adminapi"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink"
)

// device.activate: an operator's way out of activation-failed, and of
// waiting for a device that is still awaiting activation.

// errHasSecret stops an activation of a device that got its deviceSecret
// meanwhile.
var errHasSecret = errors.New("device has a deviceSecret")

func (a *admin) deviceActivate(c *call, p *params) (result, error) {
	id := p.device()
	fresh, _ := p.boolean("fresh")
	if err := p.finish(); err != nil {
		return result{}, err
	}
	if a.draining(id) != nil {
		return result{}, conflict("device %s: being removed (waiting for its queue to drain)", id)
	}
	reg, mgr, q, _ := a.parts()
	old, err := getDevice(reg, id)
	if err != nil {
		return result{}, err
	}
	prod, err := getProduct(reg, id.ProductKey)
	if err != nil {
		return result{}, err
	}
	if !old.DeviceSecret.IsZero() {
		since := ""
		if !old.ActivatedAt.IsZero() {
			since = ", activated " + old.ActivatedAt.UTC().Format(time.RFC3339)
		}
		return result{}, conflict("device %s: already has its deviceSecret (%s%s); nothing to activate (a new one is set with %s)",
			id, old.State, since, adminapi.MethodDeviceUpdate)
	}
	if old.Disabled {
		return result{}, conflict("device %s: disabled; enable it first ('edgegw ctl device update %s -enable'), then activate it", id, id)
	}
	view := func(d secrets.Device) adminapi.Device {
		v := deviceView(d, mgr, q)
		v.Dialect = string(prod.Dialect)
		return v
	}

	// A deviceSecret kept from an earlier activation comes first: the
	// cloud would refuse a second activation.
	if !fresh {
		rec, found, err := keptActivation(reg, prod, id)
		if err != nil {
			return result{}, err
		}
		if found {
			stored, err := a.changeUnactivated(old, func(d *secrets.Device) {
				d.DeviceSecret, d.State, d.StateReason, d.ActivatedAt = rec.Secret, secrets.StateReady, "", rec.Time
			})
			if err != nil {
				return result{}, err
			}
			a.audit(c, id.String(), "deviceSecret restored from the kept activation record", "previousState", old.State,
				"activationSource", rec.Source, "activationSeq", rec.Seq)
			v := view(stored)
			return result{msg: fmt.Sprintf("device %s: ready with %s (session %s)", id, keptNote(rec), v.Session), data: v}, nil
		}
	}
	if prod.ProductSecret.IsZero() {
		return result{}, conflict("device %s: product %s has no productSecret to activate it with; set one with %s ('edgegw ctl product update %s -secret-file FILE')",
			id, prod.ProductKey, adminapi.MethodProductUpdate, prod.ProductKey)
	}
	if st, ok := mgr.Status(id); ok && old.State == secrets.StateAwaitingActivation && st.State == uplink.StateActivating {
		v := view(old)
		return result{msg: fmt.Sprintf("device %s: an activation attempt is in progress (session %s)", id, v.Session), data: v}, nil
	}
	stored, err := a.changeUnactivated(old, func(d *secrets.Device) {
		d.State, d.StateReason = secrets.StateAwaitingActivation, ""
	})
	if err != nil {
		return result{}, err
	}
	attrs := []any{"previousState", old.State, "fresh", fresh}
	if old.StateReason != "" {
		attrs = append(attrs, "previousReason", old.StateReason)
	}
	a.audit(c, id.String(), "activation retried", attrs...)
	v := view(stored)
	return result{msg: fmt.Sprintf("device %s: activating now with the productSecret of product %s (was %s; session %s)",
		id, prod.ProductKey, old.State, v.Session), data: v}, nil
}

// changeUnactivated changes a device that has no deviceSecret (change runs
// inside the registry transaction) and restarts its cloud session to match
// — a parked or backing-off session is replaced, so the next attempt is
// made at once (within the device's connect window and the gateway's
// connect budget). On failure the record is put back.
func (a *admin) changeUnactivated(old secrets.Device, change func(*secrets.Device)) (secrets.Device, error) {
	reg, _, _, _ := a.parts()
	id := old.ID()
	stored, err := reg.UpdateDevice(id.ProductKey, id.DeviceName, func(d *secrets.Device) error {
		if !d.DeviceSecret.IsZero() {
			return errHasSecret
		}
		change(d)
		return nil
	})
	switch {
	case errors.Is(err, errHasSecret):
		return stored, conflict("device %s: got its deviceSecret meanwhile; nothing to activate", id)
	case errors.Is(err, secrets.ErrNotFound):
		return stored, notFound("device %s: not found", id)
	case err != nil:
		return stored, err
	}
	if err := a.syncSession(stored, true); err != nil {
		if errors.Is(err, uplink.ErrStopped) {
			return stored, fmt.Errorf("device %s: change stored; it applies with the next run (the gateway is stopping)", id)
		}
		if _, rerr := reg.UpdateDevice(id.ProductKey, id.DeviceName, func(d *secrets.Device) error {
			if !d.DeviceSecret.Equal(stored.DeviceSecret) {
				return errHasSecret // the session stored a secret: keep it
			}
			d.DeviceSecret, d.State, d.StateReason, d.ActivatedAt = old.DeviceSecret, old.State, old.StateReason, old.ActivatedAt
			return nil
		}); rerr != nil && !errors.Is(rerr, errHasSecret) {
			a.log.Error("roll back device.activate", "device", id.String(), "err", rerr)
		}
		return stored, fmt.Errorf("restart the cloud session of device %s (not changed): %w", id, err)
	}
	return stored, nil
}
