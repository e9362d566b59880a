package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgegw/edgegw/secrets"
)

// benchPK is the product key of every simulated device (an Alibaba-shaped
// 11-character key).
const benchPK = "a1BenchProd"

// device is one simulated field device.
type device struct {
	ProductKey string
	Name       string
	Secret     secrets.Secret
}

// topic is the Alink property-post topic the device publishes to.
func (d device) topic() string {
	return "/sys/" + d.ProductKey + "/" + d.Name + "/thing/event/property/post"
}

// signed returns the CONNECT fields the device's firmware would send to
// the cloud (and to edgegw's local broker): Alibaba signed credentials over
// plain TCP (securemode 3) with the SDKs' constant timestamp.
func (d device) signed(keepalive time.Duration) (connectParams, error) {
	c, err := secrets.Sign(secrets.SignParams{Dialect: secrets.Aliyun, ProductKey: d.ProductKey, DeviceName: d.Name,
		ClientID: d.ProductKey + "." + d.Name, Timestamp: "2524608000000", SecureMode: 3}, d.Secret)
	if err != nil {
		return connectParams{}, fmt.Errorf("sign credentials of %s: %w", d.Name, err)
	}
	return connectParams{ClientID: c.ClientID, Username: c.Username, Password: c.Password.Reveal(), Keepalive: keepalive}, nil
}

// makeDevices returns n devices with random secrets.
func makeDevices(n int) []device {
	devs := make([]device, n)
	for i := range devs {
		devs[i] = device{ProductKey: benchPK, Name: fmt.Sprintf("dev-%05d", i+1), Secret: secrets.NewSecret(randomHex(16))}
	}
	return devs
}

// appendPayload appends an Alink property post of exactly size bytes (or
// the shortest possible, if size is smaller) carrying seq and the send
// time in Unix nanoseconds.
func appendPayload(b []byte, seq, sentAt int64, size int) []byte {
	start := len(b)
	b = append(b, `{"id":"`...)
	b = strconv.AppendInt(b, seq, 10)
	b = append(b, `","version":"1.0","method":"thing.event.property.post","params":{"seq":`...)
	b = strconv.AppendInt(b, seq, 10)
	b = append(b, `,"sentAt":`...)
	b = strconv.AppendInt(b, sentAt, 10)
	b = append(b, `,"pad":"`...)
	for len(b)-start+3 < size {
		b = append(b, 'x')
	}
	return append(b, `"}}`...)
}

var (
	seqKey    = []byte(`"seq":`)
	sentAtKey = []byte(`"sentAt":`)
)

// parsePayload extracts seq and sentAt from a payload built by
// appendPayload.
func parsePayload(p []byte) (seq, sentAt int64, ok bool) {
	seq, ok1 := intAfter(p, seqKey)
	sentAt, ok2 := intAfter(p, sentAtKey)
	return seq, sentAt, ok1 && ok2
}

func intAfter(p, key []byte) (int64, bool) {
	i := bytes.Index(p, key)
	if i < 0 {
		return 0, false
	}
	p = p[i+len(key):]
	var n int64
	j := 0
	for ; j < len(p) && j < 19 && p[j] >= '0' && p[j] <= '9'; j++ {
		n = n*10 + int64(p[j]-'0')
	}
	return n, j > 0
}

// fleet is a set of connected simulated devices.
type fleet struct {
	devs  []*devConn
	acked atomic.Int64 // PUBACKs received, all devices
	// ackFrom and ackTo (Unix ns) bound the sends whose PUBACK latency is
	// recorded (zero: none).
	ackFrom, ackTo atomic.Int64
	lost           atomic.Int64 // connections that broke
	firstErr       atomic.Pointer[error]
}

// devConn is one device's connection and publishing state.
type devConn struct {
	f     *fleet
	dev   device
	c     *mqttConn
	topic string
	ka    time.Duration
	ping  *time.Timer

	seq   int64         // last seq published; publisher goroutine only
	slots chan struct{} // one token per message in flight

	mu       sync.Mutex
	inflight map[uint16]int64 // packet ids in flight: send time, Unix ns
	nextPID  uint16
	ackLat   []int64 // PUBACK latencies of sends in the fleet's ack window, ns; readLoop only

	dead chan struct{}
	err  error // set before dead is closed
}

