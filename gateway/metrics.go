package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink"
	"github.com/edgegw/edgegw/uplink/spool"
)

// The metrics have no per-device label: their cardinality is fixed by the
// code (states, CONNACK codes, drop reasons), whatever the fleet's size.
// Per-device detail lives in the admin API.

func newDesc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("edgegw_"+name, help, labels, nil)
}

var (
	descBuildInfo = newDesc("build_info", "A metric with a constant 1 labelled by the version, commit and Go version edgegw was built with.", "version", "commit", "goversion")
	descReady     = newDesc("ready", "1 once the registry and spool are open and every local listener is bound, 0 before and during shutdown.")

	descRegistryLost = newDesc("registry_records_lost", "Registry records (products, devices, activations) lost when a damaged registry file was salvaged at start: unreadable, or known to have been on damaged pages (0 when the file was sound). The damaged file is kept next to it as registry.db.corrupt-<time>.")

	descSessions       = newDesc("cloud_sessions", "Cloud sessions by state.", "state")
	descSessionsRefuse = newDesc("cloud_sessions_refused", "Cloud sessions whose latest connection attempt the cloud refused, by CONNACK return code (1 protocol, 2 identifier, 3 unavailable, 4 credentials, 5 not authorized).", "code")
	descAttempts       = newDesc("cloud_connect_attempts_total", "Cloud connection attempts (CONNECT sent or dial started).")
	descConnects       = newDesc("cloud_connects_total", "Cloud connections that came up (CONNACK accepted).")
	descSent           = newDesc("cloud_messages_sent_total", "Messages delivered to the cloud (QoS 1: acknowledged; QoS 0: written).")
	descResent         = newDesc("cloud_messages_resent_total", "Messages published again after a reconnect because their PUBACK had not arrived (possible duplicates in the cloud).")
	descDeadLettered   = newDesc("cloud_messages_dead_lettered_total", "Messages the cloud would never accept, moved to the dead-letter store.")
	descExpired        = newDesc("cloud_messages_expired_total", "Time-critical messages dropped because they could not be sent within their TTL (cloud.ntp_ttl, rrpc_ttl, reply_ttl), by class (ntp, rrpc, reply).", "class")
	descInflight       = newDesc("cloud_inflight_messages", "Messages published to the cloud and not yet acknowledged.")
	descCloudSubs      = newDesc("cloud_subscriptions", "Topic filters mirrored to the cloud.")

	descBrokerClients    = newDesc("broker_clients", "Local broker connections past the CONNACK.")
	descBrokerSessions   = newDesc("broker_sessions", "Local broker sessions, including offline persistent ones.")
	descBrokerConnects   = newDesc("broker_connects_total", "Local broker connections accepted.")
	descBrokerRefused    = newDesc("broker_connects_refused_total", "Local broker CONNECTs refused (authentication, will topic, identifier, client limit).")
	descBrokerIn         = newDesc("broker_messages_in_total", "Device publishes accepted (durable in the spool before the PUBACK).")
	descBrokerSinkErrs   = newDesc("broker_messages_refused_total", "Device publishes refused because the spool could not take them.")
	descBrokerWithheld   = newDesc("broker_withheld_disconnects_total", "Devices disconnected after a refused QoS 1 publish, so that they send it again.")
	descBrokerPubDenied  = newDesc("broker_publishes_denied_total", "Device publishes outside the device's topic namespace.")
	descBrokerSubDenied  = newDesc("broker_subscriptions_denied_total", "Device subscription filters outside the device's topic namespace.")
	descBrokerIDCollide  = newDesc("broker_packet_id_collisions_total", "SUBSCRIBE/UNSUBSCRIBE packet ids equal to a downlink's in flight, answered normally (a mochi defect worked around).")
	descBrokerSubQuota   = newDesc("broker_subscriptions_over_quota_total", "Device subscription filters refused because the device held broker.max_subscriptions (SUBACK 0x80, MQTT 5: 0x97); never mirrored to the cloud.")
	descBrokerSubs       = newDesc("broker_subscriptions", "Subscriptions held by local broker sessions, including offline persistent ones.")
	descCloudSubsQuota   = newDesc("cloud_subscriptions_over_quota_total", "Local filters not mirrored to the cloud because the device already mirrored broker.max_subscriptions filters.")
	descBrokerAcceptErrs = newDesc("broker_accept_errors_total", "Temporary accept failures on local listeners (e.g. out of file descriptors).")
	descBrokerOutDropped = newDesc("broker_outbound_dropped_total", "Messages to local clients dropped by the broker, by reason.", "reason")
	descAdminLoginFails  = newDesc("broker_admin_login_failures_total", "Failed logins of [[broker.admin]] users on network listeners, by reason (wrong_password: checked and wrong; throttled: refused without a check during the wait after earlier failures).", "reason")

	descDownDelivered = newDesc("downlink_delivered_total", "Cloud messages delivered or queued to the local device.")
	descDownDropped   = newDesc("downlink_dropped_total", "Cloud messages that could not be handed to the local device, by reason (not_connected, not_subscribed, inflight_full, topic_not_allowed, not_running, write_failed).", "reason")

	descSpoolInfo        = newDesc("spool_info", "Spool settings (always 1).", "durable", "overflow")
	descSpoolDevices     = newDesc("spool_devices", "Devices known to the spool.")
	descSpoolDepth       = newDesc("spool_messages", "Messages waiting in the spool.")
	descSpoolBytes       = newDesc("spool_bytes", "Bytes of messages waiting in the spool.")
	descSpoolBudget      = newDesc("spool_budget_bytes", "The spool's byte budget (0: unlimited).")
	descSpoolDevBudget   = newDesc("spool_device_budget_bytes", "The per-device byte budget (0: unlimited).")
	descSpoolOldest      = newDesc("spool_oldest_message_age_seconds", "Age of the oldest message waiting in the spool (0 when it is empty).")
	descSpoolAppended    = newDesc("spool_appended_total", "Messages stored in the spool since it was opened.")
	descSpoolAcked       = newDesc("spool_acked_total", "Messages removed from the spool after the cloud acknowledged them since it was opened (rate() is the drain rate).")
	descSpoolDropped     = newDesc("spool_dropped_total", "Messages that left the spool unacknowledged, by reason (kept across restarts).", "reason")
	descSpoolRejected    = newDesc("spool_rejected_total", "Appends refused (spool full under reject-new, or message too large).")
	descSpoolDead        = newDesc("spool_dead_letters", "Messages in the dead-letter store.")
	descSpoolDeadBytes   = newDesc("spool_dead_letter_bytes", "Bytes in the dead-letter store.")
	descSpoolDeadEvicted = newDesc("spool_dead_letters_evicted_total", "Dead letters removed to respect the dead-letter bounds.")
	descSpoolCommits     = newDesc("spool_commits_total", "Spool write transactions (each one fsync).")
	descSpoolCommitErrs  = newDesc("spool_commit_errors_total", "Spool write transactions that failed.")
	descSpoolCommitTime  = newDesc("spool_commit_duration_seconds", "Spool write transaction (write and fsync) latency.")
	descSpoolFile        = newDesc("spool_file_bytes", "Size of the spool file.")
	descSpoolDiskFull    = newDesc("spool_disk_full", "1 while appends fail fast after a disk-full error.")
	descSpoolReserve     = newDesc("spool_reserve_available", "1 while the spool's reserve of free pages is intact, 0 after a full disk used it up.")
)

