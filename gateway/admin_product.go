package gateway

import (
	"errors"
	"fmt"
	"strings"

	"github.com/edgegw/edgegw/gateway/adminapi"
	"github.com/edgegw/edgegw/internal/logsafe"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink"
)

// product.add, product.update, product.remove, product.list and product.get.

func (a *admin) productAdd(c *call, p *params) (result, error) {
	pk := p.str("productKey")
	dialectName := p.str("dialect")
	secret := p.str("productSecret")
	cp := p.str("defaultConnectParams")
	if err := p.finish(); err != nil {
		return result{}, err
	}
	if pk == "" {
		return result{}, badRequest("params.productKey: required")
	}
	defaults, err := parseConnectParams("params.defaultConnectParams", cp)
	if err != nil {
		return result{}, err
	}
	dialect := a.g.cfg.Cloud.Dialect
	if dialectName != "" {
		d, err := secrets.ParseDialect(dialectName)
		if err != nil {
			return result{}, badRequest("params.dialect %q: want aliyun or enos", logsafe.Clip(dialectName))
		}
		dialect = d
	}
	if err := secrets.ValidateProductKey(dialect, pk); err != nil {
		return result{}, badRequest("params.%v", err)
	}
	if len(defaults) > 0 && dialect != secrets.Aliyun {
		return result{}, badRequest("params.defaultConnectParams: Alibaba clientId parameters; product %s is %s (EnOS sessions carry none)", pk, dialect)
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
	prod := secrets.Product{ProductKey: pk, Dialect: dialect, DefaultConnectParams: defaults}
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
	a.audit(c, pk, "product added", "dialect", dialect, "hasProductSecret", secret != "",
		"defaultConnectParams", secrets.FormatConnectParams(defaults))
	return result{msg: fmt.Sprintf("product %s added (%s)", pk, dialect), data: productView(prod, 0)}, nil
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
	return result{msg: fmt.Sprintf("product %s removed", pk), data: adminapi.Product{ProductKey: pk}}, nil
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
	out := make([]adminapi.Product, 0, len(ps))
	for _, pr := range ps {
		out = append(out, productView(pr, count[pr.ProductKey]))
	}
	return result{msg: fmt.Sprintf("%d products", len(out)), data: out}, nil
}

// productView shows a product without its secret.
func productView(pr secrets.Product, devices int) adminapi.Product {
	return adminapi.Product{ProductKey: pr.ProductKey, Dialect: string(pr.Dialect), HasProductSecret: !pr.ProductSecret.IsZero(),
		DefaultConnectParams: secrets.FormatConnectParams(pr.DefaultConnectParams), Devices: devices, Created: pr.Created, Updated: pr.Updated}
}

// parseConnectParams reads connect parameters given as "k=v,k=v" ("" is
// none). They are not secret: problems quote them.
func parseConnectParams(field, s string) ([]secrets.Param, error) {
	if s == "" {
		return nil, nil
	}
	var ps []secrets.Param
	for i, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, badRequest("%s: item %d %q: want key=value (e.g. \"_ss=1,ext=3\")", field, i+1, logsafe.Clip(kv))
		}
		ps = append(ps, secrets.Param{Key: k, Value: v})
	}
	if err := secrets.ValidateConnectParams(ps); err != nil {
		return nil, badRequest("%s: %v", field, err)
	}
	return ps, nil
}

func (a *admin) productGet(c *call, p *params) (result, error) {
	pk := p.str("productKey")
	if err := p.finish(); err != nil {
		return result{}, err
	}
	if pk == "" {
		return result{}, badRequest("params.productKey: required")
	}
	reg, _, _, _ := a.parts()
	pr, err := getProduct(reg, pk)
	if err != nil {
		return result{}, err
	}
	devs, err := reg.Devices(secrets.DeviceFilter{ProductKey: pk})
	if err != nil {
		return result{}, err
	}
	v := productView(pr, len(devs))
	return result{msg: fmt.Sprintf("product %s (%s): %d devices", pk, pr.Dialect, v.Devices), data: v}, nil
}

// productUpdateMaxErrors bounds the per-device errors a product.update
// reply lists.
const productUpdateMaxErrors = 20

