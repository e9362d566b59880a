package testutil

import (
	"fmt"
	"testing"
	"time"
)

// Poll intervals of Eventually: it starts fast, so that a condition that
// holds almost at once costs almost nothing, and backs off so that a long
// wait does not spin a shared CPU.
const (
	pollFirst = time.Millisecond
	pollMax   = 20 * time.Millisecond
)

// Eventually calls cond until it returns true, and fails tb (Fatalf) if
// it has not within timeout. The message says what was awaited: format and
// args as for fmt.Sprintf. cond runs on the calling goroutine, at least
// once, and never again after Eventually returns.
func Eventually(tb testing.TB, timeout time.Duration, cond func() bool, format string, args ...any) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	wait := pollFirst
	for !cond() {
		if !time.Now().Before(deadline) {
			tb.Fatalf("timed out after %v waiting for %s", timeout, fmt.Sprintf(format, args...))
		}
		time.Sleep(min(wait, time.Until(deadline)+time.Millisecond))
		wait = min(2*wait, pollMax)
	}
}