// stateSeries are reported even when no session is in them, so that a
// dashboard sees zeros rather than missing series.
var stateSeries = []uplink.State{
	uplink.StateIdle, uplink.StateActivating, uplink.StateActivationFailed, uplink.StateConnecting,
	uplink.StateConnected, uplink.StateBackoff, uplink.StateAuthFailed, uplink.StateStopped,
}

// connackCodes are the MQTT 3.1.1 refusal codes.
var connackCodes = [...]string{"1", "2", "3", "4", "5"}

// collector reads the gateway's state on each scrape; nothing on the data
// path does any work for it.
type collector struct {
	g *Gateway

	mu sync.Mutex // serializes Collect
	// The uplink's counters live per session and vanish when a device is
	// removed; they are folded into running totals here so that the
	// exported counters never go down (a decrease reads as a reset and a
	// spurious spike to rate()).
	seen   map[secrets.DeviceID]sessionCounts
	totals sessionCounts
}

type sessionCounts struct {
	attempts, connects, sent, resent, deadLettered uint64
	expired                                        uplink.ExpiredCounts
}

func newCollector(g *Gateway) *collector {
	return &collector{g: g, seen: map[secrets.DeviceID]sessionCounts{}}
}

// Describe implements prometheus.Collector.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		descBuildInfo, descReady, descRegistryLost,
		descSessions, descSessionsRefuse, descAttempts, descConnects, descSent, descResent,
		descDeadLettered, descExpired, descInflight, descCloudSubs,
		descBrokerSubQuota, descBrokerSubs, descCloudSubsQuota,
		descBrokerClients, descBrokerSessions, descBrokerConnects, descBrokerRefused, descBrokerIn,
		descBrokerSinkErrs, descBrokerWithheld, descBrokerPubDenied, descBrokerSubDenied, descBrokerIDCollide, descBrokerAcceptErrs, descBrokerOutDropped,
		descAdminLoginFails, descDownDelivered, descDownDropped,
		descSpoolInfo, descSpoolDevices, descSpoolDepth, descSpoolBytes, descSpoolBudget, descSpoolDevBudget,
		descSpoolOldest, descSpoolAppended, descSpoolAcked, descSpoolDropped, descSpoolRejected, descSpoolDead,
		descSpoolDeadBytes, descSpoolDeadEvicted, descSpoolCommits, descSpoolCommitErrs, descSpoolCommitTime,
		descSpoolFile, descSpoolDiskFull, descSpoolReserve,
	} {
		ch <- d
	}
}

