package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/edgegw/edgegw/secrets"
)

// runSign implements 'edgegw sign': the CONNECT credentials a person types
// into an MQTT tool or a device's configuration, replacing the vendors'
// password generators.
func runSign(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("edgegw sign", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dialect := fs.String("dialect", "aliyun", "cloud dialect: aliyun or enos")
	pk := fs.String("product-key", "", "productKey")
	dn := fs.String("device-name", "", "deviceName (EnOS: deviceKey)")
	fs.StringVar(dn, "device-key", "", "alias of -device-name (EnOS)")
	secretArg := fs.String("device-secret", "", "the secret, or - to read it from stdin (prefer -device-secret-file: command lines end up in shell history)")
	secretFile := fs.String("device-secret-file", "", "read the secret from this file (first line)")
	cid := fs.String("client-id", "", "bare clientId (default: the deviceName)")
	ts := fs.String("timestamp", "", "timestamp in ms since the epoch (default: now); 'none' leaves it out (Alibaba only)")
	method := fs.String("sign-method", "", "hmacsha256|hmacsha1|hmacmd5 (aliyun), sha256|sha1|md5 (enos); default hmacsha256 / sha256")
	mode := fs.Int("securemode", 2, "securemode: 2 = TLS (EnOS: deviceSecret), 3 = plain TCP (EnOS: productSecret activation)")
	asJSON := fs.Bool("json", false, `print one JSON object {"clientId","username","password","content"}`)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: edgegw sign -dialect aliyun|enos -product-key PK -device-name DN (-device-secret-file F | -device-secret S | -device-secret -) [flags]")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	d, err := secrets.ParseDialect(*dialect)
	if err != nil {
		return err
	}
	secret, err := readSecret(*secretArg, *secretFile, stdin)
	if err != nil {
		return err
	}
	stamp := *ts
	switch stamp {
	case "":
		stamp = strconv.FormatInt(time.Now().UnixMilli(), 10)
	case "none":
		stamp = ""
	}
	c, err := secrets.Sign(secrets.SignParams{
		Dialect: d, ProductKey: *pk, DeviceName: *dn, ClientID: *cid,
		Timestamp: stamp, SignMethod: secrets.SignMethod(*method), SecureMode: *mode,
	}, secret)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetEscapeHTML(false)
		return enc.Encode(struct {
			ClientID string `json:"clientId"`
			Username string `json:"username"`
			Password string `json:"password"`
			Content  string `json:"content"`
		}{c.ClientID, c.Username, c.Password.Reveal(), c.Content})
	}
	_, err = fmt.Fprintf(stdout, "clientId  %s\nusername  %s\npassword  %s\ncontent   %s\n",
		c.ClientID, c.Username, c.Password.Reveal(), c.Content)
	return err
}

// readSecret takes the secret from exactly one of: the flag value, a file,
// or stdin ("-"). Only the first line counts; surrounding whitespace is
// trimmed.
func readSecret(arg, file string, stdin io.Reader) (secrets.Secret, error) {
	var raw string
	switch {
	case arg != "" && file != "":
		return secrets.Secret{}, errors.New("give -device-secret or -device-secret-file, not both")
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return secrets.Secret{}, fmt.Errorf("read device secret: %w", err)
		}
		raw = string(b)
	case arg == "-":
		b, err := io.ReadAll(io.LimitReader(stdin, 64<<10))
		if err != nil {
			return secrets.Secret{}, fmt.Errorf("read device secret from stdin: %w", err)
		}
		raw = string(b)
	case arg != "":
		raw = arg
	default:
		return secrets.Secret{}, errors.New("missing secret: give -device-secret-file F, -device-secret - (stdin) or -device-secret S")
	}
	line, _, _ := strings.Cut(raw, "\n")
	line = strings.TrimSpace(line)
	if line == "" {
		return secrets.Secret{}, errors.New("the device secret is empty")
	}
	return secrets.NewSecret(line), nil
}
