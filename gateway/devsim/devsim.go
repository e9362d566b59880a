// Package devsim simulates field devices: MQTT clients that log in to a
// broker (edgegw's local broker, or a cloud directly) with the credentials
// their firmware would use, post Alink property messages carrying a
// per-device sequence number, and answer property-set downlinks. edgegw demo
// and the benchmarks use it; tests use it as a realistic device fleet.
package devsim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgegw/edgegw/secrets"
)

// Device is one simulated field device.
type Device struct {
	Dialect    secrets.Dialect
	ProductKey string
	DeviceName string
	// Secret is the deviceSecret the firmware signs with. When
	// LocalPassword is set instead, the device logs in with username
	// deviceName&productKey and that password.
	Secret        secrets.Secret
	LocalPassword secrets.Secret
	// ServerSubscribed makes the device behave like firmware relying on
	// server-side subscription: Alibaba Link SDK 4.x (it signs with
	// "_ss=1" and never SUBSCRIBEs to its system topics) and every EnOS
	// SDK (EnOS pushes commands without a SUBSCRIBE). Such a device takes
	// whatever arrives; it answers property sets as the others do.
	ServerSubscribed bool
}

// UplinkTopic is the topic the device posts its properties to.
func (d Device) UplinkTopic() string {
	if d.Dialect == secrets.EnOS {
		return "/sys/" + d.ProductKey + "/" + d.DeviceName + "/thing/measurepoint/post"
	}
	return "/sys/" + d.ProductKey + "/" + d.DeviceName + "/thing/event/property/post"
}

// DownlinkTopic is the property-set topic the cloud writes to.
func (d Device) DownlinkTopic() string {
	if d.Dialect == secrets.EnOS {
		return "/sys/" + d.ProductKey + "/" + d.DeviceName + "/thing/service/measurepoint/set"
	}
	return "/sys/" + d.ProductKey + "/" + d.DeviceName + "/thing/service/property/set"
}

// Config describes a fleet.
type Config struct {
	Broker   string // e.g. tcp://127.0.0.1:1883
	Devices  []Device
	Interval time.Duration // between two posts of one device; 0 = as fast as the window allows
	QoS      byte
	// Window is the number of unacknowledged QoS 1 posts a device keeps in
	// flight (default 1: wait for each PUBACK).
	Window    int
	Count     int // posts per device; 0 = until stopped
	Keepalive time.Duration
	// ReconnectMin and ReconnectMax bound a device's wait before it
	// connects again after a lost connection or a failed attempt. The
	// wait starts at ReconnectMin, doubles after every attempt that failed
	// and every connection on which no post was acknowledged, up to
	// ReconnectMax, and starts over after a connection on which one was.
	// Each wait is jittered (half to all of it), so that devices dropped
	// together do not come back in lockstep. A gateway that drops a
	// device whose publish it could not store (a full disk) thus sees
	// that device back at most once per ReconnectMax while the disk
	// stays full, not in a tight loop. Defaults 50 ms and 1 s.
	ReconnectMin, ReconnectMax time.Duration

	Logger *slog.Logger
	// OnAck is called when the broker acknowledged post seq of d (QoS 1:
	// a real PUBACK; QoS 0: written). It runs on the device's goroutine.
	OnAck func(d Device, seq int64)
	// OnDownlink is called for every downlink a device receives.
	OnDownlink func(d Device, topic string, payload []byte)
}

// Stats are the fleet's counters.
type Stats struct {
	Connected int   // devices currently connected
	Published int64 // posts handed to the client
	Acked     int64 // posts acknowledged by the broker (QoS 1) or written (QoS 0)
	Failed    int64 // posts that failed (connection lost before PUBACK)
	Downlinks int64 // downlink messages received
	Refused   int64 // connection attempts refused
}

// Fleet is a running set of simulated devices.
type Fleet struct {
	cfg       Config
	connected atomic.Int64
	published atomic.Int64
	acked     atomic.Int64
	failed    atomic.Int64
	downlinks atomic.Int64
	refused   atomic.Int64
	cancel    context.CancelFunc
	wg        sync.WaitGroup
}