// Collect implements prometheus.Collector. Scrapes are serialized: the
// session totals must see the statuses in the order they were taken.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	g := c.g
	g.mu.Lock()
	b, m, q := g.broker, g.mgr, g.queue
	subs := g.subs // set before the broker, under the same lock
	g.mu.Unlock()

	ready := 0.0
	if o := g.observer(); o != nil && o.ready() {
		ready = 1
	}
	ch <- gauge(descReady, ready)
	ch <- gauge(descBuildInfo, 1, g.version, g.commit, runtime.Version())
	ch <- gauge(descRegistryLost, float64(g.registryLost.Load()))

	if m != nil {
		c.collectSessions(ch, m.Statuses())
	}
	if b != nil {
		s := b.Stats()
		ch <- gauge(descBrokerClients, float64(s.ClientsConnected))
		ch <- gauge(descBrokerSessions, float64(s.Sessions))
		ch <- counter(descBrokerConnects, float64(s.Connects))
		ch <- counter(descBrokerRefused, float64(s.ConnectsRefused))
		ch <- counter(descBrokerIn, float64(s.MessagesIn))
		ch <- counter(descBrokerSinkErrs, float64(s.SinkErrors))
		ch <- counter(descBrokerWithheld, float64(s.WithheldDisconnects))
		ch <- counter(descBrokerPubDenied, float64(s.PublishesDenied))
		ch <- counter(descBrokerIDCollide, float64(s.IDCollisions))
		ch <- counter(descBrokerSubDenied, float64(s.SubscriptionsDenied))
		ch <- counter(descBrokerSubQuota, float64(s.SubscriptionsOverQuota))
		ch <- gauge(descBrokerSubs, float64(max(s.Subscriptions, 0)))
		if subs != nil {
			ch <- counter(descCloudSubsQuota, float64(subs.overQuota.Load()))
		}
		ch <- counter(descBrokerAcceptErrs, float64(s.AcceptErrors))
		ch <- counter(descBrokerOutDropped, float64(max(s.MessagesDropped, 0)), "queue-full")
		ch <- counter(descBrokerOutDropped, float64(max(s.InflightDropped, 0)), "inflight-full")
		ch <- counter(descDownDelivered, float64(s.Delivered))
		for i, r := range downlinkDropReasons {
			ch <- counter(descDownDropped, float64(g.down.n[i].Load()), r.label)
		}
	}
	ch <- counter(descAdminLoginFails, float64(g.adminLogins.wrongPassword.Load()), "wrong_password")
	ch <- counter(descAdminLoginFails, float64(g.adminLogins.throttled.Load()), "throttled")
	if q != nil {
		c.collectSpool(ch, q)
	}
}

