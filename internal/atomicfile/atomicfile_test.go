package atomicfile_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/edgegw/edgegw/internal/atomicfile"
)

func writeString(s string) func(*os.File) error {
	return func(f *os.File) error {
		_, err := f.WriteString(s)
		return err
	}
}

// onlyFile fails unless dir holds exactly the file name: no temporary
// file is left behind.
func onlyFile(t *testing.T, dir, name string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 || ents[0].Name() != name {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("directory holds %q, want only %q", names, name)
	}
}

func wantFile(t *testing.T, path, content string, perm fs.FileMode) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != content {
		t.Errorf("%s holds %q, want %q", path, b, content)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != perm {
		t.Errorf("%s has mode %v, want %v", path, fi.Mode().Perm(), perm)
	}
}

func TestWriteFileReplaces(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	if err := atomicfile.WriteFile(path, 0o640, writeString("one")); err != nil {
		t.Fatal(err)
	}
	wantFile(t, path, "one", 0o640)
	if err := atomicfile.WriteFile(path, 0o600, writeString("two")); err != nil {
		t.Fatal(err)
	}
	wantFile(t, path, "two", 0o600)
	onlyFile(t, dir, "state.json")
}

func TestWriteFileFailureKeepsOld(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	if err := atomicfile.WriteFile(path, 0o600, writeString("old")); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	err := atomicfile.WriteFile(path, 0o600, func(f *os.File) error {
		f.WriteString("half")
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("WriteFile = %v, want the write error", err)
	}
	wantFile(t, path, "old", 0o600)
	onlyFile(t, dir, "state.json")
}

func TestCreateNeverReplaces(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "edgegw.key")
	if err := atomicfile.Create(path, 0o600, writeString("first")); err != nil {
		t.Fatal(err)
	}
	err := atomicfile.Create(path, 0o600, writeString("second"))
	if !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second Create = %v, want fs.ErrExist", err)
	}
	wantFile(t, path, "first", 0o600)
	onlyFile(t, dir, "edgegw.key")
}

func TestCreateMissingDirectory(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing", "f")
	if err := atomicfile.Create(path, 0o600, writeString("x")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Create = %v, want fs.ErrNotExist", err)
	}
}

func TestLink(t *testing.T) {
	dir := t.TempDir()
	tmp, path := filepath.Join(dir, ".x.tmp"), filepath.Join(dir, "x")
	if err := os.WriteFile(tmp, []byte("built"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := atomicfile.Link(tmp, path); err != nil {
		t.Fatal(err)
	}
	wantFile(t, path, "built", 0o600)
	onlyFile(t, dir, "x")

	if err := os.WriteFile(tmp, []byte("other"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := atomicfile.Link(tmp, path); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("Link over an existing file = %v, want fs.ErrExist", err)
	}
	wantFile(t, path, "built", 0o600)
}