// Post is the payload each simulated post carries: an Alink envelope whose
// params hold the device's sequence number, so a receiver can check order.
type Post struct {
	ID      string         `json:"id"`
	Version string         `json:"version"`
	Method  string         `json:"method"`
	Params  map[string]any `json:"params"`
}

// SeqOf extracts the sequence number of a simulated post (-1 if none).
func SeqOf(payload []byte) int64 {
	var p struct {
		Params struct {
			Seq *int64 `json:"seq"`
		} `json:"params"`
	}
	if json.Unmarshal(payload, &p) != nil || p.Params.Seq == nil {
		return -1
	}
	return *p.Params.Seq
}

// Start connects every device and starts posting. It returns once every
// device has attempted its first connection; devices that could not connect
// keep retrying in the background.
func Start(ctx context.Context, cfg Config) (*Fleet, error) {
	if cfg.Broker == "" || len(cfg.Devices) == 0 {
		return nil, errors.New("devsim: broker and devices are required")
	}
	if cfg.Window <= 0 {
		cfg.Window = 1
	}
	if cfg.Keepalive == 0 {
		cfg.Keepalive = 60 * time.Second
	}
	if cfg.ReconnectMin <= 0 {
		cfg.ReconnectMin = 50 * time.Millisecond
	}
	if cfg.ReconnectMax < cfg.ReconnectMin {
		cfg.ReconnectMax = max(time.Second, cfg.ReconnectMin)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(ctx)
	f := &Fleet{cfg: cfg, cancel: cancel}
	var started sync.WaitGroup
	for _, d := range cfg.Devices {
		started.Add(1)
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			f.runDevice(ctx, d, started.Done)
		}()
	}
	started.Wait()
	return f, nil
}

// Stats returns the counters so far.
func (f *Fleet) Stats() Stats {
	return Stats{
		Connected: int(f.connected.Load()), Published: f.published.Load(), Acked: f.acked.Load(),
		Failed: f.failed.Load(), Downlinks: f.downlinks.Load(), Refused: f.refused.Load(),
	}
}

// Close stops every device and waits for them.
func (f *Fleet) Close() {
	f.cancel()
	f.wg.Wait()
}

func (f *Fleet) options(d Device) (*mqtt.ClientOptions, error) {
	o := mqtt.NewClientOptions().AddBroker(f.cfg.Broker).
		SetProtocolVersion(4).SetCleanSession(true).SetAutoReconnect(true).
		SetConnectRetry(false).SetOrderMatters(false).
		SetKeepAlive(f.cfg.Keepalive).SetConnectTimeout(10 * time.Second).
		SetMaxReconnectInterval(5 * time.Second).
		// Publish hands the message to the connection's writer and waits
		// for it to take it, by default up to 30 s. When the connection is
		// lost between paho's status check and that hand-off, nobody takes
		// it and the device sat out those 30 s before it noticed the loss
		// and reconnected (a gateway that drops the device after a
		// withheld PUBACK made this happen in about every other disk-full
		// run under -race). The hand-off takes microseconds on a live
		// connection; bound it (and each network write) to a second.
		SetWriteTimeout(handoffTimeout)
	if !d.LocalPassword.IsZero() {
		o.SetClientID(d.ProductKey + "." + d.DeviceName)
		o.SetUsername(d.DeviceName + "&" + d.ProductKey)
		o.SetPassword(d.LocalPassword.Reveal())
		return o, nil
	}
	// Firmware built for the cloud: the C SDKs' constant 2050 timestamp.
	// Alibaba's securemode names the transport (3: plain TCP); EnOS's names
	// the secret, 2 for the deviceSecret on every transport (3 would be a
	// productSecret login, docs/protocol.md §2.3).
	secureMode := 3
	if d.Dialect == secrets.EnOS {
		secureMode = 2
	}
	c, err := secrets.Sign(secrets.SignParams{Dialect: d.Dialect, ProductKey: d.ProductKey, DeviceName: d.DeviceName,
		ClientID: d.ProductKey + "." + d.DeviceName, Timestamp: "2524608000000", SecureMode: secureMode,
		Extra: d.extraParams()}, d.Secret)
	if err != nil {
		return nil, err
	}
	o.SetClientID(c.ClientID)
	o.SetUsername(c.Username)
	o.SetPassword(c.Password.Reveal())
	return o, nil
}

