package adminapi

import (
	"encoding/json"
	"time"

	"github.com/edgegw/edgegw/secrets"
)

// The params of each method. Their JSON is what the gateway reads: an
// optional field left at its zero value is not sent, which the gateway
// takes as "not given". gateway.status and product.list take no params
// (pass nil). Fields named for secrets carry them in plain text, as the
// wire does: never log these structs.

// DeviceListParams are the params of device.list.
type DeviceListParams struct {
	// ProductKey keeps only this product's devices.
	ProductKey string `json:"productKey,omitempty"`
	// State keeps only devices in this registry state (ready,
	// awaiting-activation, activation-failed), cloud session state
	// (connected, backoff, …, or none), or "disabled" / "enabled".
	State string `json:"state,omitempty"`
	// After starts the page after this "productKey/deviceName" (the
	// previous page's DeviceList.Next).
	After string `json:"after,omitempty"`
	// Limit is the page size, 1 to ListMax (0: the gateway's default, 100).
	Limit int `json:"limit,omitempty"`
}

// DeviceGetParams are the params of device.get.
type DeviceGetParams struct {
	secrets.DeviceID
}

// DeviceAddParams are the params of device.add.
type DeviceAddParams struct {
	secrets.DeviceID
	// DeviceSecret is the device's secret; empty when the device is to
	// obtain one by dynamic activation with its product's productSecret.
	DeviceSecret string `json:"deviceSecret,omitempty"`
	// LocalPassword, when set, lets the device log in to the local broker
	// with it.
	LocalPassword string `json:"localPassword,omitempty"`
	// ClientID is the bare MQTT clientId towards the cloud (empty: the
	// configured template).
	ClientID string `json:"clientId,omitempty"`
	// Disabled adds the device without a cloud session or local logins.
	Disabled bool `json:"disabled,omitempty"`
	// Fresh, for a device added without DeviceSecret, activates it with
	// the cloud even though a deviceSecret kept from an earlier activation
	// of the same productKey/deviceName exists (by default that one is
	// used: the clouds activate a device only once). For a device that was
	// reset in the cloud console.
	Fresh bool `json:"fresh,omitempty"`
}

// DeviceActivateParams are the params of device.activate: the device must
// have no deviceSecret (awaiting-activation or activation-failed), be
// enabled, and its product must have a productSecret unless a kept
// activation record is used.
type DeviceActivateParams struct {
	secrets.DeviceID
	// Fresh activates with the cloud even when a deviceSecret kept from an
	// earlier activation exists (see DeviceAddParams.Fresh).
	Fresh bool `json:"fresh,omitempty"`
}

// DeviceUpdateParams are the params of device.update; at least one change
// must be given.
type DeviceUpdateParams struct {
	secrets.DeviceID
	// DeviceSecret, when set, rotates the secret (the session reconnects
	// with it). It cannot be cleared.
	DeviceSecret string `json:"deviceSecret,omitempty"`
	// LocalPassword sets or (Clear) removes the local password.
	LocalPassword Optional `json:"localPassword,omitzero"`
	// ClientID sets the cloud clientId, or (Clear) goes back to the
	// configured template.
	ClientID Optional `json:"clientId,omitzero"`
	// Disabled, when not nil, disables or enables the device.
	Disabled *bool `json:"disabled,omitempty"`
}

// Optional is a string parameter of device.update that can be left alone
// (the zero value), set to Value, or cleared (Clear, sent as JSON null;
// Clear wins over Value).
type Optional struct {
	Value string
	Clear bool
}

// IsZero reports whether o leaves the parameter alone (it is then not
// sent).
func (o Optional) IsZero() bool { return o.Value == "" && !o.Clear }

// MarshalJSON encodes o as its value, or as null when it clears.
func (o Optional) MarshalJSON() ([]byte, error) {
	if o.Clear {
		return []byte("null"), nil
	}
	return json.Marshal(o.Value)
}

// What device.remove does with the device's queued messages.
const (
	SpoolDiscard = "discard" // drop them and remove the device at once
	SpoolDrain   = "drain"   // deliver them first, then remove the device
)

