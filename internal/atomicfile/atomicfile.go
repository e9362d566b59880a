// Package atomicfile makes files appear complete or not at all: content is
// written to a temporary file in the target's directory, fsynced, and only
// then given its final name, and the directory is fsynced so that the name
// survives a power cut. A crash at any point leaves either no file (or the
// previous one) or the complete new one, never a partial one; see
// docs/architecture.md for where edgegw relies on this.
package atomicfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// WriteFile writes path atomically, replacing any existing file: write
// fills a temporary file (mode perm) in path's directory, which is
// fsynced, closed and renamed to path; then the directory is fsynced.
// Readers see the old content or the new one, never a mix. The temporary
// file is removed on any failure.
func WriteFile(path string, perm fs.FileMode, write func(*os.File) error) error {
	tmp, err := writeTemp(path, perm, write)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return SyncDir(filepath.Dir(path))
}

// Create is WriteFile that never replaces an existing file: the finished
// temporary file is linked to path (see Link), and if path already exists
// the error wraps fs.ErrExist and path is left as it was. It is for files
// whose first version must win, such as a key that another process may be
// creating at the same moment.
func Create(path string, perm fs.FileMode, write func(*os.File) error) error {
	tmp, err := writeTemp(path, perm, write)
	if err != nil {
		return err
	}
	defer os.Remove(tmp) // after a successful link the name is just an extra link
	return Link(tmp, path)
}

// writeTemp writes a temporary file next to path and returns its name once
// its content is durable.
func writeTemp(path string, perm fs.FileMode, write func(*os.File) error) (_ string, err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return "", err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			_ = os.Remove(tmp)
		}
	}()
	// CreateTemp makes the file 0600; Chmod also sets what the umask
	// would have masked.
	if err := f.Chmod(perm); err != nil {
		return "", err
	}
	if err := write(f); err != nil {
		return "", err
	}
	if err := f.Sync(); err != nil {
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	return tmp, nil
}

// Link gives the finished, fsynced file tmp the name path without
// replacing an existing path (the error then wraps fs.ErrExist), removes
// the name tmp and fsyncs path's directory. It hard-links; on filesystems
// without hard links (some FUSE or vfat mounts) it renames after checking
// that path does not exist, which leaves a window of microseconds in which
// a file created by someone else could be replaced.
//
// It is for files built under a temporary name by other means (a bbolt
// database initialized in place); for content written through a function,
// use Create.
func Link(tmp, path string) error {
	err := os.Link(tmp, path)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return err
		}
		var errno syscall.Errno
		if !errors.As(err, &errno) || (errno != syscall.EPERM && errno != syscall.ENOTSUP && errno != syscall.EOPNOTSUPP && errno != syscall.EXDEV && errno != syscall.EMLINK) {
			return err
		}
		if _, statErr := os.Lstat(path); statErr == nil {
			return &fs.PathError{Op: "create", Path: path, Err: fs.ErrExist}
		}
		if err := os.Rename(tmp, path); err != nil {
			return err
		}
	}
	_ = os.Remove(tmp)
	return SyncDir(filepath.Dir(path))
}

// SyncFile fsyncs the file at path (for files written by other code, such
// as a bbolt database closed without a final sync of its own).
func SyncFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// SyncDir fsyncs a directory so that entries created, renamed or removed
// in it are durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}
