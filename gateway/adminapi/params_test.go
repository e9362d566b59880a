package adminapi_test

import (
	"encoding/json"
	"reflect"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/edgegw/edgegw/gateway/adminapi"
	"github.com/edgegw/edgegw/secrets"
)

// TestParamsWire: each params type encodes to the object the gateway reads
// (the one clients built by hand before there were types): optional fields
// left out, null only to clear.
func TestParamsWire(t *testing.T) {
	id := secrets.DeviceID{ProductKey: "a1Prod", DeviceName: "pump-1"}
	yes, no := true, false
	for _, tc := range []struct {
		name   string
		params any
		want   string
	}{
		{"list default", adminapi.DeviceListParams{Limit: 100}, `{"limit":100}`},
		{"list all", adminapi.DeviceListParams{ProductKey: "a1Prod", State: "ready", After: "a1Prod/x", Limit: 5},
			`{"productKey":"a1Prod","state":"ready","after":"a1Prod/x","limit":5}`},
		{"get", adminapi.DeviceGetParams{DeviceID: id}, `{"productKey":"a1Prod","deviceName":"pump-1"}`},
		{"add bare", adminapi.DeviceAddParams{DeviceID: id}, `{"productKey":"a1Prod","deviceName":"pump-1"}`},
		{"add all", adminapi.DeviceAddParams{DeviceID: id, DeviceSecret: "s", LocalPassword: "p", ClientID: "c", Disabled: true},
			`{"productKey":"a1Prod","deviceName":"pump-1","deviceSecret":"s","localPassword":"p","clientId":"c","disabled":true}`},
		{"update secret", adminapi.DeviceUpdateParams{DeviceID: id, DeviceSecret: "s"},
			`{"productKey":"a1Prod","deviceName":"pump-1","deviceSecret":"s"}`},
		{"update set", adminapi.DeviceUpdateParams{DeviceID: id, LocalPassword: adminapi.Optional{Value: "p"},
			ClientID: adminapi.Optional{Value: "c"}, Disabled: &no},
			`{"productKey":"a1Prod","deviceName":"pump-1","localPassword":"p","clientId":"c","disabled":false}`},
		{"update clear", adminapi.DeviceUpdateParams{DeviceID: id, LocalPassword: adminapi.Optional{Clear: true},
			ClientID: adminapi.Optional{Clear: true, Value: "ignored"}, Disabled: &yes},
			`{"productKey":"a1Prod","deviceName":"pump-1","localPassword":null,"clientId":null,"disabled":true}`},
		{"remove discard", adminapi.DeviceRemoveParams{DeviceID: id, Spool: adminapi.SpoolDiscard},
			`{"productKey":"a1Prod","deviceName":"pump-1","spool":"discard"}`},
		{"remove drain", adminapi.DeviceRemoveParams{DeviceID: id, Spool: adminapi.SpoolDrain, Timeout: new(90 * time.Second)},
			`{"productKey":"a1Prod","deviceName":"pump-1","spool":"drain","timeout":"1m30s"}`},
		{"import", adminapi.DeviceImportParams{Rows: []adminapi.ImportRow{{Line: 2, ProductKey: "a1Prod", DeviceName: "d", DeviceSecret: "s"},
			{ProductKey: "a1Prod", DeviceName: "e"}}, Dialect: "enos", Disabled: true},
			`{"rows":[{"line":2,"productKey":"a1Prod","deviceName":"d","deviceSecret":"s"},{"productKey":"a1Prod","deviceName":"e"}],"dialect":"enos","disabled":true}`},
		{"product add", adminapi.ProductAddParams{ProductKey: "a1Prod"}, `{"productKey":"a1Prod"}`},
		{"product add all", adminapi.ProductAddParams{ProductKey: "a1Prod", Dialect: "aliyun", ProductSecret: "ps"},
			`{"productKey":"a1Prod","dialect":"aliyun","productSecret":"ps"}`},
		{"product remove", adminapi.ProductRemoveParams{ProductKey: "a1Prod"}, `{"productKey":"a1Prod"}`},
		{"queue totals", adminapi.QueueStatsParams{}, `{}`},
		{"queue device", adminapi.QueueStatsParams{Device: &id}, `{"productKey":"a1Prod","deviceName":"pump-1"}`},
		{"purge", adminapi.QueuePurgeParams{DeviceID: id}, `{"productKey":"a1Prod","deviceName":"pump-1"}`},
	} {
		got, err := json.Marshal(tc.params)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if string(got) != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", tc.name, got, tc.want)
		}
	}
}

