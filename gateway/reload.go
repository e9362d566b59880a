package gateway

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/edgegw/edgegw/gateway/config"
	"github.com/edgegw/edgegw/uplink"
)

// liveKeys are the configuration keys Reload applies to the running
// gateway; a change of any other key is reported as needing a restart.
// Rates, budgets and limits are fixed when the spool, the uplink manager
// and the broker start (they expose no setters).
var liveKeys = []string{
	"log_level",
	"broker.admin",
	"broker.tls_cert", "broker.tls_key", "broker.client_ca",
	"cloud.ca_file", "cloud.client_cert", "cloud.client_key",
}

// ErrNotRunning is returned by Reload before the gateway is ready.
var ErrNotRunning = errors.New("gateway: not running")

// Reload applies next to the running gateway, all or nothing: the log
// level (Options.Level), the admin users (their password files read
// again), and the TLS certificates, keys and CAs of the listeners and of
// the cloud (read again even when their paths did not change). Devices
// stay connected; new TLS handshakes and cloud connection attempts use the
// new material. applied names the live keys that changed; needsRestart
// names the keys that differ from the configuration the gateway started
// with and take effect only after a restart. On error (next is invalid, a
// file cannot be read) nothing changes and the error names the key.
func (g *Gateway) Reload(next *config.Config) (applied, needsRestart []string, err error) {
	if next == nil {
		return nil, nil, errors.New("gateway: reload: no configuration")
	}
	if err := next.Validate(); err != nil {
		return nil, nil, err
	}
	select {
	case <-g.ready: // the parts are set up (and g.admins, g.mgr written)
	default:
		return nil, nil, ErrNotRunning
	}
	g.reloadMu.Lock()
	defer g.reloadMu.Unlock()
	for _, k := range diffKeys(g.cfg, next) {
		if !slices.Contains(liveKeys, k) || !g.canApplyLive(k, next) {
			needsRestart = append(needsRestart, k)
		}
	}
	changed := diffKeys(g.live, next)
	live := func(keys ...string) bool {
		for _, k := range keys {
			if slices.Contains(changed, k) && !slices.Contains(needsRestart, k) {
				return true
			}
		}
		return false
	}

	// Read everything first; install only when all of it loaded.
	var (
		brokerMat, cloudMat     *certMaterial
		brokerStamp, cloudStamp [3]fileStamp
	)
	brokerPaths, cloudPaths := brokerCertPaths(&next.Broker), cloudCertPaths(&next.Cloud)
	if g.cfg.Broker.TLSCert != "" && !slices.Contains(needsRestart, "broker.tls_cert") {
		if brokerMat, brokerStamp, err = g.brokerCerts.prepare(brokerPaths); err != nil {
			return nil, nil, err
		}
	}
	if cloudMat, cloudStamp, err = g.cloudCerts.prepare(cloudPaths); err != nil {
		return nil, nil, err
	}
	var users []*adminUser
	adminStamps := passwordStamps(next.Broker.Admin)
	reloadAdmins := live("broker.admin") || !slices.Equal(adminStamps, g.adminStamps)
	if reloadAdmins {
		if users, err = loadAdminUsers(next.Broker.Admin, 0); err != nil {
			return nil, nil, fmt.Errorf("broker.admin: %w", err)
		}
	}
	ep := g.cloudEndpoint(&next.Cloud)
	if err := g.mgr.ReloadEndpointTLS(ep); err != nil {
		return nil, nil, fmt.Errorf("cloud.ca_file: %w", err)
	}

	// Install.
	g.cloudEP = ep
	note := func(key string, filesChanged bool) {
		if live(key) {
			applied = append(applied, key)
		} else if filesChanged {
			applied = append(applied, key+" (file changed)")
		}
	}
	if brokerMat != nil {
		filesChanged := brokerStamp != g.brokerCerts.stamps
		g.brokerCerts.install(brokerPaths, brokerMat, brokerStamp)
		note("broker.tls_cert", filesChanged && !live("broker.tls_cert", "broker.tls_key", "broker.client_ca"))
		note("broker.tls_key", false)
		note("broker.client_ca", false)
	}
	filesChanged := cloudStamp != g.cloudCerts.stamps
	g.cloudCerts.install(cloudPaths, cloudMat, cloudStamp)
	note("cloud.ca_file", filesChanged && !live("cloud.ca_file", "cloud.client_cert", "cloud.client_key"))
	note("cloud.client_cert", false)
	note("cloud.client_key", false)
	if reloadAdmins {
		g.admins.setUsers(users)
		g.adminStamps = adminStamps
		note("broker.admin", true)
	}
	if live("log_level") {
		g.opts.Level.Set(next.SlogLevel())
		applied = append(applied, "log_level")
	}
	g.live = next
	g.log.Info("configuration reloaded", "applied", strings.Join(applied, " "),
		"needs_restart", strings.Join(needsRestart, " "))
	if len(needsRestart) > 0 {
		g.log.Warn("changed configuration keys take effect only after a restart", "keys", strings.Join(needsRestart, " "))
	}
	return applied, needsRestart, nil
}

