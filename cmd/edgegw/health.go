package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode"
)

func init() { commands["health"] = runHealth }

// healthBodyLimit bounds what is read of the answer: its first line is
// all that is printed.
const healthBodyLimit = 4 << 10

// runHealth implements 'edgegw health [-url URL] [-timeout D]': a GET of
// the daemon's /healthz for a container HEALTHCHECK (the image has no curl
// or shell). It prints one line and returns nil on 200 (exit 0), an error
// otherwise (exit 1 — never 2, which Docker reserves; flag errors too).
func runHealth(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("edgegw health", flag.ContinueOnError)
	fs.SetOutput(stderr)
	target := fs.String("url", "http://127.0.0.1:9464/healthz", "health endpoint `URL` (metrics.listen and /healthz or /readyz)")
	timeout := fs.Duration("timeout", 3*time.Second, "give up after `duration`")
	if err := parseFlags(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errors.New("invalid arguments")
	}
	u, err := url.Parse(*target)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("-url %q: want http://host:port/path", *target)
	}
	if *timeout <= 0 {
		return fmt.Errorf("-timeout %v: want a positive duration", *timeout)
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return fmt.Errorf("build request for %s: %w", u.Redacted(), err)
	}
	client := &http.Client{
		// Health endpoints are local: no proxy from the environment, and
		// a redirect is an answer, not something to follow.
		Transport:     &http.Transport{Proxy: nil, DisableKeepAlives: true},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	resp, err := client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("GET %s: no answer within %v", u.Redacted(), *timeout)
		}
		return fmt.Errorf("GET %s: %w", u.Redacted(), unwrapURLError(err))
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, healthBodyLimit))
	line := firstLine(body)
	if resp.StatusCode != http.StatusOK {
		if line != "" {
			return fmt.Errorf("GET %s: %s: %s", u.Redacted(), resp.Status, line)
		}
		return fmt.Errorf("GET %s: %s", u.Redacted(), resp.Status)
	}
	if line == "" {
		line = "ok"
	}
	_, err = fmt.Fprintf(stdout, "%s: %s\n", u.Redacted(), line)
	return err
}

// unwrapURLError drops net/http's "Get \"URL\": " prefix, which would
// repeat the URL.
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// firstLine returns the first line of b, without control characters and
// at most 200 characters long.
func firstLine(b []byte) string {
	s, _, _ := strings.Cut(string(b), "\n")
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || r == unicode.ReplacementChar {
			return -1
		}
		return r
	}, s)
	s = strings.TrimSpace(s)
	if r := []rune(s); len(r) > 200 {
		s = string(r[:200]) + "…"
	}
	return s
}
