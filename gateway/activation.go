package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/edgegw/edgegw/gateway/adminapi"
	"github.com/edgegw/edgegw/localbroker"
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
//   - A refusal makes the device activation-failed, with the reason; it is
//     not retried until an operator asks: device.activate (edgegw ctl
//     device activate), or product.update with a new productSecret.
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
	a.log.Warn("device activation failed; "+activationAdvice(d.ID()), "device", d.ID(), "reason", d.StateReason)
	return nil
}

// activationAdvice tells an operator how to recover a device whose
// activation failed, with the commands that do it.
func activationAdvice(id secrets.DeviceID) string {
	return fmt.Sprintf("fix the cause, then retry with 'edgegw ctl device activate %s' (%s); "+
		"a wrong productSecret is fixed with 'edgegw ctl product update %s -secret-file FILE', which retries by itself",
		id, adminapi.MethodDeviceActivate, id.ProductKey)
}

// errKeptUnusable is a kept activation record that device.add or
// device.activate cannot use; its message says why and what to do.
var errKeptUnusable = errors.New("kept deviceSecret unusable")

// sourceDialects are the dialects of the activation sources (the cloud a
// kept deviceSecret came from).
var sourceDialects = map[string]secrets.Dialect{
	uplink.SourceEnOSActivate:   secrets.EnOS,
	uplink.SourceAliyunRegister: secrets.Aliyun,
}

// keptActivation finds the deviceSecret the registry kept from the last
// activation of id (it outlives a deletion of the device: the clouds
// activate a device only once, docs/protocol.md §6). found is false when
// there is none. A record that cannot be used — unreadable, from the other
// cloud, or obtained with another productSecret than prod has now — is a
// 409 saying exactly why, so that the device is not activated again in
// vain (the cloud would refuse it, CONNACK 5); the operator gives the
// deviceSecret, or asks for a fresh activation.
func keptActivation(reg *secrets.Registry, prod secrets.Product, id secrets.DeviceID) (rec secrets.ActivationRecord, found bool, err error) {
	recs, err := reg.Activations(id.ProductKey, id.DeviceName)
	if err != nil {
		return rec, false, keptConflict(id, "cannot be read (%v)", err)
	}
	if len(recs) == 0 {
		return rec, false, nil
	}
	rec = recs[len(recs)-1]
	when := rec.Time.UTC().Format(time.RFC3339)
	if d, ok := sourceDialects[rec.Source]; ok && d != prod.Dialect {
		return rec, false, keptConflict(id, "was obtained from %s (%s, %s), but product %s is now %s", d, rec.Source, when, prod.ProductKey, prod.Dialect)
	}
	if known, same := rec.ObtainedWith(prod.ProductSecret); known && !same {
		return rec, false, keptConflict(id, "was obtained (%s, %s) with another productSecret than product %s has now (the product was re-created, or its productSecret changed), so the cloud most likely no longer accepts it",
			rec.Source, when, prod.ProductKey)
	}
	return rec, true, nil
}

func keptConflict(id secrets.DeviceID, format string, args ...any) error {
	return &apiError{code: adminapi.CodeConflict, msg: fmt.Sprintf("device %s: the deviceSecret kept from its earlier activation ", id) +
		fmt.Sprintf(format, args...) +
		fmt.Sprintf("; it is not activated again, since the cloud activates a device only once: give its deviceSecret ('edgegw ctl device add %s -secret-file FILE'), or, after resetting it in the cloud console, activate it afresh ('-fresh', params.fresh)", id)}
}

