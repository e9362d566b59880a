package gateway

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/edgegw/edgegw/gateway/adminapi"
	"github.com/edgegw/edgegw/internal/atomicfile"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink/spool"
)

// A backup is a directory holding registry.db, optionally spool.db, and
// manifest.json (adminapi.Backup: time, version, sizes and counts; no
// secret). The files are bbolt copies made in one read transaction each
// (Tx.WriteTo), so they are consistent and the gateway keeps serving while
// they are written. The registry's secrets stay encrypted as on disk; the
// key is NOT in the backup and must be kept separately.
const (
	BackupRegistryFile = "registry.db"
	BackupSpoolFile    = "spool.db"
	BackupManifestFile = "manifest.json"
	backupFormat       = 1
)

// ErrBackupPath: a backup directory that must not be used (relative, in
// a missing directory, already there, inside the state directory).
var ErrBackupPath = errors.New("unusable backup path")

// CheckBackupPath checks a backup directory the gateway is asked to
// create: an absolute, clean path that does not exist yet, whose parent is
// an existing directory, and that is not inside stateDir (a backup there
// would be lost with what it backs up, and must not overwrite live files).
func CheckBackupPath(dir, stateDir string) error {
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("%w: %q is not absolute", ErrBackupPath, dir)
	}
	if filepath.Clean(dir) != dir || dir == "/" {
		return fmt.Errorf("%w: %q is not a clean directory path", ErrBackupPath, dir)
	}
	if _, err := os.Lstat(dir); err == nil {
		return fmt.Errorf("%w: %s already exists (a backup goes into a new directory)", ErrBackupPath, dir)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: %w", ErrBackupPath, err)
	}
	parent, err := filepath.EvalSymlinks(filepath.Dir(dir))
	if err != nil {
		return fmt.Errorf("%w: directory %s: %w", ErrBackupPath, filepath.Dir(dir), err)
	}
	if fi, err := os.Stat(parent); err != nil || !fi.IsDir() {
		return fmt.Errorf("%w: %s is not a directory", ErrBackupPath, filepath.Dir(dir))
	}
	state, err := filepath.Abs(stateDir)
	if err == nil {
		if s, err := filepath.EvalSymlinks(state); err == nil {
			state = s
		}
	}
	if err == nil && (parent == state || strings.HasPrefix(parent, state+string(filepath.Separator))) {
		return fmt.Errorf("%w: %s is inside the state directory %s", ErrBackupPath, dir, stateDir)
	}
	return nil
}

// backupSources copy the files: each writes a consistent copy to w.
type backupSources struct {
	registry func(w io.Writer) (secrets.Snapshot, error)
	spool    func(w io.Writer) (spool.Snapshot, error) // nil: no spool in the backup
}

// writeBackup creates dir (which must not exist) complete or not at all:
// the files are written and fsynced in a temporary directory next to it,
// which is renamed to dir.
func writeBackup(dir, version string, now time.Time, src backupSources) (m adminapi.Backup, err error) {
	tmp, err := os.MkdirTemp(filepath.Dir(dir), "."+filepath.Base(dir)+".*.tmp")
	if err != nil {
		return m, fmt.Errorf("backup: %w", err)
	}
	defer func() {
		if err != nil {
			_ = os.RemoveAll(tmp)
		}
	}()
	m = adminapi.Backup{Format: backupFormat, Created: now.UTC().Format(time.RFC3339), Version: version, Key: adminapi.BackupKeyNote}
	err = writeNew(filepath.Join(tmp, BackupRegistryFile), func(f *os.File) error {
		s, err := src.registry(f)
		m.Registry = adminapi.BackupFile{File: BackupRegistryFile, Bytes: s.Bytes, Products: s.Products, Devices: s.Devices}
		return err
	})
	if err != nil {
		return m, err
	}
	if src.spool != nil {
		err = writeNew(filepath.Join(tmp, BackupSpoolFile), func(f *os.File) error {
			s, err := src.spool(f)
			m.Spool = &adminapi.BackupFile{File: BackupSpoolFile, Bytes: s.Bytes, Messages: s.Messages}
			return err
		})
		if err != nil {
			return m, err
		}
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return m, err
	}
	if err := writeNew(filepath.Join(tmp, BackupManifestFile), func(f *os.File) error {
		_, err := f.Write(append(b, '\n'))
		return err
	}); err != nil {
		return m, err
	}
	if err := atomicfile.SyncDir(tmp); err != nil {
		return m, fmt.Errorf("backup: %w", err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return m, fmt.Errorf("backup: %w", err)
	}
	if err := atomicfile.SyncDir(filepath.Dir(dir)); err != nil {
		return m, fmt.Errorf("backup: %w", err)
	}
	m.Path = dir
	return m, nil
}

// writeNew creates path (mode 0600), fills it with write and fsyncs it.
func writeNew(path string, write func(*os.File) error) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if err := write(f); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}

