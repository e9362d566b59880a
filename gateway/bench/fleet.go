package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
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
	devs     []*devConn
	acked    atomic.Int64 // PUBACKs received, all devices
	lost     atomic.Int64 // connections that broke
	firstErr atomic.Pointer[error]
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
	inflight map[uint16]struct{} // packet ids in flight
	nextPID  uint16

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
				slots: make(chan struct{}, cfg.Window), inflight: map[uint16]struct{}{}, dead: make(chan struct{})}
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
			_, ok := d.inflight[pid]
			delete(d.inflight, pid)
			d.mu.Unlock()
			if !ok {
				continue // a PUBACK for nothing in flight: ignore
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

// publishUntil publishes QoS 1 posts of size bytes, keeping at most the
// window in flight, until stop is closed or count posts were sent (count 0:
// no limit); then it waits up to drain for the window to empty. It returns
// the connection's error if it broke.
func (d *devConn) publishUntil(ctx context.Context, stop <-chan struct{}, count int64, size int, drain time.Duration) error {
	buf := make([]byte, 0, size+len(d.topic)+16)
	pay := make([]byte, 0, size+64)
	for sent := int64(0); count == 0 || sent < count; sent++ {
		select {
		case d.slots <- struct{}{}:
		case <-stop:
			return d.waitWindow(drain)
		case <-d.dead:
			return d.broken()
		case <-ctx.Done():
			return ctx.Err()
		}
		d.seq++
		pay = appendPayload(pay[:0], d.seq, time.Now().UnixNano(), size)
		d.mu.Lock()
		d.nextPID++
		if d.nextPID == 0 {
			d.nextPID = 1
		}
		pid := d.nextPID
		d.inflight[pid] = struct{}{}
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
// have finished; the error is the first device error.
func (f *fleet) publishAll(ctx context.Context, stop <-chan struct{}, count int64, size int, drain time.Duration) error {
	var wg sync.WaitGroup
	errs := make([]error, len(f.devs))
	for i, d := range f.devs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = d.publishUntil(ctx, stop, count, size, drain)
		}()
	}
	wg.Wait()
	return firstError(errs)
}