// fleetConfig describes how a fleet connects.
type fleetConfig struct {
	Addr      string // host:port
	Devices   []device
	Window    int           // messages in flight per device
	Keepalive time.Duration // default 60 s
	Parallel  int           // concurrent connection attempts (default 64)
}

// connectFleet connects every device; it fails (closing those already
// connected) if any device cannot connect.
func connectFleet(ctx context.Context, cfg fleetConfig) (*fleet, error) {
	if cfg.Window <= 0 {
		cfg.Window = 1
	}
	if cfg.Keepalive <= 0 {
		cfg.Keepalive = 60 * time.Second
	}
	if cfg.Parallel <= 0 {
		cfg.Parallel = 64
	}
	f := &fleet{devs: make([]*devConn, len(cfg.Devices))}
	var wg sync.WaitGroup
	sem := make(chan struct{}, cfg.Parallel)
	errs := make([]error, len(cfg.Devices))
	for i, d := range cfg.Devices {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			p, err := d.signed(cfg.Keepalive)
			if err != nil {
				errs[i] = err
				return
			}
			cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			c, err := dialMQTT(cctx, cfg.Addr, p)
			if err != nil {
				errs[i] = err
				return
			}
			dc := &devConn{f: f, dev: d, c: c, topic: d.topic(), ka: cfg.Keepalive,
				slots: make(chan struct{}, cfg.Window), inflight: map[uint16]int64{}, dead: make(chan struct{})}
			dc.ping = time.AfterFunc(dc.ka*3/4, dc.sendPing)
			f.devs[i] = dc
			go dc.readLoop()
		}()
	}
	wg.Wait()
	if err := firstError(errs); err != nil {
		f.close()
		n := 0
		for _, e := range errs {
			if e != nil {
				n++
			}
		}
		return nil, fmt.Errorf("%d of %d devices could not connect to %s: %w", n, len(cfg.Devices), cfg.Addr, err)
	}
	return f, nil
}

func firstError(errs []error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

// close disconnects every device.
func (f *fleet) close() {
	var wg sync.WaitGroup
	for _, d := range f.devs {
		if d == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.ping.Stop()
			d.c.close()
			<-d.dead
		}()
	}
	wg.Wait()
}

// err returns the first connection error seen, if any.
func (f *fleet) err() error {
	if p := f.firstErr.Load(); p != nil {
		return *p
	}
	return nil
}

func (d *devConn) sendPing() {
	select {
	case <-d.dead:
		return
	default:
	}
	if d.c.write([]byte{pktPingreq << 4, 0}) == nil {
		d.ping.Reset(d.ka * 3 / 4)
	}
}

// readLoop handles PUBACK, PINGRESP and (QoS 1) downlinks until the
// connection ends.
func (d *devConn) readLoop() {
	var err error
	defer func() {
		d.err = err
		close(d.dead)
	}()
	for {
		var first byte
		var body []byte
		first, body, err = d.c.readPacket()
		if err != nil {
			return
		}
		switch first >> 4 {
		case pktPuback:
			if len(body) < 2 {
				err = errors.New("short PUBACK")
				return
			}
			pid := uint16(body[0])<<8 | uint16(body[1])
			d.mu.Lock()
			sent, ok := d.inflight[pid]
			delete(d.inflight, pid)
			d.mu.Unlock()
			if !ok {
				continue // a PUBACK for nothing in flight: ignore
			}
			if sent >= d.f.ackFrom.Load() && sent < d.f.ackTo.Load() {
				d.ackLat = append(d.ackLat, time.Now().UnixNano()-sent)
			}
			d.f.acked.Add(1)
			<-d.slots
		case pktPublish:
			_, _, qos, pid, perr := parsePublish(first, body)
			if perr != nil {
				err = perr
				return
			}
			if qos == 1 {
				_ = d.c.write(appendPuback(nil, pid))
			}
		}
	}
}

// pacing makes a device publish at a fixed rate instead of as fast as its
// window allows: the n-th message is due at start + phase + n*every.
// Latencies count from when a message was due, not from when it could be
// sent, so a stalled window shows in them (no coordinated omission).
type pacing struct {
	start time.Time
	phase time.Duration
	every time.Duration
}

