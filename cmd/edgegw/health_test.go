package main

import (
	"bytes"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/edgegw/edgegw/gateway"
	"github.com/edgegw/edgegw/gateway/config"
	"github.com/edgegw/edgegw/internal/testutil/gwtest"
)

func healthCmd(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(append([]string{"health"}, args...), strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

// startGateway runs a gateway without devices, its metrics server on a
// loopback port, until the test ends; it returns the server's address.
func startGateway(t *testing.T) string {
	t.Helper()
	cfg := config.Default()
	cfg.StateDir = t.TempDir()
	cfg.Broker.Listeners = []string{"tcp://127.0.0.1:0"}
	cfg.Metrics.Listen = "127.0.0.1:0"
	cfg.Shutdown.Timeout = config.Duration(15 * time.Second) // roomy: under -race on a loaded CI box a part can take seconds to stop
	return gwtest.Start(t, cfg, gateway.Options{}).Gateway.MetricsAddr().String()
}

func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestHealthCommand(t *testing.T) {
	gw := startGateway(t)
	unhealthy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
		w.Write([]byte("unhealthy: spool writer did not answer a sync within 2s\nsecond line\n"))
	}))
	defer unhealthy.Close()
	stall := make(chan struct{})
	hanging := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { <-stall }))
	defer hanging.Close()
	defer close(stall)
	redirect := httptest.NewServer(http.RedirectHandler("http://"+gw+"/healthz", http.StatusFound))
	defer redirect.Close()

	tests := []struct {
		name       string
		args       []string
		code       int
		out, errIn string
	}{
		{"gateway healthz", []string{"-url", "http://" + gw + "/healthz"}, 0, "/healthz: ok\n", ""},
		{"gateway readyz", []string{"-url", "http://" + gw + "/readyz", "-timeout", "5s"}, 0, "/readyz: ready\n", ""},
		{"closed port", []string{"-url", "http://" + closedPort(t) + "/healthz"}, 1, "", "connection refused"},
		{"503 with its reason", []string{"-url", unhealthy.URL + "/healthz"}, 1, "", "503 Service Unavailable: unhealthy: spool writer did not answer a sync within 2s\n"},
		{"no answer in time", []string{"-url", hanging.URL, "-timeout", "200ms"}, 1, "", "no answer within 200ms"},
		{"redirect not followed", []string{"-url", redirect.URL}, 1, "", "302 Found"},
		{"not an http URL", []string{"-url", "127.0.0.1:9464/healthz"}, 1, "", "want http://host:port/path"},
		{"bad timeout", []string{"-url", "http://" + gw + "/healthz", "-timeout", "0s"}, 1, "", "want a positive duration"},
		{"unknown flag exits 1, not 2", []string{"-port", "9464"}, 1, "", "flag provided but not defined"},
		{"help", []string{"-h"}, 0, "", "-timeout duration"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			code, out, errOut := healthCmd(t, tt.args...)
			if code != tt.code {
				t.Errorf("exit %d, want %d (stdout %q, stderr %q)", code, tt.code, out, errOut)
			}
			if tt.out != "" && !strings.HasSuffix(out, tt.out) {
				t.Errorf("stdout %q, want it to end in %q", out, tt.out)
			}
			if tt.errIn != "" && !strings.Contains(errOut, tt.errIn) {
				t.Errorf("stderr %q, want it to contain %q", errOut, tt.errIn)
			}
			if tt.code == 0 && tt.name != "help" && strings.Count(out, "\n") != 1 {
				t.Errorf("stdout %q is not one line", out)
			}
			// The flag package prints its usage; every other failure is one line.
			if tt.code == 1 && !strings.Contains(tt.name, "flag") && strings.Count(errOut, "\n") != 1 {
				t.Errorf("stderr %q is not one line", errOut)
			}
			if d := time.Since(start); d > 3*time.Second {
				t.Errorf("took %v", d)
			}
		})
	}
}