// TestRequestWire: a request without params has no params member.
func TestRequestWire(t *testing.T) {
	got, _ := json.Marshal(adminapi.Request{ID: "1", Method: adminapi.MethodGatewayStatus})
	if string(got) != `{"id":"1","method":"gateway.status"}` {
		t.Fatalf("request: %s", got)
	}
}

// TestReplyErr: a reply other than 200 is an *Error that prints as
// "code message" and encodes as the reply without its id.
func TestReplyErr(t *testing.T) {
	if err := (adminapi.Reply{Code: adminapi.CodeOK}).Err(); err != nil {
		t.Fatalf("200: %v", err)
	}
	err := adminapi.Reply{ID: json.RawMessage(`"x"`), Code: 404, Message: "device a/b: not found", Data: json.RawMessage(`{"n":1}`)}.Err()
	e, ok := err.(*adminapi.Error)
	if !ok || err.Error() != "404 device a/b: not found" {
		t.Fatalf("404: %T %v", err, err)
	}
	b, _ := json.Marshal(e)
	var got, want map[string]any
	_ = json.Unmarshal(b, &got)
	_ = json.Unmarshal([]byte(`{"code":404,"message":"device a/b: not found","data":{"n":1}}`), &want)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("error JSON: %s", b)
	}
}

// TestParamsWireActivation: the params of device.activate, product.get and
// product.update, and the new options of device.add and product.add.
func TestParamsWireActivation(t *testing.T) {
	id := secrets.DeviceID{ProductKey: "a1Prod", DeviceName: "pump-1"}
	for _, tc := range []struct {
		name   string
		params any
		want   string
	}{
		{"activate", adminapi.DeviceActivateParams{DeviceID: id}, `{"productKey":"a1Prod","deviceName":"pump-1"}`},
		{"activate fresh", adminapi.DeviceActivateParams{DeviceID: id, Fresh: true}, `{"productKey":"a1Prod","deviceName":"pump-1","fresh":true}`},
		{"add fresh", adminapi.DeviceAddParams{DeviceID: id, Fresh: true}, `{"productKey":"a1Prod","deviceName":"pump-1","fresh":true}`},
		{"product add params", adminapi.ProductAddParams{ProductKey: "a1Prod", DefaultConnectParams: "_ss=1,ext=3"},
			`{"productKey":"a1Prod","defaultConnectParams":"_ss=1,ext=3"}`},
		{"product get", adminapi.ProductGetParams{ProductKey: "a1Prod"}, `{"productKey":"a1Prod"}`},
		{"product update secret", adminapi.ProductUpdateParams{ProductKey: "a1Prod", ProductSecret: "ps"},
			`{"productKey":"a1Prod","productSecret":"ps"}`},
		{"product update all", adminapi.ProductUpdateParams{ProductKey: "a1Prod", Dialect: "enos", DefaultConnectParams: adminapi.Optional{Value: "ext=1"}},
			`{"productKey":"a1Prod","dialect":"enos","defaultConnectParams":"ext=1"}`},
		{"product update clear", adminapi.ProductUpdateParams{ProductKey: "a1Prod", DefaultConnectParams: adminapi.Optional{Clear: true}},
			`{"productKey":"a1Prod","defaultConnectParams":null}`},
	} {
		got, err := json.Marshal(tc.params)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if string(got) != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", tc.name, got, tc.want)
		}
	}
	if got := adminapi.Methods(); !sort.StringsAreSorted(got) || !slices.Contains(got, adminapi.MethodDeviceActivate) ||
		!slices.Contains(got, adminapi.MethodProductUpdate) || !slices.Contains(got, adminapi.MethodProductGet) {
		t.Errorf("Methods() = %v", got)
	}
}