// publishUntil publishes QoS 1 posts of size bytes, keeping at most the
// window in flight, until stop is closed or count posts were sent (count 0:
// no limit); then it waits up to drain for the window to empty. It returns
// the connection's error if it broke. With pace, posts go out at its rate.
func (d *devConn) publishUntil(ctx context.Context, stop <-chan struct{}, count int64, size int, drain time.Duration, pace *pacing) error {
	buf := make([]byte, 0, size+len(d.topic)+16)
	pay := make([]byte, 0, size+64)
	var tick *time.Timer
	if pace != nil {
		tick = time.NewTimer(time.Hour)
		defer tick.Stop()
	}
	for sent := int64(0); count == 0 || sent < count; sent++ {
		var due time.Time
		if pace != nil {
			due = pace.start.Add(pace.phase + time.Duration(sent)*pace.every)
			if wait := time.Until(due); wait > 0 {
				tick.Reset(wait)
				select {
				case <-tick.C:
				case <-stop:
					return d.waitWindow(drain)
				case <-d.dead:
					return d.broken()
				case <-ctx.Done():
					return ctx.Err()
				}
			}
		}
		select {
		case d.slots <- struct{}{}:
		case <-stop:
			return d.waitWindow(drain)
		case <-d.dead:
			return d.broken()
		case <-ctx.Done():
			return ctx.Err()
		}
		now := time.Now()
		if due.IsZero() {
			due = now
		}
		d.seq++
		pay = appendPayload(pay[:0], d.seq, due.UnixNano(), size)
		d.mu.Lock()
		d.nextPID++
		if d.nextPID == 0 {
			d.nextPID = 1
		}
		pid := d.nextPID
		d.inflight[pid] = due.UnixNano()
		d.mu.Unlock()
		buf = appendPublish(buf[:0], d.topic, pay, 1, pid)
		if err := d.c.write(buf); err != nil {
			_ = d.c.nc.Close()
			<-d.dead
			return d.broken()
		}
	}
	return d.waitWindow(drain)
}

// waitWindow waits until nothing is in flight.
func (d *devConn) waitWindow(limit time.Duration) error {
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	for i := 0; i < cap(d.slots); i++ {
		select {
		case d.slots <- struct{}{}:
		case <-d.dead:
			return d.broken()
		case <-deadline.C:
			return fmt.Errorf("device %s: %d messages still unacknowledged after %v", d.dev.Name, len(d.slots), limit)
		}
	}
	for range cap(d.slots) {
		<-d.slots
	}
	return nil
}

func (d *devConn) broken() error {
	err := fmt.Errorf("device %s: connection lost: %w", d.dev.Name, d.err)
	d.f.lost.Add(1)
	d.f.firstErr.CompareAndSwap(nil, &err)
	return err
}

// publishAll runs publishUntil on every device at once and returns when all
// have finished; the error is the first device error. rate > 0 paces the
// fleet at rate messages per second in all, spread evenly over the devices
// and, within each device's period, over time.
func (f *fleet) publishAll(ctx context.Context, stop <-chan struct{}, count int64, size int, drain time.Duration, rate float64) error {
	var wg sync.WaitGroup
	errs := make([]error, len(f.devs))
	start := time.Now()
	for i, d := range f.devs {
		var pace *pacing
		if rate > 0 {
			every := time.Duration(float64(len(f.devs)) / rate * float64(time.Second))
			pace = &pacing{start: start, every: every, phase: every * time.Duration(i) / time.Duration(len(f.devs))}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = d.publishUntil(ctx, stop, count, size, drain, pace)
		}()
	}
	wg.Wait()
	return firstError(errs)
}

// recordAcks records the PUBACK latency of every message sent (due, when
// paced) in [from, to).
func (f *fleet) recordAcks(from, to time.Time) {
	f.ackTo.Store(to.UnixNano())
	f.ackFrom.Store(from.UnixNano())
}

// ackLatencies returns the recorded PUBACK latencies, sorted; call it once
// every device has stopped publishing and its window is empty.
func (f *fleet) ackLatencies() []int64 {
	var out []int64
	for _, d := range f.devs {
		out = append(out, d.ackLat...)
	}
	slices.Sort(out)
	return out
}
