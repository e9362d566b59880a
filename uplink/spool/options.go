package spool

import (
	"errors"
	"fmt"
	"log/slog"
	"time"
	"unicode/utf8"

	"github.com/edgegw/edgegw/secrets"
)

// Errors returned (wrapped) by the queues. Test with errors.Is.
var (
	// ErrFull: the message does not fit the byte budget and the overflow
	// policy is reject-new: it would exceed the device's budget, or the
	// gateway-wide budget is full and the device is over its fair share
	// (see Overflow). The broker hook withholds the device's PUBACK, so
	// the device keeps the message and retries.
	ErrFull = errors.New("spool full")
	// ErrTooLarge: the message alone is larger than a budget; it can never
	// be stored, whatever the policy.
	ErrTooLarge = errors.New("message larger than the spool budget")
	// ErrDiskFull: the file system (or Options.MaxFileSize) has no room for
	// the commit. Nothing stored before is affected; appends work again
	// once space is available.
	ErrDiskFull = errors.New("spool disk full")
	// ErrCorrupt: the spool file failed the integrity check on Open.
	ErrCorrupt = errors.New("spool file corrupt")
	// ErrClosed: the queue was closed.
	ErrClosed = errors.New("spool closed")
	// ErrInvalidDevice: the secrets.DeviceID cannot be used as a queue name.
	ErrInvalidDevice = errors.New("invalid device id")
)

// Overflow is what a queue does when a new message would exceed a byte
// budget.
//
// The gateway-wide budget is shared fairly. A device's fair share is
// Budget divided by the number of devices holding queued messages, the
// appending device included (with 4 such devices and a 2 MiB budget:
// 512 KiB each). When the gateway-wide budget is full, room is taken from
// the device holding the most bytes — the appending device counted with
// its new message — its oldest message first, so a device within its fair
// share never loses data to another device's flood.
type Overflow string

const (
	// DropOldest makes room by dropping the oldest messages: the device's
	// own oldest when its budget is exceeded, the oldest of the device
	// holding the most bytes when the gateway-wide budget is exceeded.
	// Dropped messages are counted as ReasonOverflow.
	DropOldest Overflow = "drop-oldest"
	// RejectNew refuses the new message with ErrFull when it would exceed
	// the device's budget, or when the gateway-wide budget is full and the
	// device would exceed its fair share. A device within its fair share
	// still gets its message in: the oldest messages of the device holding
	// the most bytes make room (counted as ReasonOverflow).
	RejectNew Overflow = "reject-new"
)

// ParseOverflow parses "drop-oldest" or "reject-new"; "" means DropOldest.
func ParseOverflow(s string) (Overflow, error) {
	switch Overflow(s) {
	case "", DropOldest:
		return DropOldest, nil
	case RejectNew:
		return RejectNew, nil
	}
	return "", fmt.Errorf("parse overflow policy %q: want %q or %q", s, DropOldest, RejectNew)
}

// Reason says why a message left a queue without being acknowledged.
type Reason string

// Drop reasons, the keys of the Dropped maps.
const (
	ReasonOverflow   Reason = "overflow"    // dropped to stay within a budget (see Overflow)
	ReasonTTL        Reason = "ttl"         // older than Options.TTL
	ReasonPurge      Reason = "purge"       // Purge or Remove
	ReasonDeadLetter Reason = "dead-letter" // moved to the dead-letter store
	ReasonCorrupt    Reason = "corrupt"     // its record failed its checksum, or Salvage could not recover it (spool only)
)

// Reasons lists every Reason, in a fixed order.
var Reasons = []Reason{ReasonOverflow, ReasonTTL, ReasonPurge, ReasonDeadLetter, ReasonCorrupt}

const numReasons = 5

func (r Reason) index() int {
	for i, x := range Reasons {
		if x == r {
			return i
		}
	}
	panic("spool: unknown reason " + string(r))
}

// MessageOverhead is added to len(Topic)+len(Payload) when a message is
// counted against a byte budget: it stands for the key, the record header
// and bbolt's per-element bookkeeping, so that many tiny messages cannot
// slip past the budget.
const MessageOverhead = 64

// Size is the number of bytes m counts against a budget.
func Size(m Message) int64 { return int64(len(m.Topic)+len(m.Payload)) + MessageOverhead }

