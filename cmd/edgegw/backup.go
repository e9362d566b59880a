package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/edgegw/edgegw/gateway"
	"github.com/edgegw/edgegw/gateway/adminapi"
	"github.com/edgegw/edgegw/secrets"
)

func init() {
	commands["backup"] = runBackup
	commands["restore"] = runRestore
}

// runBackup implements 'edgegw backup': through the running daemon's admin
// socket (gateway.backup), or with -state from the files of a stopped one.
func runBackup(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("edgegw backup", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("o", "", "the backup `directory` to create (must not exist)")
	withSpool := fs.Bool("spool", false, "also back up the spool (messages not yet delivered)")
	socket := fs.String("socket", DefaultAdminSocket, "the running gateway's admin unix socket `path`")
	state := fs.String("state", "", "back up the files of a STOPPED gateway in this state `directory` instead")
	spoolPath := fs.String("spool-path", "", "with -state: the spool `file` when spool.path is not <state>/spool.db")
	timeout := fs.Duration("timeout", 10*time.Minute, "how long to wait for the gateway to write the backup")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *out == "" {
		fmt.Fprintln(stderr, "-o DIR is required")
		return errUsage
	}
	dir, err := filepath.Abs(*out)
	if err != nil {
		return err
	}
	var m adminapi.Backup
	if *state != "" {
		sp := ""
		if *withSpool {
			sp = *spoolPath
			if sp == "" {
				sp = filepath.Join(*state, gateway.BackupSpoolFile)
			}
		}
		if err := gateway.CheckBackupPath(dir, *state); err != nil {
			return err
		}
		m, err = gateway.BackupFiles(dir, filepath.Join(*state, gateway.BackupRegistryFile), sp, Version())
		if errors.Is(err, secrets.ErrLocked) {
			err = fmt.Errorf("%w\n(the gateway is running: run edgegw backup without -state, through its admin socket)", err)
		}
	} else {
		m, err = backupOnline(ctx, *socket, dir, *withSpool, *timeout)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "backup written to %s: registry %d products, %d devices", dir, m.Registry.Products, m.Registry.Devices)
	if m.Spool != nil {
		fmt.Fprintf(stdout, "; spool %d messages", m.Spool.Messages)
	}
	fmt.Fprintln(stdout, "\nthe registry key is NOT in the backup: keep edgegw.key separately, the backup is useless without it")
	return nil
}

func backupOnline(ctx context.Context, socket, dir string, withSpool bool, timeout time.Duration) (adminapi.Backup, error) {
	var m adminapi.Backup
	p, err := filepath.Abs(socket)
	if err != nil {
		return m, err
	}
	cl, err := adminapi.Dial(ctx, adminapi.Options{URL: "unix://" + p, Name: "edgegw-backup"})
	if err != nil {
		return m, fmt.Errorf("%w (is edgegw running? for a stopped gateway use -state DIR)", err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	err = cl.Call(ctx, adminapi.MethodGatewayBackup, adminapi.BackupParams{Path: dir, Spool: withSpool}, &m)
	return m, err
}

// runRestore implements 'edgegw restore': copy a backup into a fresh
// state directory of a stopped gateway.
func runRestore(_ context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("edgegw restore", flag.ContinueOnError)
	fs.SetOutput(stderr)
	from := fs.String("from", "", "the backup `directory` (made by edgegw backup)")
	state := fs.String("state", "", "the gateway's state `directory`: missing, empty, or holding only edgegw.key")
	keyFile := fs.String("key", "", "the registry key `file` to check the backup against (default: $CREDENTIALS_DIRECTORY/edgegw.key or <state>/edgegw.key, when present)")
	spoolPath := fs.String("spool-path", "", "where the spool goes when spool.path is not <state>/spool.db")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *from == "" || *state == "" {
		fmt.Fprintln(stderr, "-from DIR and -state DIR are required")
		return errUsage
	}
	var key []byte
	kf := *keyFile
	if kf == "" {
		kf = secrets.DefaultKeyPath(*state)
		if _, err := os.Stat(kf); err != nil {
			kf = ""
		}
	}
	if kf != "" {
		if _, err := os.Stat(kf); err != nil {
			return fmt.Errorf("-key: %w", err)
		}
		k, _, err := secrets.LoadOrCreateKey(kf, nil)
		if err != nil {
			return err
		}
		key = k
	}
	m, err := gateway.Restore(*from, *state, *spoolPath, key)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "restored backup of %s into %s: %d devices", m.Created, *state, m.Registry.Devices)
	if m.Spool != nil {
		fmt.Fprintf(stdout, ", %d queued messages", m.Spool.Messages)
	}
	fmt.Fprintln(stdout)
	if key == nil {
		fmt.Fprintln(stdout, "no key found to check it against: provide the same edgegw.key before starting the gateway")
	}
	return nil
}