// productUpdate changes a product, then brings its devices' cloud sessions
// in line: a new productSecret restarts the activation of every device
// still without a deviceSecret (activation-failed ones become
// awaiting-activation again: the secret was a likely cause); new default
// connect parameters reach the sessions of devices that carry the default
// (uplink.Manager.UpdateExtra: one reconnect when _ss or ext change). The
// dialect cannot change while the product has devices: their names,
// signatures, sessions and kept activation records belong to the dialect.
func (a *admin) productUpdate(c *call, p *params) (result, error) {
	pk := p.str("productKey")
	secret, secretSet, secretNull := p.nullable("productSecret")
	dialectName, dialectSet, _ := p.nullable("dialect")
	cp, cpSet, cpNull := p.nullable("defaultConnectParams")
	if err := p.finish(); err != nil {
		return result{}, err
	}
	if pk == "" {
		return result{}, badRequest("params.productKey: required")
	}
	if !secretSet && !dialectSet && !cpSet {
		return result{}, badRequest("params: nothing to change (give productSecret, dialect or defaultConnectParams)")
	}
	if secretNull || (secretSet && secret == "") {
		return result{}, badRequest("params.productSecret: cannot be removed (give a new one to change it)")
	}
	if secretSet {
		if err := checkSecretShape("params.productSecret", secret); err != nil {
			return result{}, err
		}
	}
	var defaults []secrets.Param
	if cpSet && !cpNull {
		var err error
		if defaults, err = parseConnectParams("params.defaultConnectParams", cp); err != nil {
			return result{}, err
		}
	}
	reg, mgr, _, _ := a.parts()
	old, err := getProduct(reg, pk)
	if err != nil {
		return result{}, err
	}
	devs, err := reg.Devices(secrets.DeviceFilter{ProductKey: pk})
	if err != nil {
		return result{}, err
	}
	next := old
	var changes []string
	if dialectSet {
		d, err := secrets.ParseDialect(dialectName)
		if err != nil {
			return result{}, badRequest("params.dialect %q: want aliyun or enos", logsafe.Clip(dialectName))
		}
		if d != old.Dialect {
			if len(devs) > 0 {
				return result{}, conflict("product %s: has %d devices; its dialect cannot change from %s to %s while it has devices (their names, signatures, sessions and kept activation records are %s's): remove them first",
					pk, len(devs), old.Dialect, d, old.Dialect)
			}
			if err := secrets.ValidateProductKey(d, pk); err != nil {
				return result{}, badRequest("params.dialect: %v", err)
			}
			next.Dialect = d
			changes = append(changes, fmt.Sprintf("dialect %s -> %s", old.Dialect, d))
		}
	}
	newSecret := secretSet && !old.ProductSecret.Equal(secrets.NewSecret(secret))
	if newSecret {
		next.ProductSecret = secrets.NewSecret(secret)
		if old.ProductSecret.IsZero() {
			changes = append(changes, "productSecret set")
		} else {
			changes = append(changes, "productSecret changed")
		}
	}
	newDefaults := cpSet && secrets.FormatConnectParams(defaults) != secrets.FormatConnectParams(old.DefaultConnectParams)
	if newDefaults {
		next.DefaultConnectParams = defaults
		changes = append(changes, fmt.Sprintf("defaultConnectParams %q -> %q",
			secrets.FormatConnectParams(old.DefaultConnectParams), secrets.FormatConnectParams(defaults)))
	} else if cpSet {
		next.DefaultConnectParams = old.DefaultConnectParams
	}
	if len(next.DefaultConnectParams) > 0 && next.Dialect != secrets.Aliyun {
		return result{}, badRequest("params.defaultConnectParams: Alibaba clientId parameters; product %s is %s (clear them with null)", pk, next.Dialect)
	}
	res := adminapi.ProductUpdate{Changes: changes}
	if len(changes) == 0 {
		res.Product = productView(old, len(devs))
		res.Changes = []string{}
		return result{msg: fmt.Sprintf("product %s unchanged", pk), data: res}, nil
	}
	if _, err := reg.PutProduct(next); err != nil {
		if errors.Is(err, secrets.ErrConflict) {
			return result{}, conflict("product %s: %v", pk, err)
		}
		return result{}, err
	}
	stored, err := reg.GetProduct(pk)
	if err != nil {
		return result{}, err
	}
	res.Product = productView(stored, len(devs))
	fail := func(id secrets.DeviceID, err error) {
		a.log.Error("product.update: device not brought in line", "product", pk, "device", id.String(), "err", err)
		if len(res.Errors) < productUpdateMaxErrors {
			re := adminapi.RowError{Device: id.String(), Code: adminapi.CodeInternal, Message: err.Error()}
			res.Errors = append(res.Errors, re)
		}
	}
	for _, d := range devs {
		id := d.ID()
		switch {
		case newSecret && d.DeviceSecret.IsZero():
			if n, err := a.retryActivation(d); err != nil {
				fail(id, err)
			} else {
				res.ActivationRetried += n
			}
		case newDefaults && d.ConnectParams == nil && stored.Dialect == secrets.Aliyun:
			up, err := mgr.UpdateExtra(id, connectParams(d, stored))
			switch {
			case errors.Is(err, uplink.ErrUnknownDevice):
				// No session: it starts from the registry.
			case err != nil:
				fail(id, err)
			case up.Changed:
				res.SessionsUpdated++
			}
		}
	}
	a.audit(c, pk, strings.Join(changes, ", "), "activationRetried", res.ActivationRetried,
		"sessionsUpdated", res.SessionsUpdated, "deviceErrors", len(res.Errors))
	msg := fmt.Sprintf("product %s updated: %s", pk, strings.Join(changes, ", "))
	if newSecret {
		msg += fmt.Sprintf("; %d devices activate again", res.ActivationRetried)
	}
	if newDefaults {
		msg += fmt.Sprintf("; %d cloud sessions carry the new defaults", res.SessionsUpdated)
	}
	if len(res.Errors) > 0 {
		msg += fmt.Sprintf("; %d devices could not be changed (see data.errors)", len(res.Errors))
	}
	return result{msg: msg, data: res}, nil
}

// retryActivation makes a device without deviceSecret try to activate
// again after its product's productSecret changed: activation-failed
// becomes awaiting-activation, and an enabled device's session restarts
// with the new productSecret. It returns 1 when the device will try.
func (a *admin) retryActivation(d secrets.Device) (int, error) {
	if d.State == secrets.StateActivationFailed {
		reg, _, _, _ := a.parts()
		stored, err := reg.UpdateDevice(d.ProductKey, d.DeviceName, func(x *secrets.Device) error {
			if !x.DeviceSecret.IsZero() {
				return errHasSecret
			}
			x.State, x.StateReason = secrets.StateAwaitingActivation, ""
			return nil
		})
		if errors.Is(err, errHasSecret) {
			return 0, nil
		}
		if err != nil {
			return 0, err
		}
		d = stored
	}
	if err := a.syncSession(d, true); err != nil && !errors.Is(err, uplink.ErrStopped) {
		return 0, fmt.Errorf("restart cloud session: %w", err)
	}
	return 1, nil
}
