package main

import (
	"context"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/edgegw/edgegw/internal/testutil"
)

// TestDemoBothDialects runs 'edgegw demo' briefly for each dialect, as the
// README shows it, and waits until messages have flowed both ways: the
// cloud received device posts, and a device that never subscribed (it
// relies on server-side subscription) received a cloud write. The
// EnOS demo once exited at start (issue #15: its short backoff was below
// the EnOS session's 30 s floor).
func TestDemoBothDialects(t *testing.T) {
	summary := regexp.MustCompile(`cloud received (\d+) \(.*\), writes delivered (\d+)`)
	for _, dialect := range []string{"aliyun", "enos"} {
		t.Run(dialect, func(t *testing.T) {
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			var stdout, stderr testutil.SyncBuffer
			done := make(chan error, 1)
			go func() {
				done <- runDemo(ctx, []string{"-dialect", dialect, "-devices", "2", "-state", t.TempDir(),
					"-interval", "100ms", "-every", "100ms", "-downlink-every", "200ms"}, nil, &stdout, &stderr)
			}()
			flowed := func() bool {
				text := stdout.String()
				for _, m := range summary.FindAllStringSubmatch(text, -1) {
					up, _ := strconv.Atoi(m[1])
					down, _ := strconv.Atoi(m[2])
					if up > 0 && down > 0 {
						return true
					}
				}
				select {
				case err := <-done:
					done <- err
					return true // reported below
				default:
					return false
				}
			}
			testutil.Eventually(t, 30*time.Second, flowed, "messages both ways in the %s demo", dialect)
			select {
			case err := <-done:
				t.Fatalf("demo ended early: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
			default:
			}
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("demo: %v\nstderr:\n%s", err, stderr.String())
				}
			case <-time.After(20 * time.Second):
				t.Fatal("demo did not stop within 20 s of its context ending")
			}
		})
	}
}
