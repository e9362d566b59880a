package gateway

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/edgegw/edgegw/localbroker"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink"
	"github.com/edgegw/edgegw/uplink/spool"
)

// sink puts every accepted device publish into the queue before the device
// gets its PUBACK: localbroker calls Publish inside mochi's OnPublish hook
// and acknowledges the publish when done(nil) comes. The normal lane hands
// the message to the spool without waiting (AppendAsync), so that a device
// with many publishes in flight gets them into one group commit; done runs
// on the spool's writer after the commit. Time-critical publishes (NTP
// requests, RRPC responses, replies to cloud requests) take the uplink's
// express lane instead, synchronously: QoS 1 ones are queued durably all
// the same, QoS 0 ones are held in memory until sent or expired
// (docs/architecture.md §3.3).
type sink struct {
	q    Queue
	mgr  *uplink.Manager
	qos0 bool // spool QoS 0 publishes even while the device's cloud session is down
	log  *slog.Logger
}

// errQoS0Offline drops a QoS 0 publish when spooling of QoS 0 is off and the
// cloud session is not up: QoS 0 is fire-and-forget, not buffered.
var errQoS0Offline = errors.New("QoS 0 publish dropped: cloud session down and spool.qos0 = false")

func (s *sink) Publish(ctx context.Context, m localbroker.Message, done func(error)) {
	id := m.Device.DeviceID
	msg := spool.Message{Topic: m.Topic, Payload: m.Payload, QoS: m.QoS, Received: m.Received}
	if handled, err := s.mgr.Expedite(ctx, id, msg); handled {
		done(appendResult(id, err))
		return
	}
	if m.QoS == 0 && !s.qos0 {
		if st, ok := s.mgr.Status(id); !ok || st.State != uplink.StateConnected {
			done(errQoS0Offline)
			return
		}
	}
	s.q.AppendAsync(ctx, id, msg, func(_ uint64, err error) { done(appendResult(id, err)) })
}

// appendResult maps a queue's Append error to the broker's answer.
func appendResult(id secrets.DeviceID, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, spool.ErrFull), errors.Is(err, spool.ErrTooLarge):
		// reject-new policy: an MQTT 5 device gets "quota exceeded"; a 3.1.1
		// device gets no PUBACK and resends later.
		return localbroker.Reject(localbroker.ReasonQuotaExceeded, err)
	}
	return fmt.Errorf("spool %s: %w", id, err)
}

// loadCertPool reads PEM certificates from path.
func loadCertPool(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no PEM certificate found", path)
	}
	return pool, nil
}
