package gateway

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/edgegw/edgegw/gateway/config"
	"github.com/edgegw/edgegw/internal/logsafe"
	"github.com/edgegw/edgegw/localbroker"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink"
)

// authenticator decides who a local connection is, from the registry. It
// implements localbroker.Authenticator.
type authenticator struct {
	reg   *secrets.Registry
	modes map[string]bool
	// admins checks [[broker.admin]] users and throttles guessing
	// (adminlogin.go); Reload replaces its users.
	admins *adminLogins
	log    *slog.Logger
	// act obtains the deviceSecret of a device that activates itself and
	// has none stored yet (the uplink manager); activateWait bounds that
	// wait (default defaultActivateWait).
	act          deviceActivator
	activateWait time.Duration
	// sessions, when set, is told the connect parameters of every signed
	// Alibaba login (see carryConnectParams).
	sessions connectParamsUpdater
}

// connectParamsUpdater is what the authenticator needs of the uplink
// manager: make a device's cloud session carry the extension parameters
// its firmware presented (uplink.Manager.UpdateExtra).
type connectParamsUpdater interface {
	UpdateExtra(id secrets.DeviceID, extra []secrets.Param) (uplink.ExtraUpdate, error)
}

func refusal(code byte, format string, args ...any) error {
	return &localbroker.Refusal{Code: code, Reason: fmt.Sprintf(format, args...)}
}

// Authenticate implements localbroker.Authenticator. Order: the unix socket
// is the admin; a configured admin user name is the admin; a username
// deviceName&productKey with a signed clientId is a device using its cloud
// credentials, otherwise a device using its local password; no username
// but a verified client certificate is a device named by the CN.
func (a *authenticator) Authenticate(r localbroker.ConnectRequest) (localbroker.Identity, error) {
	if r.Transport == localbroker.TransportUnix {
		return localbroker.Identity{Admin: true, Name: "unix", Method: localbroker.MethodUnix}, nil
	}
	if u := a.admins.user(r.Username); u != nil {
		return a.admins.login(u, r.Remote, r.Password)
	}
	if r.Username == "" {
		if len(r.PeerCertificates) > 0 && a.modes[config.AuthCert] {
			return a.byCertificate(r)
		}
		return localbroker.Identity{}, refusal(localbroker.RefuseBadCredentials, "no username (want deviceName&productKey)")
	}
	dn, pk, ok := strings.Cut(r.Username, "&")
	if !ok || dn == "" || pk == "" {
		return localbroker.Identity{}, refusal(localbroker.RefuseBadCredentials, "username %q is not deviceName&productKey", logsafe.Clip(r.Username))
	}
	dev, prod, err := a.device(pk, dn)
	if err != nil {
		return localbroker.Identity{}, err
	}
	// EnOS pushes every downlink to a device without a SUBSCRIBE; an
	// Alibaba device asks for that with _ss=1 in its signed clientId.
	id := localbroker.Identity{DeviceID: dev.ID(), ServerSubscribed: prod.Dialect == secrets.EnOS, Dialect: prod.Dialect}
	if strings.Contains(r.ClientID, "|") {
		if !a.modes[config.AuthSigned] {
			return localbroker.Identity{}, refusal(localbroker.RefuseNotAuthorized, "%s: signed credentials are not enabled (broker.auth)", dev.ID())
		}
		p, err := secrets.ParseConnect(prod.Dialect, r.ClientID, r.Username, r.Password)
		if err != nil {
			return localbroker.Identity{}, verifyRefusal(dev.ID(), err)
		}
		if p.UsesProductSecret() {
			// Firmware that activates itself (EnOS securemode=3, Alibaba
			// authType=register) gets its deviceSecret from the gateway
			// as it would from the cloud (activation.go).
			return a.productSecretLogin(r, dev, prod, p)
		}
		if dev.DeviceSecret.IsZero() {
			return localbroker.Identity{}, refusal(localbroker.RefuseNotAuthorized, "%s: no deviceSecret yet (%s); use a local password", dev.ID(), dev.State)
		}
		if err := p.Verify(dev.DeviceSecret, secrets.VerifyOptions{}); err != nil {
			return localbroker.Identity{}, verifyRefusal(dev.ID(), err)
		}
		if ss, _ := p.Param("_ss"); ss == "1" {
			id.ServerSubscribed = true
		}
		if prod.Dialect == secrets.Aliyun {
			a.carryConnectParams(dev, p.Params)
		}
		id.Method = localbroker.MethodSigned
		return id, nil
	}
	if !a.modes[config.AuthPassword] {
		return localbroker.Identity{}, refusal(localbroker.RefuseNotAuthorized, "%s: local passwords are not enabled (broker.auth)", dev.ID())
	}
	if r.Password.IsZero() {
		return localbroker.Identity{}, refusal(localbroker.RefuseBadCredentials, "%s: no password", dev.ID())
	}
	ok, err = a.reg.CheckLocalPassword(pk, dn, r.Password)
	if err != nil {
		return localbroker.Identity{}, refusal(localbroker.RefuseServerUnavailable, "%s: check local password: %v", dev.ID(), err)
	}
	if !ok {
		return localbroker.Identity{}, refusal(localbroker.RefuseNotAuthorized, "%s: wrong local password (or none set)", dev.ID())
	}
	id.Method = localbroker.MethodPassword
	return id, nil
}