// DeviceRemoveParams are the params of device.remove.
type DeviceRemoveParams struct {
	secrets.DeviceID
	// Spool is required: SpoolDiscard or SpoolDrain.
	Spool string
	// Timeout, when not nil, bounds a SpoolDrain's wait: 1s to DrainMax
	// (nil: the gateway's default, a minute). The reply comes when the
	// queue is empty or the timeout has passed. It is sent as a Go duration
	// string ("1m30s").
	Timeout *time.Duration
}

// MarshalJSON encodes p with Timeout as a duration string.
func (p DeviceRemoveParams) MarshalJSON() ([]byte, error) {
	w := struct {
		secrets.DeviceID
		Spool   string `json:"spool,omitempty"`
		Timeout string `json:"timeout,omitempty"`
	}{DeviceID: p.DeviceID, Spool: p.Spool}
	if p.Timeout != nil {
		w.Timeout = p.Timeout.String()
	}
	return json.Marshal(w)
}

// DeviceImportParams are the params of device.import.
type DeviceImportParams struct {
	// Rows are the devices, 1 to ImportMax. Each row succeeds or fails on
	// its own.
	Rows []ImportRow `json:"rows"`
	// Dialect is the dialect of products the rows introduce (aliyun or
	// enos; empty: the gateway's).
	Dialect string `json:"dialect,omitempty"`
	// Disabled adds new devices disabled (staged).
	Disabled bool `json:"disabled,omitempty"`
}

// ImportRow is one device of a device.import request. It carries a
// deviceSecret: never log it.
type ImportRow struct {
	Line         int    `json:"line,omitempty"`
	ProductKey   string `json:"productKey"`
	DeviceName   string `json:"deviceName"`
	DeviceSecret string `json:"deviceSecret,omitempty"`
}

// ProductAddParams are the params of product.add.
type ProductAddParams struct {
	ProductKey string `json:"productKey"`
	// Dialect is aliyun or enos (empty: the gateway's).
	Dialect string `json:"dialect,omitempty"`
	// ProductSecret, when set, lets the product's devices obtain their
	// deviceSecret by dynamic activation.
	ProductSecret string `json:"productSecret,omitempty"`
	// DefaultConnectParams are the Alibaba clientId extension parameters
	// the cloud sessions of the product's devices carry until a device
	// logs in with its own, as "key=value,key=value" (keys _ss, ext, _v,
	// lan, gw), e.g. "_ss=1,ext=3". Alibaba products only.
	DefaultConnectParams string `json:"defaultConnectParams,omitempty"`
}

// ProductGetParams are the params of product.get.
type ProductGetParams struct {
	ProductKey string `json:"productKey"`
}

// ProductUpdateParams are the params of product.update; at least one
// change must be given.
type ProductUpdateParams struct {
	ProductKey string `json:"productKey"`
	// ProductSecret, when set, replaces the productSecret (it cannot be
	// removed). Devices of the product without a deviceSecret try to
	// activate again with it at once, activation-failed ones included.
	ProductSecret string `json:"productSecret,omitempty"`
	// Dialect, when set, changes the product's dialect; refused (409) while
	// the product has devices.
	Dialect string `json:"dialect,omitempty"`
	// DefaultConnectParams sets ("_ss=1,ext=3") or (Clear) removes the
	// product's default connect parameters. The sessions of its devices
	// that carry the default (no params of their own yet) take them on.
	DefaultConnectParams Optional `json:"defaultConnectParams,omitzero"`
}

// ProductRemoveParams are the params of product.remove; the product must
// have no devices.
type ProductRemoveParams struct {
	ProductKey string `json:"productKey"`
}

// QueueStatsParams are the params of queue.stats: one device's queue, or
// the spool's totals when Device is nil.
type QueueStatsParams struct {
	Device *secrets.DeviceID
}

// MarshalJSON encodes p as the device's productKey and deviceName, or as
// an empty object for the totals.
func (p QueueStatsParams) MarshalJSON() ([]byte, error) {
	if p.Device == nil {
		return []byte("{}"), nil
	}
	return json.Marshal(*p.Device)
}

// QueuePurgeParams are the params of queue.purge.
type QueuePurgeParams struct {
	secrets.DeviceID
}
