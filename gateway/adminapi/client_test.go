package adminapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgegw/edgegw/gateway/adminapi"
	"github.com/edgegw/edgegw/localbroker"
)

// unixAdmin makes every unix socket client an admin, and nobody else.
type unixAdmin struct{}

func (unixAdmin) Authenticate(req localbroker.ConnectRequest) (localbroker.Identity, error) {
	if req.Transport == localbroker.TransportUnix {
		return localbroker.Identity{Admin: true, Name: "unix", Method: localbroker.MethodUnix}, nil
	}
	return localbroker.Identity{}, &localbroker.Refusal{Code: 5, Reason: "not on the unix socket"}
}

type noSink struct{}

func (noSink) Publish(_ context.Context, _ localbroker.Message, done func(error)) { done(nil) }

// echoAdmin answers each request with its method in the message, a code
// taken from the params, and the params as data; "silent" gets no reply.
type echoAdmin struct{ b *localbroker.Broker }

func (h *echoAdmin) HandleAdmin(_ localbroker.Identity, req localbroker.AdminRequest) {
	var r struct {
		ID     json.RawMessage `json:"id"`
		Method string          `json:"method"`
		Params json.RawMessage `json:"params"`
	}
	rep := adminapi.Reply{Code: adminapi.CodeBadRequest, Message: "request: invalid JSON"}
	if json.Unmarshal(req.Payload, &r) == nil {
		if r.Method == "silent" {
			return
		}
		var p struct{ Code int }
		_ = json.Unmarshal(r.Params, &p)
		rep = adminapi.Reply{ID: r.ID, Code: adminapi.CodeOK, Message: "did " + r.Method, Data: r.Params}
		if p.Code != 0 {
			rep.Code = p.Code
		}
	}
	b, _ := json.Marshal(rep)
	topic := req.ResponseTopic
	if topic == "" {
		topic = adminapi.ResponseTopic
	}
	_ = h.b.PublishAdmin(topic, b, req.CorrelationData)
}

func startBroker(t *testing.T) (sock string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "egwapi") // short: sun_path holds 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock = filepath.Join(dir, "admin.sock")
	h := &echoAdmin{}
	b, err := localbroker.New(localbroker.Config{Listeners: []string{"unix://" + sock}, Auth: unixAdmin{}, Sink: noSink{},
		Admin: h, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	h.b = b
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	select {
	case <-b.Ready():
	case err := <-done:
		t.Fatalf("broker: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("broker not ready")
	}
	return sock
}

func TestClient(t *testing.T) {
	sock := startBroker(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	c, err := adminapi.Dial(ctx, adminapi.Options{URL: "unix://" + sock, Name: "api-test"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// Call decodes the data of a 200.
	var got adminapi.ProductAddParams
	if err := c.Call(ctx, adminapi.MethodProductAdd, adminapi.ProductAddParams{ProductKey: "a1Prod"}, &got); err != nil || got.ProductKey != "a1Prod" {
		t.Fatalf("call: %v %+v", err, got)
	}
	// Other codes are an *Error with the code and message.
	err = c.Call(ctx, adminapi.MethodDeviceGet, map[string]any{"code": 404}, nil)
	var ae *adminapi.Error
	if !errors.As(err, &ae) || ae.Code != 404 || err.Error() != "404 did device.get" {
		t.Fatalf("404: %v", err)
	}
	// Do returns any reply; concurrent calls get their own replies.
	errs := make(chan error, 8)
	for i := range 8 {
		go func() {
			m := "m" + string(rune('a'+i))
			r, err := c.Do(ctx, m, nil)
			if err == nil && r.Message != "did "+m {
				err = errors.New("wrong reply " + r.Message)
			}
			errs <- err
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	// DoRaw: a reply without a string id goes to the raw caller.
	r, err := c.DoRaw(ctx, []byte(`not json`), "")
	if err != nil || r.Code != 400 {
		t.Fatalf("raw: %v %+v", err, r)
	}
	r, err = c.DoRaw(ctx, []byte(`{"id":7,"method":"x"}`), "")
	if err != nil || r.Code != 200 || string(r.ID) != "7" {
		t.Fatalf("raw numeric id: %v %+v", err, r)
	}
	// No reply: the context's deadline, with its cause, ends the wait.
	sctx, scancel := context.WithTimeoutCause(ctx, 200*time.Millisecond, errors.New("no reply within 200ms"))
	defer scancel()
	if _, err := c.Do(sctx, "silent", nil); err == nil || err.Error() != "silent: no reply within 200ms" {
		t.Fatalf("silent: %v", err)
	}
}

func TestDialRefused(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	url := "unix://" + filepath.Join(t.TempDir(), "none.sock")
	_, err := adminapi.Dial(ctx, adminapi.Options{URL: url})
	var ce *adminapi.ConnectError
	if !errors.As(err, &ce) || !strings.HasPrefix(err.Error(), "connect to "+url+": ") {
		t.Fatalf("dial: %v", err)
	}
}