// carryConnectParams makes the cloud session of a device that just logged
// in with its signed cloud credentials carry the extension parameters it
// presented (_ss, ext, _v, lan, gw: secrets.FilterConnectParams), so the
// cloud treats the session as that firmware — with _ss=1 it pushes the
// system downlinks the firmware never subscribes to, with ext bit 0 it
// allows RRPC on custom topics (docs/protocol.md §2.2, §7.9). They are
// stored with the device, for restarts, when they differ from the stored
// ones; the running session carries them from its next attempt on, and
// reconnects once at once when they change what the cloud does for it
// (_ss, ext; never a second session: uplink.Manager.UpdateExtra).
// Both comparisons are independent, so a failure or a race is repaired by
// the device's next login. Nothing here refuses the login; EnOS has no
// such parameters (its sessions are server-subscribed anyway).
func (a *authenticator) carryConnectParams(dev secrets.Device, presented []secrets.Param) {
	id := dev.ID()
	kept, dropped := secrets.FilterConnectParams(presented)
	for _, err := range dropped {
		a.log.Warn("connect parameter not carried to the cloud session", "device", id.String(), "err", err)
	}
	if !secrets.EqualConnectParams(dev.ConnectParams, kept) {
		if _, _, err := a.reg.SetConnectParams(dev.ProductKey, dev.DeviceName, kept); err != nil {
			a.log.Error("store the device's connect parameters", "device", id.String(), "err", err)
		}
	}
	if a.sessions == nil {
		return
	}
	up, err := a.sessions.UpdateExtra(id, kept)
	switch {
	case errors.Is(err, uplink.ErrUnknownDevice), errors.Is(err, uplink.ErrStopped):
		// No cloud session (yet, or any more): it starts from the registry.
	case err != nil:
		a.log.Error("apply the device's connect parameters to its cloud session", "device", id.String(), "err", err)
	case up.Reconnected:
		a.log.Info("cloud session reconnects with the connect parameters the device presented", "device", id.String(),
			"params", logsafe.Clip(secrets.FormatConnectParams(kept)), "previous", logsafe.Clip(secrets.FormatConnectParams(up.Prev)))
	case up.Changed:
		a.log.Info("cloud session carries the connect parameters the device presented from its next connection", "device", id.String(),
			"params", logsafe.Clip(secrets.FormatConnectParams(kept)), "previous", logsafe.Clip(secrets.FormatConnectParams(up.Prev)))
	}
}

// byCertificate maps a verified client certificate to a device: the CN is
// "productKey/deviceName" or "deviceName&productKey".
func (a *authenticator) byCertificate(r localbroker.ConnectRequest) (localbroker.Identity, error) {
	cn := r.PeerCertificates[0].Subject.CommonName
	pk, dn, ok := strings.Cut(cn, "/")
	if !ok {
		dn, pk, ok = strings.Cut(cn, "&")
	}
	if !ok || pk == "" || dn == "" {
		return localbroker.Identity{}, refusal(localbroker.RefuseNotAuthorized, "client certificate CN %q names no device (want productKey/deviceName)", logsafe.Clip(cn))
	}
	dev, prod, err := a.device(pk, dn)
	if err != nil {
		return localbroker.Identity{}, err
	}
	return localbroker.Identity{DeviceID: dev.ID(), ServerSubscribed: prod.Dialect == secrets.EnOS, Dialect: prod.Dialect,
		Method: localbroker.MethodCert}, nil
}

// device loads an enabled device and its product.
func (a *authenticator) device(pk, dn string) (secrets.Device, secrets.Product, error) {
	dev, err := a.reg.GetDevice(pk, dn)
	if errors.Is(err, secrets.ErrNotFound) {
		return dev, secrets.Product{}, refusal(localbroker.RefuseNotAuthorized, "unknown device %s", logsafe.Clip(secrets.DeviceID{ProductKey: pk, DeviceName: dn}.String()))
	}
	if err != nil {
		return dev, secrets.Product{}, refusal(localbroker.RefuseServerUnavailable, "look up device: %v", err)
	}
	if dev.Disabled {
		return dev, secrets.Product{}, refusal(localbroker.RefuseNotAuthorized, "%s is disabled", dev.ID())
	}
	prod, err := a.reg.GetProduct(pk)
	if err != nil {
		return dev, prod, refusal(localbroker.RefuseServerUnavailable, "look up product of %s: %v", dev.ID(), err)
	}
	return dev, prod, nil
}

func verifyRefusal(id secrets.DeviceID, err error) error {
	var ve *secrets.VerifyError
	if errors.As(err, &ve) {
		return refusal(ve.ConnackCode(), "%s: %v", id, ve)
	}
	return refusal(localbroker.RefuseNotAuthorized, "%s: %v", id, err)
}