// canApplyLive reports whether the live key k can take next's value in the
// running gateway.
func (g *Gateway) canApplyLive(k string, next *config.Config) bool {
	switch k {
	case "log_level":
		return g.opts.Level != nil
	case "broker.tls_cert", "broker.tls_key", "broker.client_ca":
		// The TLS listeners exist only when a certificate was there at
		// start, and client-certificate verification is set up per
		// handshake from the CA.
		return g.cfg.Broker.TLSCert != "" && next.Broker.TLSCert != ""
	}
	return true
}

// diffKeys returns the dotted TOML keys whose values differ between a and b.
func diffKeys(a, b *config.Config) []string {
	var keys []string
	var walk func(prefix string, x, y reflect.Value)
	walk = func(prefix string, x, y reflect.Value) {
		t := x.Type()
		for i := range t.NumField() {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
			if name == "" || name == "-" {
				continue
			}
			key := prefix + name
			fx, fy := x.Field(i), y.Field(i)
			if f.Type.Kind() == reflect.Struct && f.Type.PkgPath() == reflect.TypeFor[config.Config]().PkgPath() {
				walk(key+".", fx, fy)
				continue
			}
			if !reflect.DeepEqual(fx.Interface(), fy.Interface()) {
				keys = append(keys, key)
			}
		}
	}
	walk("", reflect.ValueOf(a).Elem(), reflect.ValueOf(b).Elem())
	return keys
}

func brokerCertPaths(b *config.BrokerConfig) certPaths {
	return certPaths{cert: b.TLSCert, key: b.TLSKey, ca: b.ClientCA}
}

func cloudCertPaths(c *config.CloudConfig) certPaths {
	return certPaths{cert: c.ClientCert, key: c.ClientKey, ca: c.CAFile}
}

func passwordStamps(admins []config.AdminUser) []fileStamp {
	var s []fileStamp
	for _, a := range admins {
		s = append(s, stampOf(a.PasswordFile))
	}
	return s
}

// cloudEndpoint is the uplink endpoint for c: its trust roots, and the
// gateway-wide client certificate (cloud.client_cert), which every
// handshake takes from the current material so that a renewal needs no
// restart.
func (g *Gateway) cloudEndpoint(c *config.CloudConfig) uplink.Endpoint {
	return uplink.Endpoint{URL: c.EffectiveEndpoint(), CAFile: c.CAFile,
		TLS: &tls.Config{MinVersion: tls.VersionTLS12, GetClientCertificate: g.cloudClientCert}}
}

func (g *Gateway) cloudClientCert(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	if m := g.cloudCerts.current(); m != nil && m.cert != nil {
		return m.cert, nil
	}
	return &tls.Certificate{}, nil // none: the handshake goes on without one
}

// watchCerts reloads the TLS files of the listeners and of the cloud when
// they change on disk (a renewal by certbot, an enrolment agent, an
// operator), until ctx ends. A file that does not load is logged once per
// change and the previous certificate stays in use.
func (g *Gateway) watchCerts(ctx context.Context) error {
	tick := time.NewTicker(cmp.Or(g.opts.CertCheckInterval, defaultCertCheckInterval))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			g.checkCertFiles()
		}
	}
}

func (g *Gateway) checkCertFiles() {
	g.reloadMu.Lock()
	defer g.reloadMu.Unlock()
	if g.brokerCerts.current() != nil {
		changed, err := g.brokerCerts.refresh()
		switch {
		case err != nil:
			g.log.Error("listener TLS files changed but do not load; keeping the current certificate", "err", err)
		case changed:
			g.log.Info("listener TLS certificate reloaded", "cert", g.brokerCerts.files().cert)
		}
	}
	changed, err := g.cloudCerts.refresh()
	if err == nil && changed {
		err = g.mgr.ReloadEndpointTLS(g.cloudEP)
	}
	switch {
	case err != nil:
		g.log.Error("cloud TLS files changed but do not load; keeping the current ones", "err", err)
	case changed:
		g.log.Info("cloud TLS certificate and CA reloaded", "cert", g.cloudCerts.files().cert, "ca", g.cloudCerts.files().ca)
	}
}