// Defaults applied by Open and NewMem to zero Options fields.
const (
	DefaultBudget           = 256 << 20
	DefaultDeadLetterMax    = 100
	DefaultDeadLetterBudget = 16 << 20
	DefaultMaxBatch         = 4096
	DefaultCloseTimeout     = 10 * time.Second
	DefaultLockTimeout      = 2 * time.Second
	DefaultCompactMinSize   = 32 << 20
	DefaultCompactRatio     = 0.5
	DefaultDiskFullBackoff  = time.Second
	DefaultAckDelay         = 100 * time.Millisecond
	DefaultCommitDelay      = time.Millisecond
	// ackBatch pending acknowledgements make a commit of their own at
	// once, whatever AckDelay says.
	ackBatch               = 1000
	DefaultDropLogInterval = 10 * time.Second
)

// Options configure a Spool or a Mem. The zero value is usable.
type Options struct {
	// Budget is the gateway-wide byte budget (see Size). Default
	// DefaultBudget.
	Budget int64
	// DeviceBudget is the per-device byte budget. Default (0): Budget.
	DeviceBudget int64
	// Overflow is the policy when a budget would be exceeded. Default
	// DropOldest.
	Overflow Overflow
	// TTL, if positive, drops messages whose Received is older than TTL:
	// Read never returns them and they are removed (counted as
	// ReasonTTL).
	TTL time.Duration
	// DeadLetterMax bounds the dead letters kept per device (the oldest
	// are evicted). Default DefaultDeadLetterMax.
	DeadLetterMax int
	// DeadLetterBudget bounds the bytes of all dead letters together.
	// Default DefaultDeadLetterBudget. Dead letters are not part of
	// Budget: the spool holds at most Budget+DeadLetterBudget bytes.
	DeadLetterBudget int64

	// MaxFileSize, if positive, caps the bbolt file (bbolt's MaxSize):
	// a commit that would grow the file beyond it fails with ErrDiskFull.
	// Spool only.
	MaxFileSize int64
	// MaxBatch caps the appends committed in one transaction. Default
	// DefaultMaxBatch. Spool only.
	MaxBatch int
	// CloseTimeout bounds how long Close waits for in-flight commits.
	// Default DefaultCloseTimeout. Spool only.
	CloseTimeout time.Duration
	// LockTimeout bounds the wait for the file lock in Open (another
	// process holding the file). Default DefaultLockTimeout. Spool only.
	LockTimeout time.Duration
	// CompactMinSize and CompactRatio decide compaction on Open: the file
	// is rewritten when it is at least CompactMinSize bytes and at least
	// CompactRatio of it is free. CompactMinSize < 0 disables compaction.
	// Defaults DefaultCompactMinSize, DefaultCompactRatio. Spool only.
	CompactMinSize int64
	CompactRatio   float64
	// DiskFullBackoff: after a commit failed for lack of space, appends
	// fail fast with ErrDiskFull for this long (or until an acknowledgement
	// frees space) instead of retrying the disk for every message.
	// Default DefaultDiskFullBackoff. Spool only.
	DiskFullBackoff time.Duration
	// AckDelay is how long acknowledgements (deleting messages the cloud
	// took) may wait for a commit that appends anyway before they get one
	// of their own: at a moderate load every message would otherwise cost
	// two fsyncs, one to store it and one to delete it. An acknowledgement
	// lost in a crash only means the message is sent again (at least once).
	// Default DefaultAckDelay; negative: commit acknowledgements at once.
	// Spool only.
	AckDelay time.Duration
	// CommitDelay is how long the writer lets the oldest request of a
	// commit wait for others to join it before the fsync, when it would
	// otherwise commit at once (an idle writer and a fast disk): fewer,
	// larger commits for at most this much more latency. When commits are
	// slow, requests wait longer than this anyway and nothing is added.
	// Default DefaultCommitDelay; negative: no delay. Spool only.
	CommitDelay time.Duration
	// SweepInterval is how often expired messages (TTL) are looked for
	// while the spool is otherwise idle. Default: TTL/4, between 1 s and
	// 1 min. Spool only.
	SweepInterval time.Duration

	// DropLogInterval rate-limits the log of drops: per device and reason
	// at most one line per interval, with the count since the last line.
	// Default DefaultDropLogInterval.
	DropLogInterval time.Duration
	// BeforeCommit, if set, is called on the writer goroutine before each
	// commit, which waits for it to return: a seam for tests that need a
	// commit held back, as a slow disk would hold it. Leave it nil. Spool
	// only.
	BeforeCommit func()
	// Now is the clock for Received defaults, TTL and ages. Default
	// time.Now.
	Now func() time.Time
	// Logger receives drops, disk-full episodes, compaction and recovery
	// notes. Default: discard.
	Logger *slog.Logger
}

