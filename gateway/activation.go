package gateway

import (
	"errors"
	"log/slog"
	"unicode/utf8"

	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink"
)

// registryActivation is the gateway's uplink.ActivationStore: a device
// registered with only its product's productSecret (state
// awaiting-activation) gets its deviceSecret from the cloud through its
// session, and the registry keeps the outcome.
//
//   - An issued deviceSecret is stored with Registry.StoreActivatedSecret:
//     one fsynced bbolt transaction that keeps it encrypted in the device
//     record (state ready) and in an activation record that outlives a
//     deletion of the device. The session answers the cloud, disconnects
//     and logs in with the secret only after that returned.
//   - A refusal makes the device activation-failed, with the reason, until
//     an operator updates the device or its product; it is not retried.
type registryActivation struct {
	reg *secrets.Registry
	log *slog.Logger
}

var _ uplink.ActivationStore = registryActivation{}

// activationStore returns the store the sessions of devices awaiting
// activation report to.
func (g *Gateway) activationStore() registryActivation {
	return registryActivation{reg: g.reg, log: g.log.With("part", "activation")}
}

// DeviceSecret implements uplink.ActivationStore.
func (a registryActivation) DeviceSecret(id secrets.DeviceID) (secrets.Secret, error) {
	d, err := a.reg.GetDevice(id.ProductKey, id.DeviceName)
	if err != nil {
		return secrets.Secret{}, err
	}
	return d.DeviceSecret, nil
}

// StoreDeviceSecret implements uplink.ActivationStore. It returns after the
// registry's transaction is committed and fsynced.
func (a registryActivation) StoreDeviceSecret(id secrets.DeviceID, secret secrets.Secret, source string) error {
	return a.reg.StoreActivatedSecret(id.ProductKey, id.DeviceName, secret, source)
}

// errNotAwaiting leaves a device alone that an operator changed while its
// activation was refused.
var errNotAwaiting = errors.New("device is no longer awaiting activation")

// ActivationFailed implements uplink.ActivationStore: the device becomes
// activation-failed with reason, unless it meanwhile got a deviceSecret or
// left awaiting-activation.
func (a registryActivation) ActivationFailed(id secrets.DeviceID, reason string) error {
	d, err := a.reg.UpdateDevice(id.ProductKey, id.DeviceName, func(d *secrets.Device) error {
		if d.State != secrets.StateAwaitingActivation || !d.DeviceSecret.IsZero() {
			return errNotAwaiting
		}
		d.State = secrets.StateActivationFailed
		d.StateReason = clipReason(reason)
		return nil
	})
	if errors.Is(err, errNotAwaiting) {
		return nil
	}
	if err != nil {
		return err
	}
	a.log.Warn("device activation failed; update the device or its product to try again", "device", d.ID(), "reason", d.StateReason)
	return nil
}

// maxStateReason is the registry's limit on Device.StateReason.
const maxStateReason = 512

// clipReason shortens reason to the registry's limit on a rune boundary.
func clipReason(reason string) string {
	reason = string([]rune(reason)) // invalid UTF-8 becomes U+FFFD
	if len(reason) <= maxStateReason {
		return reason
	}
	cut := maxStateReason - len("…")
	for cut > 0 && !utf8.RuneStart(reason[cut]) {
		cut--
	}
	return reason[:cut] + "…"
}
