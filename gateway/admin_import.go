package gateway

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/edgegw/edgegw/gateway/adminapi"
	"github.com/edgegw/edgegw/internal/logsafe"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink"
)

// device.import: many devices in one request, each row applied on its own.

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
			return result{}, badRequest("params.dialect %q: want aliyun or enos", logsafe.Clip(dialectName))
		}
		dialect = d
	}
	reg, _, _, _ := a.parts()
	var res adminapi.ImportResult
	products := map[string]secrets.Product{}
	for i, raw := range rows {
		row, outcome, err := a.importRow(c, reg, raw, i, dialect, disabled, products, &res)
		switch outcome {
		case rowAdded:
			res.Added++
		case rowUpdated:
			res.Updated++
		case rowUnchanged:
			res.Unchanged++
		case rowFailed:
			res.Failed++
			re := adminapi.RowError{Line: row.Line, Code: adminapi.CodeInternal, Message: err.Error()}
			if row.ProductKey != "" || row.DeviceName != "" {
				re.Device = logsafe.Clip(row.ProductKey) + "/" + logsafe.Clip(row.DeviceName)
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
	products map[string]secrets.Product, res *adminapi.ImportResult) (adminapi.ImportRow, rowOutcome, error) {
	var row adminapi.ImportRow
	rp, err := newParams(raw)
	if err != nil {
		return row, rowFailed, badRequest("params.rows[%d]: want an object {line, productKey, deviceName, deviceSecret}", i)
	}
	rp.prefix = fmt.Sprintf("params.rows[%d].", i)
	row.Line = rp.integer("line", 0, 0, 1<<31-1)
	row.ProductKey = rp.str("productKey")
	row.DeviceName = rp.str("deviceName")
	row.DeviceSecret = rp.str("deviceSecret")
	if err := rp.finish(); err != nil {
		return row, rowFailed, err
	}
	if row.ProductKey == "" {
		return row, rowFailed, badRequest("ProductKey: empty")
	}
	if row.DeviceName == "" {
		return row, rowFailed, badRequest("DeviceName: empty")
	}
	id := secrets.DeviceID{ProductKey: row.ProductKey, DeviceName: row.DeviceName}
	prod, ok := products[row.ProductKey]
	if !ok {
		prod, err = reg.GetProduct(row.ProductKey)
		if errors.Is(err, secrets.ErrNotFound) {
			if err := secrets.ValidateProductKey(dialect, row.ProductKey); err != nil {
				return row, rowFailed, badRequest("%v", err)
			}
			prod = secrets.Product{ProductKey: row.ProductKey, Dialect: dialect}
			if _, err := reg.PutProduct(prod); err != nil {
				return row, rowFailed, err
			}
			res.ProductsAdded = append(res.ProductsAdded, row.ProductKey)
			a.audit(c, row.ProductKey, "product added", "dialect", dialect, "hasProductSecret", false)
		} else if err != nil {
			return row, rowFailed, err
		}
		products[row.ProductKey] = prod
	}
	if err := secrets.ValidateDeviceName(prod.Dialect, row.DeviceName); err != nil {
		return row, rowFailed, badRequest("%v", err)
	}
	if row.DeviceSecret != "" {
		if err := checkSecretShape("DeviceSecret", row.DeviceSecret); err != nil {
			return row, rowFailed, err
		}
	}
	if a.draining(id) != nil {
		return row, rowFailed, conflict("device %s: being removed (draining)", id)
	}
	old, err := reg.GetDevice(row.ProductKey, row.DeviceName)
	switch {
	case errors.Is(err, secrets.ErrNotFound):
		// As with device.add: a device imported again without its
		// deviceSecret gets the one kept from its earlier activation.
		var kept *secrets.ActivationRecord
		if row.DeviceSecret == "" {
			rec, found, err := keptActivation(reg, prod, id)
			if err != nil {
				return row, rowFailed, err
			}
			if found {
				kept = &rec
			}
		}
		if row.DeviceSecret == "" && kept == nil && prod.ProductSecret.IsZero() {
			return row, rowFailed, badRequest("DeviceSecret: empty, and product %s has no productSecret to obtain one by dynamic activation", prod.ProductKey)
		}
		d := secrets.Device{ProductKey: row.ProductKey, DeviceName: row.DeviceName, Disabled: disabled}
		if row.DeviceSecret != "" {
			d.DeviceSecret = secrets.NewSecret(row.DeviceSecret)
		}
		if kept != nil {
			d.DeviceSecret, d.ActivatedAt = kept.Secret, kept.Time
		}
		if err := reg.AddDevice(d); err != nil {
			if errors.Is(err, secrets.ErrExists) {
				return row, rowFailed, conflict("device %s: already exists", id)
			}
			return row, rowFailed, err
		}
		d.State = secrets.StateReady
		if d.DeviceSecret.IsZero() {
			d.State = secrets.StateAwaitingActivation
		}
		if err := a.syncSession(d, false); err != nil && !errors.Is(err, uplink.ErrStopped) {
			if derr := reg.DeleteDevice(id.ProductKey, id.DeviceName); derr != nil {
				a.log.Error("roll back imported device", "device", id.String(), "err", derr)
			}
			return row, rowFailed, fmt.Errorf("start cloud session (not added): %w", err)
		}
		if kept != nil {
			a.audit(c, id.String(), "added", "state", d.State, "disabled", disabled, "line", row.Line,
				"deviceSecretFrom", "kept activation record", "activationSource", kept.Source, "activationSeq", kept.Seq)
		} else {
			a.audit(c, id.String(), "added", "state", d.State, "disabled", disabled, "line", row.Line)
		}
		return row, rowAdded, nil
	case err != nil:
		return row, rowFailed, err
	}
	if row.DeviceSecret == "" || old.DeviceSecret.Equal(secrets.NewSecret(row.DeviceSecret)) {
		return row, rowUnchanged, nil
	}
	stored, err := reg.UpdateDevice(id.ProductKey, id.DeviceName, func(d *secrets.Device) error {
		d.DeviceSecret = secrets.NewSecret(row.DeviceSecret)
		d.State, d.StateReason = secrets.StateReady, ""
		return nil
	})
	if err != nil {
		return row, rowFailed, err
	}
	if err := a.syncSession(stored, true); err != nil && !errors.Is(err, uplink.ErrStopped) {
		if _, rerr := reg.UpdateDevice(id.ProductKey, id.DeviceName, func(d *secrets.Device) error {
			d.DeviceSecret, d.State, d.StateReason = old.DeviceSecret, old.State, old.StateReason
			return nil
		}); rerr != nil {
			a.log.Error("roll back imported device", "device", id.String(), "err", rerr)
		}
		return row, rowFailed, fmt.Errorf("restart cloud session (not updated): %w", err)
	}
	a.audit(c, id.String(), "deviceSecret rotated", "line", row.Line)
	return row, rowUpdated, nil
}