// extraParams are the clientId parameters the device's firmware adds.
func (d Device) extraParams() []secrets.Param {
	if d.ServerSubscribed && d.Dialect != secrets.EnOS {
		return []secrets.Param{{Key: "_ss", Value: "1"}, {Key: "_v", Value: "edgegw-devsim"}, {Key: "ext", Value: "3"}}
	}
	return []secrets.Param{{Key: "_v", Value: "edgegw-devsim"}}
}

// handoffTimeout bounds a Publish call's wait for the connection to take
// the message (paho's WriteTimeout).
const handoffTimeout = time.Second

// backoff is a device's reconnect wait (Config.ReconnectMin/Max).
type backoff struct {
	min, max, next time.Duration
}

// wait returns the jittered wait before the next attempt and doubles the
// one after it.
func (b *backoff) wait() time.Duration {
	d := max(b.next, b.min)
	b.next = min(2*d, b.max)
	return d/2 + rand.N(d/2+1)
}

// reset starts over at the minimum: the last connection made progress.
func (b *backoff) reset() { b.next = b.min }

// sleep waits d or until ctx ends (false).
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func (f *Fleet) runDevice(ctx context.Context, d Device, started func()) {
	started = sync.OnceFunc(started)
	defer started()
	log := f.cfg.Logger.With("device", d.ProductKey+"/"+d.DeviceName)
	o, err := f.options(d)
	if err != nil {
		log.Error("devsim: cannot build credentials", "err", err)
		return
	}
	var up atomic.Bool
	lost := make(chan struct{}, 1)
	onDownlink := func(c mqtt.Client, m mqtt.Message) {
		f.downlinks.Add(1)
		if f.cfg.OnDownlink != nil {
			f.cfg.OnDownlink(d, m.Topic(), m.Payload())
		}
		if m.Topic() != d.DownlinkTopic() {
			return
		}
		var req struct {
			ID string `json:"id"`
		}
		_ = json.Unmarshal(m.Payload(), &req)
		reply, _ := json.Marshal(map[string]any{"id": req.ID, "code": 200, "data": map[string]any{}})
		c.Publish(m.Topic()+"_reply", 0, false, reply)
	}
	if d.ServerSubscribed {
		// No SUBSCRIBE: the broker pushes the device's downlinks.
		o.SetDefaultPublishHandler(onDownlink)
	}
	o.SetOnConnectHandler(func(c mqtt.Client) {
		if up.CompareAndSwap(false, true) {
			f.connected.Add(1)
		}
		if !d.ServerSubscribed {
			c.Subscribe(d.DownlinkTopic(), 1, onDownlink)
		}
	})
	o.SetConnectionLostHandler(func(mqtt.Client, error) {
		if up.CompareAndSwap(true, false) {
			f.connected.Add(-1)
		}
		select {
		case lost <- struct{}{}:
		default:
		}
	})
	// paho's own reconnect would complete pending tokens as successful
	// before the broker acknowledged the resent message (docs/architecture.md
	// §5.2); with it off, a token succeeds only on a real PUBACK, and this
	// loop reconnects.
	o.SetAutoReconnect(false)
	c := mqtt.NewClient(o)
	defer func() {
		c.Disconnect(100)
		if up.CompareAndSwap(true, false) {
			f.connected.Add(-1)
		}
	}()
	seq := int64(1)
	bo := backoff{min: f.cfg.ReconnectMin, max: f.cfg.ReconnectMax}
	for attempt := 0; ctx.Err() == nil; attempt++ {
		tok := c.Connect()
		select {
		case <-tok.Done():
		case <-ctx.Done():
			return
		}
		if err := tok.Error(); err != nil {
			f.refused.Add(1)
			if attempt == 0 {
				log.Warn("devsim: connect failed, retrying", "err", err)
			}
			started()
			if !sleep(ctx, bo.wait()) {
				return
			}
			continue
		}
		attempt = -1
		started()
		select {
		case <-lost:
		default:
		}
		var done, progressed bool
		seq, done, progressed = f.post(ctx, c, d, seq, lost)
		if done {
			return
		}
		if progressed {
			bo.reset()
		}
		if !sleep(ctx, bo.wait()) {
			return
		}
	}
}