// collectSessions reports the sessions; c.mu is held.
func (c *collector) collectSessions(ch chan<- prometheus.Metric, sts []uplink.SessionStatus) {
	byState := make(map[uplink.State]int, len(stateSeries))
	var refused [len(connackCodes)]int
	var inflight, subs int

	gen := make(map[secrets.DeviceID]sessionCounts, len(sts))
	for _, st := range sts {
		byState[st.State]++
		inflight += st.InFlight
		subs += st.Subscriptions
		if code, ok := refusalCode(st); ok {
			refused[code-1]++
		}
		cur := sessionCounts{st.Attempts, st.Connects, st.Sent, st.Resent, st.DeadLettered, st.Expired}
		prev := c.seen[st.Device]
		c.totals.attempts += delta(cur.attempts, prev.attempts)
		c.totals.connects += delta(cur.connects, prev.connects)
		c.totals.sent += delta(cur.sent, prev.sent)
		c.totals.resent += delta(cur.resent, prev.resent)
		c.totals.deadLettered += delta(cur.deadLettered, prev.deadLettered)
		c.totals.expired.NTP += delta(cur.expired.NTP, prev.expired.NTP)
		c.totals.expired.RRPC += delta(cur.expired.RRPC, prev.expired.RRPC)
		c.totals.expired.Reply += delta(cur.expired.Reply, prev.expired.Reply)
		gen[st.Device] = cur
	}
	c.seen = gen // devices removed since the last scrape are forgotten; their counts stay in totals
	t := c.totals

	for _, s := range stateSeries {
		ch <- gauge(descSessions, float64(byState[s]), string(s))
		delete(byState, s)
	}
	for s, n := range byState { // a state added to uplink later still shows up
		ch <- gauge(descSessions, float64(n), string(s))
	}
	for i, code := range connackCodes {
		ch <- gauge(descSessionsRefuse, float64(refused[i]), code)
	}
	ch <- counter(descAttempts, float64(t.attempts))
	ch <- counter(descConnects, float64(t.connects))
	ch <- counter(descSent, float64(t.sent))
	ch <- counter(descResent, float64(t.resent))
	ch <- counter(descDeadLettered, float64(t.deadLettered))
	for _, class := range uplink.TimeCriticalClasses {
		ch <- counter(descExpired, float64(t.expired.Of(class)), class.String())
	}
	ch <- gauge(descInflight, float64(inflight))
	ch <- gauge(descCloudSubs, float64(subs))
}

// delta is how much a per-session counter grew since the last scrape; a
// smaller value means the device was removed and added again, with a
// fresh session that counts from zero.
func delta(cur, prev uint64) uint64 {
	if cur < prev {
		return cur
	}
	return cur - prev
}

// refusalCode returns the CONNACK code of a session whose latest attempt
// the cloud refused. SessionStatus carries the refusal only as the text of
// uplink.ConnectError (LastError), which stays after the session comes up
// again: connected and stopped sessions are not counted.
func refusalCode(st uplink.SessionStatus) (int, bool) {
	switch st.State {
	case uplink.StateAuthFailed, uplink.StateBackoff, uplink.StateConnecting:
	default:
		return 0, false
	}
	_, rest, ok := strings.Cut(st.LastError, refusedPrefix)
	if !ok {
		return 0, false
	}
	end := strings.IndexFunc(rest, func(r rune) bool { return r < '0' || r > '9' })
	if end < 0 {
		end = len(rest)
	}
	code, err := strconv.Atoi(rest[:end])
	if err != nil || code < 1 || code > len(connackCodes) {
		return 0, false
	}
	return code, true
}

// refusedPrefix precedes the code in uplink.ConnectError's text
// ("connect: refused with CONNACK 4 (…)"); a test pins the format.
const refusedPrefix = "refused with CONNACK "

// deviceLister is implemented by spool.Spool and spool.Mem.
type deviceLister interface {
	Devices() []spool.DeviceStats
}

func (c *collector) collectSpool(ch chan<- prometheus.Metric, q Queue) {
	t := q.Totals()
	overflow := t.Overflow
	if overflow == "" {
		overflow = spool.DropOldest
	}
	ch <- gauge(descSpoolInfo, 1, strconv.FormatBool(c.g.cfg.Spool.Durable), string(overflow))
	ch <- gauge(descSpoolDevices, float64(t.Devices))
	ch <- gauge(descSpoolDepth, float64(t.Depth))
	ch <- gauge(descSpoolBytes, float64(t.Bytes))
	ch <- gauge(descSpoolBudget, float64(t.Budget))
	ch <- gauge(descSpoolDevBudget, float64(t.DeviceBudget))

	var oldest time.Duration
	if dl, ok := q.(deviceLister); ok && t.Depth > 0 {
		for _, d := range dl.Devices() {
			oldest = max(oldest, d.OldestAge)
		}
	}
	ch <- gauge(descSpoolOldest, oldest.Seconds())

	ch <- counter(descSpoolAppended, float64(t.Appended))
	ch <- counter(descSpoolAcked, float64(t.Acked))
	for _, r := range spool.Reasons {
		ch <- counter(descSpoolDropped, float64(t.Dropped[r]), string(r))
	}
	for r, n := range t.Dropped {
		if !knownReason(r) {
			ch <- counter(descSpoolDropped, float64(n), string(r))
		}
	}
	ch <- counter(descSpoolRejected, float64(t.Rejected))
	ch <- gauge(descSpoolDead, float64(t.DeadLetters))
	ch <- gauge(descSpoolDeadBytes, float64(t.DeadLetterBytes))
	ch <- counter(descSpoolDeadEvicted, float64(t.DeadLettersEvicted))

	if len(t.Commit.Buckets) == 0 {
		return // in-memory queue: no file, no commits
	}
	ch <- counter(descSpoolCommits, float64(t.Commits))
	ch <- counter(descSpoolCommitErrs, float64(t.CommitErrors))
	ch <- commitHistogram(t.Commit)
	ch <- gauge(descSpoolFile, float64(t.FileSize))
	ch <- gauge(descSpoolDiskFull, boolValue(t.DiskFull))
	ch <- gauge(descSpoolReserve, boolValue(t.Reserve))
}