func (o Options) withDefaults() (Options, error) {
	if o.Budget == 0 {
		o.Budget = DefaultBudget
	}
	if o.Budget < 0 {
		return o, fmt.Errorf("spool options: Budget %d is negative", o.Budget)
	}
	if o.DeviceBudget == 0 || o.DeviceBudget > o.Budget {
		o.DeviceBudget = o.Budget
	}
	if o.DeviceBudget < 0 {
		return o, fmt.Errorf("spool options: DeviceBudget %d is negative", o.DeviceBudget)
	}
	ov, err := ParseOverflow(string(o.Overflow))
	if err != nil {
		return o, fmt.Errorf("spool options: %w", err)
	}
	o.Overflow = ov
	if o.TTL < 0 {
		return o, fmt.Errorf("spool options: TTL %v is negative", o.TTL)
	}
	if o.DeadLetterMax <= 0 {
		o.DeadLetterMax = DefaultDeadLetterMax
	}
	if o.DeadLetterBudget <= 0 {
		o.DeadLetterBudget = DefaultDeadLetterBudget
	}
	if o.MaxFileSize < 0 {
		return o, fmt.Errorf("spool options: MaxFileSize %d is negative", o.MaxFileSize)
	}
	if o.MaxBatch <= 0 {
		o.MaxBatch = DefaultMaxBatch
	}
	if o.CloseTimeout <= 0 {
		o.CloseTimeout = DefaultCloseTimeout
	}
	if o.LockTimeout <= 0 {
		o.LockTimeout = DefaultLockTimeout
	}
	if o.CompactMinSize == 0 {
		o.CompactMinSize = DefaultCompactMinSize
	}
	if o.CompactRatio <= 0 || o.CompactRatio >= 1 {
		o.CompactRatio = DefaultCompactRatio
	}
	if o.DiskFullBackoff <= 0 {
		o.DiskFullBackoff = DefaultDiskFullBackoff
	}
	if o.AckDelay == 0 {
		o.AckDelay = DefaultAckDelay
	}
	if o.CommitDelay == 0 {
		o.CommitDelay = DefaultCommitDelay
	}
	if o.SweepInterval <= 0 {
		o.SweepInterval = min(max(o.TTL/4, time.Second), time.Minute)
	}
	if o.DropLogInterval <= 0 {
		o.DropLogInterval = DefaultDropLogInterval
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o, nil
}

// maxDeviceIDLen keeps keys far below bbolt's key size limit.
const maxDeviceIDLen = 1024

// maxReasonLen truncates dead-letter reasons.
const maxReasonLen = 256

func validateDevice(d secrets.DeviceID) error {
	switch {
	case d.ProductKey == "" || d.DeviceName == "":
		return fmt.Errorf("%w %q: productKey and deviceName must not be empty", ErrInvalidDevice, d.String())
	case len(d.ProductKey)+len(d.DeviceName)+1 > maxDeviceIDLen:
		return fmt.Errorf("%w: %d bytes, limit %d", ErrInvalidDevice, len(d.ProductKey)+len(d.DeviceName)+1, maxDeviceIDLen)
	}
	for _, s := range []string{d.ProductKey, d.DeviceName} {
		for i := 0; i < len(s); i++ {
			if s[i] == '/' || s[i] == 0 {
				return fmt.Errorf("%w %q: contains '/' or NUL", ErrInvalidDevice, d.String())
			}
		}
	}
	return nil
}

// maxTopicLen is MQTT's limit; the record stores the length in 2 bytes.
const maxTopicLen = 65535

func validateMessage(d secrets.DeviceID, m *Message) error {
	if len(m.Topic) > maxTopicLen {
		return fmt.Errorf("append for %s: %w: topic of %d bytes exceeds %d", d, ErrTooLarge, len(m.Topic), maxTopicLen)
	}
	return nil
}

// truncate shortens a dead-letter reason to maxReasonLen bytes, on a rune
// boundary.
func truncate(reason string) string {
	if len(reason) <= maxReasonLen {
		return reason
	}
	i := maxReasonLen
	for i > 0 && !utf8.RuneStart(reason[i]) {
		i--
	}
	return reason[:i]
}