// post publishes from seq on until Count is reached (done), ctx ends
// (done) or the connection is lost; it returns the next sequence number
// and whether any post was acknowledged on this connection.
func (f *Fleet) post(ctx context.Context, c mqtt.Client, d Device, seq int64, lost <-chan struct{}) (next int64, done, progressed bool) {
	var tick <-chan time.Time
	if f.cfg.Interval > 0 {
		t := time.NewTicker(f.cfg.Interval)
		defer t.Stop()
		tick = t.C
	}
	// window holds the tokens of posts in flight; an acker goroutine
	// counts each outcome as soon as it is known.
	type inflight struct {
		tok mqtt.Token
		seq int64
	}
	window := make(chan inflight, f.cfg.Window)
	slots := make(chan struct{}, f.cfg.Window) // at most Window posts in flight
	acked := make(chan struct{})
	var anyAcked bool // written by the acker, read once it is done
	go func() {
		defer close(acked)
		for p := range window {
			if f.await(ctx, d, p.tok, p.seq) {
				anyAcked = true
			}
			<-slots
		}
	}()
	defer func() {
		close(window)
		<-acked
		progressed = anyAcked
	}()
	method := "thing.event.property.post"
	if d.Dialect == secrets.EnOS {
		method = "thing.measurepoint.post"
	}
	topic := d.UplinkTopic()
	for ; f.cfg.Count == 0 || seq <= int64(f.cfg.Count); seq++ {
		if tick != nil {
			select {
			case <-tick:
			case <-lost:
				return seq, false, false
			case <-ctx.Done():
				return seq, true, false
			}
		}
		select {
		case slots <- struct{}{}: // blocks while the window is full
		case <-lost:
			return seq, false, false
		case <-ctx.Done():
			return seq, true, false
		}
		p := Post{ID: strconv.FormatInt(seq, 10), Version: "1.0", Method: method, Params: map[string]any{
			"seq": seq, "temperature": 20 + 5*math.Sin(float64(seq)/10), "sentAt": time.Now().UnixNano(),
		}}
		body, _ := json.Marshal(p)
		f.published.Add(1)
		window <- inflight{c.Publish(topic, f.cfg.QoS, false, body), seq}
	}
	// Count reached: wait for the last acknowledgements, then idle
	// (answering downlinks) until stopped.
	select {
	case <-ctx.Done():
	case <-lost:
		return seq, false, false
	}
	return seq, true, false
}

// await waits for one post's token, counts its outcome and reports
// whether it was acknowledged.
func (f *Fleet) await(ctx context.Context, d Device, tok mqtt.Token, seq int64) bool {
	select {
	case <-tok.Done():
	case <-ctx.Done():
		return false
	}
	if tok.Error() != nil {
		f.failed.Add(1)
		return false
	}
	f.acked.Add(1)
	if f.cfg.OnAck != nil {
		f.cfg.OnAck(d, seq)
	}
	return true
}

// String summarises the stats for a log line.
func (s Stats) String() string {
	return fmt.Sprintf("connected=%d published=%d acked=%d failed=%d downlinks=%d", s.Connected, s.Published, s.Acked, s.Failed, s.Downlinks)
}
