package testutil

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"
)

// SyncBuffer is a bytes.Buffer that is safe for concurrent writers and
// readers: the destination of a logger the code under test writes to from
// its own goroutines. The zero value is ready to use.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p.
func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// WaitFor polls until the buffer contains want and fails tb, showing the
// buffer, if it does not within timeout.
func (b *SyncBuffer) WaitFor(tb testing.TB, want string, timeout time.Duration) {
	tb.Helper()
	Eventually(tb, timeout, func() bool { return strings.Contains(b.String(), want) },
		"%q in the output; output:\n%s", want, lazyString{b})
}

// lazyString prints the buffer when the failure message is formatted, not
// when Eventually is called.
type lazyString struct{ b *SyncBuffer }

func (l lazyString) String() string { return l.b.String() }
