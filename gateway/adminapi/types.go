package adminapi

import "time"

// The data of the replies, one type per method result. None of them holds
// a secret: only whether one is set.

// Status is the data of gateway.status.
type Status struct {
	Version       string  `json:"version"`
	Started       string  `json:"started"`
	UptimeSeconds float64 `json:"uptimeSeconds"`
	// Devices counts registered devices by registry state, and those
	// disabled.
	Devices DeviceCounts `json:"devices"`
	// Sessions counts cloud sessions by state (idle, connecting, connected,
	// backoff, auth-failed, stopped).
	Sessions map[string]int `json:"sessions"`
	Cloud    Cloud          `json:"cloud"`
	Spool    Totals         `json:"spool"`
	Local    Local          `json:"local"`
	Runtime  Runtime        `json:"runtime"`
}

// Runtime is the gateway process as the Go runtime sees it
// (runtime/metrics), in bytes unless named otherwise.
type Runtime struct {
	Goroutines int `json:"goroutines"`
	// HeapObjectsBytes holds heap objects: live ones and garbage not yet
	// collected.
	HeapObjectsBytes uint64 `json:"heapObjectsBytes"`
	// HeapFreeBytes is heap the process holds without objects in it:
	// free space in partly used spans and free pages not yet returned.
	HeapFreeBytes uint64 `json:"heapFreeBytes"`
	// HeapReleasedBytes is heap returned to the OS (not resident).
	HeapReleasedBytes uint64 `json:"heapReleasedBytes"`
	// StackBytes holds goroutine stacks, including free space in their
	// spans.
	StackBytes uint64 `json:"stackBytes"`
	// OtherBytes is the runtime's own: span and GC metadata, profiling,
	// caches.
	OtherBytes uint64 `json:"otherBytes"`
	// TotalBytes is everything the runtime mapped (released included).
	TotalBytes uint64 `json:"totalBytes"`
	GCCycles   uint64 `json:"gcCycles"`
	// AllocBytes counts the heap allocated since the start.
	AllocBytes uint64 `json:"allocBytes"`
	// Settles counts the times memory was returned to the OS after a burst
	// of connections, LastSettle is the last.
	Settles    int64     `json:"settles"`
	LastSettle time.Time `json:"lastSettle,omitzero"`
}

// DeviceCounts counts the registry's devices.
type DeviceCounts struct {
	Total    int            `json:"total"`
	Disabled int            `json:"disabled"`
	ByState  map[string]int `json:"byState"`
}

// Cloud describes how the cloud endpoint is reached.
type Cloud struct {
	Endpoint string `json:"endpoint"`
	Dialect  string `json:"dialect"`
	// Sessions and Connected count cloud sessions, all and up.
	Sessions  int `json:"sessions"`
	Connected int `json:"connected"`
	// Reachable is true when at least one session is up, false when there
	// are sessions and none is up, absent when there are no sessions.
	Reachable   *bool     `json:"reachable,omitempty"`
	LastConnect time.Time `json:"lastConnect,omitzero"`
	LastPuback  time.Time `json:"lastPuback,omitzero"`
	// Errors are the last errors of sessions that are not up, most
	// frequent first (at most 5).
	Errors []ErrorCount `json:"errors,omitempty"`
}

// ErrorCount is one distinct session error and how many sessions
// report it.
type ErrorCount struct {
	Error    string `json:"error"`
	Sessions int    `json:"sessions"`
}

// Local describes the local broker.
type Local struct {
	Clients    int64  `json:"clients"`
	MessagesIn uint64 `json:"messagesIn"`
	Refused    uint64 `json:"connectsRefused"`
}

// Totals is the spool's state (gateway.status, queue.stats).
type Totals struct {
	Devices            int               `json:"devices"`
	Depth              int               `json:"depth"`
	Bytes              int64             `json:"bytes"`
	Budget             int64             `json:"budget"`
	DeviceBudget       int64             `json:"deviceBudget"`
	Overflow           string            `json:"overflow"`
	Dropped            map[string]uint64 `json:"dropped"`
	Rejected           uint64            `json:"rejected"`
	DeadLetters        int               `json:"deadLetters"`
	DeadLetterBytes    int64             `json:"deadLetterBytes"`
	DeadLettersEvicted uint64            `json:"deadLettersEvicted"`
	Appended           uint64            `json:"appended"`
	Acked              uint64            `json:"acked"`
	Commits            uint64            `json:"commits"`
	CommitErrors       uint64            `json:"commitErrors"`
	CommitAvgMs        float64           `json:"commitAvgMs"`
	CommitMaxMs        float64           `json:"commitMaxMs"`
	LastError          string            `json:"lastError,omitempty"`
	DiskFull           bool              `json:"diskFull"`
	FileSize           int64             `json:"fileSize"`
}

// Device is a device as admin replies show it: never a secret, only
// whether one is set.
type Device struct {
	ProductKey       string    `json:"productKey"`
	DeviceName       string    `json:"deviceName"`
	Dialect          string    `json:"dialect,omitempty"`
	ClientID         string    `json:"clientId,omitempty"`
	State            string    `json:"state"`
	StateReason      string    `json:"stateReason,omitempty"`
	Disabled         bool      `json:"disabled"`
	HasDeviceSecret  bool      `json:"hasDeviceSecret"`
	HasLocalPassword bool      `json:"hasLocalPassword"`
	Session          string    `json:"session"` // the cloud session's state, or "none"
	Queued           int       `json:"queued"`
	Removing         bool      `json:"removing,omitempty"` // a device.remove with spool "drain" is waiting
	Created          time.Time `json:"created,omitzero"`
	Updated          time.Time `json:"updated,omitzero"`
	ActivatedAt      time.Time `json:"activatedAt,omitzero"`
}