// BackupFiles backs up a stopped gateway's files into the new directory
// dir: registryPath, and spoolPath unless it is "". The files are opened
// read-only; if the gateway holds them, the error wraps secrets.ErrLocked
// or spool.ErrLocked (back up through the admin API instead).
func BackupFiles(dir, registryPath, spoolPath, version string) (adminapi.Backup, error) {
	src := backupSources{registry: func(w io.Writer) (secrets.Snapshot, error) { return secrets.BackupFile(registryPath, w, 0) }}
	if spoolPath != "" {
		src.spool = func(w io.Writer) (spool.Snapshot, error) { return spool.BackupFile(spoolPath, w, 0) }
	}
	return writeBackup(dir, version, time.Now(), src)
}

// ReadBackupManifest reads dir's manifest.json.
func ReadBackupManifest(dir string) (adminapi.Backup, error) {
	var m adminapi.Backup
	b, err := os.ReadFile(filepath.Join(dir, BackupManifestFile))
	if err != nil {
		return m, fmt.Errorf("%s is not an edgegw backup: %w", dir, err)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("%s: %w", filepath.Join(dir, BackupManifestFile), err)
	}
	if m.Format != backupFormat {
		return m, fmt.Errorf("%s: backup format %d, this edgegw reads %d", filepath.Join(dir, BackupManifestFile), m.Format, backupFormat)
	}
	return m, nil
}

// Restore copies the backup in from into the state directory stateDir
// (created if missing) as registry.db and, when the backup has one, the
// spool at spoolPath ("" means <stateDir>/spool.db). It refuses a state
// directory holding anything but the key file, so it never overwrites a
// gateway's data. When key is not nil it must open the restored registry
// (else the error wraps secrets.ErrWrongKey and nothing is left behind).
// The gateway must be stopped; starting it afterwards with the same key
// serves the backed-up devices and delivers the queued messages.
func Restore(from, stateDir, spoolPath string, key []byte) (adminapi.Backup, error) {
	m, err := ReadBackupManifest(from)
	if err != nil {
		return m, err
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return m, fmt.Errorf("restore: %w", err)
	}
	ents, err := os.ReadDir(stateDir)
	if err != nil {
		return m, fmt.Errorf("restore: %w", err)
	}
	for _, e := range ents {
		if e.Name() != secrets.KeyFileName {
			return m, fmt.Errorf("restore: state directory %s is not empty (holds %s); restore into a fresh one", stateDir, e.Name())
		}
	}
	if spoolPath == "" {
		spoolPath = filepath.Join(stateDir, BackupSpoolFile)
	}
	if m.Spool != nil {
		if _, err := os.Lstat(spoolPath); !errors.Is(err, fs.ErrNotExist) {
			return m, fmt.Errorf("restore: spool %s already exists; remove it or pick another", spoolPath)
		}
	}
	regPath := filepath.Join(stateDir, BackupRegistryFile)
	if err := copyFile(filepath.Join(from, BackupRegistryFile), regPath); err != nil {
		return m, err
	}
	if key != nil {
		reg, err := secrets.OpenRegistry(regPath, key, nil)
		if err != nil {
			_ = os.Remove(regPath)
			return m, fmt.Errorf("restore: %w", err)
		}
		reg.Close()
	}
	if m.Spool != nil {
		if err := copyFile(filepath.Join(from, BackupSpoolFile), spoolPath); err != nil {
			_ = os.Remove(regPath)
			return m, err
		}
	}
	return m, nil
}

// copyFile copies src to the new file dst atomically (mode 0600).
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	defer in.Close()
	err = atomicfile.Create(dst, 0o600, func(f *os.File) error {
		_, err := io.Copy(f, in)
		return err
	})
	if err != nil {
		return fmt.Errorf("restore %s: %w", dst, err)
	}
	return nil
}

// --- gateway.backup ---

func (a *admin) backup(c *call, p *params) (result, error) {
	path := p.str("path")
	withSpool, _ := p.boolean("spool")
	if err := p.finish(); err != nil {
		return result{}, err
	}
	if path == "" {
		return result{}, badRequest("path: required (an absolute directory path that does not exist yet)")
	}
	if err := CheckBackupPath(path, a.g.cfg.StateDir); err != nil {
		return result{}, badRequest("path: %v", err)
	}
	reg, _, q, _ := a.parts()
	src := backupSources{registry: reg.Backup}
	if withSpool {
		s, ok := q.(*spool.Spool)
		if !ok {
			return result{}, badRequest("spool: the spool is not durable (spool.durable = false): nothing to back up")
		}
		src.spool = s.Backup
	}
	start := time.Now()
	m, err := writeBackup(path, a.g.version, start, src)
	if err != nil {
		return result{}, err
	}
	a.audit(c, path, "backup written", "devices", m.Registry.Devices, "spool", withSpool, "took", time.Since(start).Round(time.Millisecond))
	msg := fmt.Sprintf("backup written to %s: %d devices", path, m.Registry.Devices)
	if m.Spool != nil {
		msg += fmt.Sprintf(", %d queued messages", m.Spool.Messages)
	}
	return result{msg: msg + " (the registry key is not in it: keep it separately)", data: m}, nil
}
