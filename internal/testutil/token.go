package testutil

import (
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// WaitToken waits at most timeout for a paho token to complete and fails
// tb (Fatalf) when it does not or completes with an error; what names the
// operation in the message.
func WaitToken(tb testing.TB, tok mqtt.Token, timeout time.Duration, what string) {
	tb.Helper()
	if !tok.WaitTimeout(timeout) {
		tb.Fatalf("%s: timed out after %v", what, timeout)
	}
	if err := tok.Error(); err != nil {
		tb.Fatalf("%s: %v", what, err)
	}
}