// ID returns "productKey/deviceName".
func (d Device) ID() string { return d.ProductKey + "/" + d.DeviceName }

// DeviceList is the data of device.list. Next, when set, is the After
// of the next page.
type DeviceList struct {
	Devices []Device `json:"devices"`
	Next    string   `json:"next,omitempty"`
}

// DeviceDetail is the data of device.get.
type DeviceDetail struct {
	Device  Device   `json:"device"`
	Session *Session `json:"session,omitempty"`
	Queue   Queue    `json:"queue"`
}

// Session is a cloud session's status.
type Session struct {
	State         string    `json:"state"`
	Dialect       string    `json:"dialect"`
	ClientID      string    `json:"clientId,omitempty"`
	LastError     string    `json:"lastError,omitempty"`
	Attempts      uint64    `json:"attempts"`
	Connects      uint64    `json:"connects"`
	LastConnect   time.Time `json:"lastConnect,omitzero"`
	NextAttempt   time.Time `json:"nextAttempt,omitzero"`
	InFlight      int       `json:"inFlight"`
	LastPuback    time.Time `json:"lastPuback,omitzero"`
	Sent          uint64    `json:"sent"`
	Resent        uint64    `json:"resent"`
	DeadLettered  uint64    `json:"deadLettered"`
	Subscriptions int       `json:"subscriptions"`
}

// Queue is one device's spool queue.
type Queue struct {
	Device             string            `json:"device"`
	Depth              int               `json:"depth"`
	Bytes              int64             `json:"bytes"`
	Oldest             time.Time         `json:"oldest,omitzero"`
	OldestAgeSeconds   float64           `json:"oldestAgeSeconds"`
	LastSeq            uint64            `json:"lastSeq"`
	PendingAcks        int               `json:"pendingAcks"`
	LastAck            time.Time         `json:"lastAck,omitzero"`
	Dropped            map[string]uint64 `json:"dropped"`
	Rejected           uint64            `json:"rejected"`
	DeadLetters        int               `json:"deadLetters"`
	DeadLetterBytes    int64             `json:"deadLetterBytes"`
	DeadLettersEvicted uint64            `json:"deadLettersEvicted"`
}

// QueueStats is the data of queue.stats: Device for one device, else
// Totals.
type QueueStats struct {
	Device *Queue  `json:"device,omitempty"`
	Totals *Totals `json:"totals,omitempty"`
}

// Product is a product as admin replies show it.
type Product struct {
	ProductKey       string `json:"productKey"`
	Dialect          string `json:"dialect"`
	HasProductSecret bool   `json:"hasProductSecret"`
	// DefaultConnectParams are the product's default connect parameters,
	// "key=value,…" (empty: none).
	DefaultConnectParams string    `json:"defaultConnectParams,omitempty"`
	Devices              int       `json:"devices"`
	Created              time.Time `json:"created,omitzero"`
	Updated              time.Time `json:"updated,omitzero"`
}

// ProductUpdate is the data of product.update.
type ProductUpdate struct {
	Product Product `json:"product"`
	// Changes name what changed ("productSecret changed", …); empty when
	// nothing did.
	Changes []string `json:"changes"`
	// ActivationRetried counts devices without a deviceSecret that try to
	// activate again with the new productSecret (activation-failed ones
	// included; disabled ones do when enabled).
	ActivationRetried int `json:"activationRetried"`
	// SessionsUpdated counts cloud sessions that now carry the new default
	// connect parameters.
	SessionsUpdated int `json:"sessionsUpdated"`
	// Errors are devices whose cloud session could not be changed (at most
	// 20; the gateway log has all). Their registry records are changed.
	Errors []RowError `json:"errors,omitempty"`
}

// Removed is the data of device.remove (also on a drain that did not
// finish: State "disabled", with the messages still queued).
type Removed struct {
	Device    string `json:"device"`
	State     string `json:"state"` // "removed", or "disabled" when a drain did not finish
	Spool     string `json:"spool"` // "discard" or "drain"
	Discarded int    `json:"discarded"`
	Queued    int    `json:"queued"`
	Waited    string `json:"waited,omitempty"`
}

// Purged is the data of queue.purge.
type Purged struct {
	Device string `json:"device"`
	Purged int    `json:"purged"`
}

// ImportResult is the data of device.import.
type ImportResult struct {
	Added         int        `json:"added"`
	Unchanged     int        `json:"unchanged"`
	Updated       int        `json:"updated"`
	Failed        int        `json:"failed"`
	Errors        []RowError `json:"errors,omitempty"`
	ProductsAdded []string   `json:"productsAdded,omitempty"`
}

// RowError is a device.import row that failed.
type RowError struct {
	Line    int    `json:"line,omitempty"`
	Device  string `json:"device,omitempty"`
	Code    int    `json:"code"`
	Message string `json:"message"`
}
