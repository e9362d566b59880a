// Package adminapi is the wire contract of edgegw's admin topic, and its
// client: the topics, the method names, the reply codes, the JSON of
// requests, typed parameters and replies, and Client, which edgegw ctl, the
// benchmarks and the tests use to call a running gateway. The gateway
// package serves it (gateway/admin*.go); this package never imports gateway.
// docs/architecture.md §4.4 describes how a request travels.
//
// A request is published to RequestTopic as
// {"id":"…","method":"device.add","params":{…}}; the reply,
// {"id":"…","code":200,"message":"…","data":…}, comes on the request's MQTT 5
// Response Topic (with its Correlation Data) when it names one, otherwise on
// ResponseTopic, where the id is the only way to match it. No reply ever
// contains a secret.
package adminapi

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/edgegw/edgegw/localbroker"
)

// Admin topics. The local broker owns them (it lets only admin identities
// use them); they are repeated here so that clients need only this package.
const (
	// TopicPrefix is the namespace reserved for admin identities.
	TopicPrefix = localbroker.AdminTopicPrefix
	// RequestTopic is where requests are published.
	RequestTopic = localbroker.AdminRequestTopic
	// ResponseTopic is where replies go when a request names no MQTT 5
	// Response Topic.
	ResponseTopic = localbroker.AdminResponseTopic
)

// Methods of the admin API. The gateway serves every one of them.
const (
	MethodGatewayStatus = "gateway.status"
	MethodDeviceList    = "device.list"
	MethodDeviceGet     = "device.get"
	MethodDeviceAdd     = "device.add"
	MethodDeviceUpdate  = "device.update"
	MethodDeviceRemove  = "device.remove"
	MethodDeviceImport  = "device.import"
	// MethodDeviceActivate obtains a deviceSecret for a device without one
	// now: from the record kept of an earlier activation, else by
	// activating with the cloud (clearing activation-failed).
	MethodDeviceActivate = "device.activate"
	MethodProductAdd     = "product.add"
	MethodProductRemove  = "product.remove"
	MethodProductList    = "product.list"
	MethodProductGet     = "product.get"
	// MethodProductUpdate changes a product's productSecret, dialect or
	// defaultConnectParams.
	MethodProductUpdate = "product.update"
	MethodQueueStats    = "queue.stats"
	MethodQueuePurge    = "queue.purge"
	// MethodGatewayBackup writes a consistent copy of the registry (and
	// with spool=true the spool) into a new directory the gateway creates
	// at params.path; see BackupParams and Backup.
	MethodGatewayBackup = "gateway.backup"
)

// Methods returns every method name, sorted.
func Methods() []string {
	return []string{
		MethodDeviceActivate, MethodDeviceAdd, MethodDeviceGet, MethodDeviceImport, MethodDeviceList, MethodDeviceRemove,
		MethodDeviceUpdate, MethodGatewayBackup, MethodGatewayStatus, MethodProductAdd, MethodProductGet, MethodProductList, MethodProductRemove,
		MethodProductUpdate, MethodQueuePurge, MethodQueueStats,
	}
}

// Reply codes; they follow HTTP meaning.
const (
	CodeOK         = 200
	CodeBadRequest = 400
	CodeForbidden  = 403
	CodeNotFound   = 404
	CodeConflict   = 409
	CodeInternal   = 500
)

// Limits of the admin API.
const (
	// ListMax is the largest page device.list returns.
	ListMax = 1000
	// ImportMax is the most rows one device.import request may carry.
	ImportMax = 1000
	// DrainMax bounds device.remove's drain timeout.
	DrainMax = time.Hour
)

// Request is the JSON of a request published to RequestTopic. ID is echoed
// in the reply; over MQTT 3.1.1 it is the only way to match a reply on the
// shared response topic, so it should be unique.
type Request struct {
	ID     string `json:"id,omitempty"`
	Method string `json:"method"`
	Params any    `json:"params,omitempty"`
}

// Reply is the JSON of every admin reply. Code follows HTTP meaning (200,
// 400, 403, 404, 409, 500); Message names the outcome or the problem; Data
// is the method's result (present on success, and on some errors).
type Reply struct {
	ID      json.RawMessage `json:"id,omitempty"`
	Code    int             `json:"code"`
	Message string          `json:"message"`
	Data    json.RawMessage `json:"data,omitempty"`
}

// Err returns nil for a CodeOK reply, else the reply as an *Error.
func (r Reply) Err() error {
	if r.Code == CodeOK {
		return nil
	}
	return &Error{Code: r.Code, Message: r.Message, Data: r.Data}
}

// Error is a reply whose code is not CodeOK: the gateway refused the
// request. Its JSON is the reply without the id.
type Error struct {
	Code    int             `json:"code"`
	Message string          `json:"message"`
	Data    json.RawMessage `json:"data,omitempty"`
}

// Error returns "code message", e.g. "404 device a1B/c: not found".
func (e *Error) Error() string { return fmt.Sprintf("%d %s", e.Code, e.Message) }