func knownReason(r spool.Reason) bool {
	for _, k := range spool.Reasons {
		if k == r {
			return true
		}
	}
	return false
}

// commitHistogram turns the spool's latency buckets (counts per bucket,
// the last one unbounded) into a cumulative Prometheus histogram. The
// spool keeps the average rather than the sum: the sum is rebuilt as
// average × count (off by less than a nanosecond per commit).
func commitHistogram(l spool.Latency) prometheus.Metric {
	buckets := make(map[float64]uint64, len(l.Buckets))
	var count uint64
	for _, b := range l.Buckets {
		count += b.Count
		if b.UpTo > 0 {
			buckets[b.UpTo.Seconds()] = count
		}
	}
	sum := l.Avg.Seconds() * float64(count)
	return prometheus.MustNewConstHistogram(descSpoolCommitTime, count, sum, buckets)
}

func gauge(d *prometheus.Desc, v float64, labels ...string) prometheus.Metric {
	return prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
}

func counter(d *prometheus.Desc, v float64, labels ...string) prometheus.Metric {
	return prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// promLogger sends promhttp's error lines to the gateway's log.
type promLogger struct{ g *Gateway }

func (l promLogger) Println(v ...any) {
	l.g.log.Warn("serve metrics", "err", strings.TrimSpace(fmt.Sprintln(v...)))
}

// MetricsAddr returns the bound address of the metrics and health server,
// or nil when it is disabled (metrics.listen = "") or Run is not running.
// It is set before Ready.
func (g *Gateway) MetricsAddr() net.Addr {
	if o := g.observer(); o != nil && o.ln != nil {
		return o.ln.Addr()
	}
	return nil
}

// startObserver makes Alive answer for this Run and, when metrics.listen
// is set, binds and serves /metrics, /healthz and /readyz. A bind error is
// fatal, like a local listener's: a misconfigured port shows at start, not
// when the monitoring finds nothing. stop ends the server (in-flight
// requests get a short grace) and must be called before the parts it
// reads are closed. stop's error is always nil; it fits the stop steps.
func (g *Gateway) startObserver(ctx context.Context) (stop func() error, err error) {
	o := &observer{g: g, ctx: ctx}
	if addr := g.cfg.Metrics.Listen; addr != "" {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("metrics.listen %s: %w", addr, err)
		}
		o.ln = ln
		o.srv = g.metricsServer(o)
	}
	g.obs.Store(o) // Run runs once, so there is no other
	if o.srv != nil {
		o.served = make(chan struct{})
		go func() {
			defer close(o.served)
			if err := o.srv.Serve(o.ln); !errors.Is(err, http.ErrServerClosed) {
				g.log.Error("metrics and health server stopped", "address", o.ln.Addr().String(), "err", err)
			}
		}()
		g.log.Info("metrics and health endpoints listening", "address", o.ln.Addr().String())
	}
	return func() error {
		o.stopping.Store(true)
		if o.srv != nil {
			sctx, cancel := context.WithTimeout(context.Background(), g.budget.metrics)
			if err := o.srv.Shutdown(sctx); err != nil {
				_ = o.srv.Close()
			}
			cancel()
			<-o.served
		}
		g.obs.CompareAndSwap(o, nil)
		return nil
	}, nil
}

func (g *Gateway) metricsServer(o *observer) *http.Server {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		newCollector(g),
	)
	metrics := promhttp.InstrumentMetricHandler(reg, promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:            promLogger{g},
		ErrorHandling:       promhttp.ContinueOnError,
		Registry:            reg,
		MaxRequestsInFlight: 4,
		Timeout:             10 * time.Second,
	}))
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics)
	mux.HandleFunc("GET /healthz", o.serveHealthz)
	mux.HandleFunc("GET /readyz", o.serveReadyz)
	mux.HandleFunc("GET /{$}", o.serveStatusPage)
	return &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(g.log.With("part", "metrics").Handler(), slog.LevelDebug),
	}
}
