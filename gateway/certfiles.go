package gateway

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// defaultCertCheckInterval is how often the certificate files are checked
// for a change (Options.CertCheckInterval).
const defaultCertCheckInterval = 5 * time.Second

// certPaths names a certificate, its key and a CA bundle (PEM files; any
// may be empty).
type certPaths struct{ cert, key, ca string }

// certMaterial is what certPaths held when they were last loaded.
type certMaterial struct {
	cert *tls.Certificate // nil without a certificate
	pool *x509.CertPool   // nil without a CA file
}

// fileStamp identifies one version of a file cheaply: a renewal that
// writes a new file (in place or by rename) changes its mtime or size.
type fileStamp struct {
	mod  time.Time
	size int64
	err  bool
}

func stampOf(path string) fileStamp {
	if path == "" {
		return fileStamp{}
	}
	st, err := os.Stat(path)
	if err != nil {
		return fileStamp{err: true}
	}
	return fileStamp{mod: st.ModTime(), size: st.Size()}
}

// certFiles holds loaded certificates and CAs that the TLS handshakes read
// (through current) while a reload or a file change swaps them; a failed
// load keeps the previous material.
type certFiles struct {
	name string // config section, for errors: "broker" or "cloud"
	keys certPaths

	cur atomic.Pointer[certMaterial]

	mu     sync.Mutex // serialises loads
	paths  certPaths
	stamps [3]fileStamp
}

// current returns the material last loaded successfully (never nil after
// a successful load).
func (f *certFiles) current() *certMaterial { return f.cur.Load() }

// prepare reads p into new material without installing it; the error
// names the key (as "section.key") of the file that failed.
func (f *certFiles) prepare(p certPaths) (*certMaterial, [3]fileStamp, error) {
	stamps := [3]fileStamp{stampOf(p.cert), stampOf(p.key), stampOf(p.ca)}
	m := &certMaterial{}
	if p.cert != "" {
		c, err := tls.LoadX509KeyPair(p.cert, p.key)
		if err != nil {
			return nil, stamps, fmt.Errorf("%s.%s: %w", f.name, f.keys.cert, err)
		}
		m.cert = &c
	}
	if p.ca != "" {
		pool, err := loadCertPool(p.ca)
		if err != nil {
			return nil, stamps, fmt.Errorf("%s.%s: %w", f.name, f.keys.ca, err)
		}
		m.pool = pool
	}
	return m, stamps, nil
}

// install makes m (prepared from p) the current material.
func (f *certFiles) install(p certPaths, m *certMaterial, stamps [3]fileStamp) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.paths, f.stamps = p, stamps
	f.cur.Store(m)
}

// load prepares and installs p.
func (f *certFiles) load(p certPaths) error {
	m, st, err := f.prepare(p)
	if err != nil {
		return err
	}
	f.install(p, m, st)
	return nil
}

// refresh reloads the files when one of them changed since the last load
// (or the last failed attempt, so a broken file is reported once per
// change). changed reports a successful reload.
func (f *certFiles) refresh() (changed bool, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := f.paths
	now := [3]fileStamp{stampOf(p.cert), stampOf(p.key), stampOf(p.ca)}
	if now == f.stamps {
		return false, nil
	}
	m, st, err := f.prepare(p)
	f.stamps = st
	if err != nil {
		return false, err
	}
	f.cur.Store(m)
	return true, nil
}

// files returns the paths in use.
func (f *certFiles) files() certPaths {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.paths
}