// keptNote describes the kept record a device got its deviceSecret from,
// for replies.
func keptNote(rec secrets.ActivationRecord) string {
	return fmt.Sprintf("the deviceSecret kept from its activation on %s (%s); not activated again",
		rec.Time.UTC().Format(time.RFC3339), rec.Source)
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

// deviceActivator obtains a deviceSecret from the cloud on the device's
// session; *uplink.Manager implements it.
type deviceActivator interface {
	Activate(ctx context.Context, id secrets.DeviceID) (secrets.Secret, error)
}

// defaultActivateWait bounds how long a device's self-activation login
// waits for the cloud. It runs on the connection's goroutine before the
// CONNACK, so it stays well under the firmware's CONNECT timeout; a device
// that is refused with CONNACK 3 (server unavailable) tries again later.
const defaultActivateWait = 4 * time.Second

// aliyunRegisterHold is how long an Alibaba registration connection stays
// open after /ext/register was pushed, as the cloud does before it closes
// it (the SDK reads the message and disconnects itself).
const aliyunRegisterHold = 200 * time.Millisecond

// activateInfoID numbers the EnOS activate/info messages the gateway sends.
var activateInfoID atomic.Uint64

// productSecretLogin serves firmware that activates itself with its
// product's productSecret (docs/protocol.md §6): EnOS dynamic activation
// (securemode=3) and Alibaba MQTT dynamic registration (authType=register,
// TLS only). The signature is verified against the productSecret in the
// registry. The deviceSecret is the one the registry holds (the gateway
// activated the device earlier: the cloud activates a device only once, so
// a device activating again after a firmware reset gets the same secret),
// or else the one the device's cloud session obtains now, which is stored
// durably before this returns. The device gets a provisioning identity:
// the broker pushes the secret right after the CONNACK; then the device
// logs in normally with it. Refusals: 5 for a wrong signature, a product
// without productSecret, or a refused activation; 3 (retry later) while
// the cloud cannot be reached.
func (a *authenticator) productSecretLogin(r localbroker.ConnectRequest, dev secrets.Device, prod secrets.Product, p *secrets.Presented) (localbroker.Identity, error) {
	id := dev.ID()
	if prod.ProductSecret.IsZero() {
		return localbroker.Identity{}, refusal(localbroker.RefuseNotAuthorized,
			"%s: product-secret login, but the product has no productSecret (dynamic activation is not enabled)", id)
	}
	if prod.Dialect == secrets.Aliyun {
		if p.AuthType != "register" {
			return localbroker.Identity{}, refusal(localbroker.RefuseNotAuthorized,
				"%s: authType=%s is not supported; the device must be pre-registered (authType=register)", id, p.AuthType)
		}
		if r.Transport != localbroker.TransportTLS && r.Transport != localbroker.TransportWSS {
			return localbroker.Identity{}, refusal(localbroker.RefuseServerUnavailable,
				"%s: dynamic registration needs TLS or wss, not %s (as on the cloud)", id, r.Transport)
		}
	}
	if err := p.Verify(prod.ProductSecret, secrets.VerifyOptions{}); err != nil {
		return localbroker.Identity{}, verifyRefusal(id, err)
	}
	secret, how, err := a.deviceSecretFor(dev)
	if err != nil {
		return localbroker.Identity{}, err
	}
	prov, err := provisionFor(prod.Dialect, id, secret)
	if err != nil {
		return localbroker.Identity{}, refusal(localbroker.RefuseServerUnavailable, "%s: %v", id, err)
	}
	a.log.Info("device activates itself: handing it its deviceSecret", "device", id, "topic", prov.Topic, "secret_from", how)
	return localbroker.Identity{DeviceID: id, Dialect: prod.Dialect, Method: localbroker.MethodSigned, Provision: prov}, nil
}

// deviceSecretFor returns the stored deviceSecret of dev, obtaining it on
// the device's cloud session first when there is none. how says which.
func (a *authenticator) deviceSecretFor(dev secrets.Device) (secret secrets.Secret, how string, err error) {
	id := dev.ID()
	if !dev.DeviceSecret.IsZero() {
		return dev.DeviceSecret, "registry", nil
	}
	if dev.State == secrets.StateActivationFailed {
		return secrets.Secret{}, "", refusal(localbroker.RefuseNotAuthorized,
			"%s: the gateway's activation of this device failed (%s); %s", id, dev.StateReason, activationAdvice(id))
	}
	if a.act == nil {
		return secrets.Secret{}, "", refusal(localbroker.RefuseServerUnavailable, "%s: no deviceSecret yet and no cloud session to obtain it", id)
	}
	wait := a.activateWait
	if wait <= 0 {
		wait = defaultActivateWait
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if _, err := a.act.Activate(ctx, id); err != nil {
		code := localbroker.RefuseServerUnavailable
		if errors.Is(err, uplink.ErrActivationRefused) {
			code = localbroker.RefuseNotAuthorized
		}
		return secrets.Secret{}, "", refusal(code, "%s: no deviceSecret yet: %v", id, err)
	}
	// What is pushed is what the registry holds: durable before it leaves.
	d, err := a.reg.GetDevice(id.ProductKey, id.DeviceName)
	if err != nil {
		return secrets.Secret{}, "", refusal(localbroker.RefuseServerUnavailable, "%s: look up device: %v", id, err)
	}
	if d.DeviceSecret.IsZero() {
		return secrets.Secret{}, "", refusal(localbroker.RefuseServerUnavailable, "%s: the activated deviceSecret is not in the registry", id)
	}
	return d.DeviceSecret, "cloud", nil
}

// provisionFor builds the message the cloud would push to a device that
// activated itself (docs/protocol.md §6): EnOS activate/info (the device
// may answer on activate/info_reply; the connection stays until it
// leaves), Alibaba /ext/register (the connection is closed right after).
func provisionFor(d secrets.Dialect, id secrets.DeviceID, secret secrets.Secret) (*localbroker.Provision, error) {
	if d == secrets.EnOS {
		type params struct {
			ProductKey   string `json:"productKey"`
			DeviceKey    string `json:"deviceKey"`
			DeviceSecret string `json:"deviceSecret"`
		}
		payload, err := json.Marshal(struct {
			ID      string `json:"id"`
			Version string `json:"version"`
			Method  string `json:"method"`
			Params  params `json:"params"`
		}{strconv.FormatUint(activateInfoID.Add(1), 10), "1.0", "thing.activate.info", params{id.ProductKey, id.DeviceName, secret.Reveal()}})
		if err != nil {
			return nil, errors.New("encode activate/info")
		}
		topic := "/ext/session/" + id.ProductKey + "/" + id.DeviceName + "/thing/activate/info"
		return &localbroker.Provision{Topic: topic, Payload: secrets.NewSecret(string(payload)), Reply: topic + "_reply"}, nil
	}
	payload, err := json.Marshal(struct {
		ProductKey   string `json:"productKey"`
		DeviceName   string `json:"deviceName"`
		DeviceSecret string `json:"deviceSecret"`
	}{id.ProductKey, id.DeviceName, secret.Reveal()})
	if err != nil {
		return nil, errors.New("encode /ext/register")
	}
	return &localbroker.Provision{Topic: "/ext/register", Payload: secrets.NewSecret(string(payload)), Hold: aliyunRegisterHold}, nil
}
