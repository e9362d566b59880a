package gateway

import (
	"errors"
	"fmt"

	"github.com/edgegw/edgegw/gateway/adminapi"
	"github.com/edgegw/edgegw/secrets"
)

// queue.stats and queue.purge.

func (a *admin) queueStats(c *call, p *params) (result, error) {
	var id secrets.DeviceID
	one := p.has("productKey") || p.has("deviceName")
	if one {
		id = p.device()
	}
	if err := p.finish(); err != nil {
		return result{}, err
	}
	reg, _, q, _ := a.parts()
	if !one {
		t := totalsView(q.Totals())
		return result{msg: fmt.Sprintf("%d messages queued for %d devices", t.Depth, t.Devices), data: adminapi.QueueStats{Totals: &t}}, nil
	}
	st := q.Stats(id)
	if _, err := reg.GetDevice(id.ProductKey, id.DeviceName); errors.Is(err, secrets.ErrNotFound) && st.Depth == 0 && st.DeadLetters == 0 {
		return result{}, notFound("device %s: not found", id)
	}
	v := queueView(st)
	return result{msg: fmt.Sprintf("device %s: %d messages queued", id, v.Depth), data: adminapi.QueueStats{Device: &v}}, nil
}

func (a *admin) queuePurge(c *call, p *params) (result, error) {
	id := p.device()
	if err := p.finish(); err != nil {
		return result{}, err
	}
	reg, _, q, _ := a.parts()
	if _, err := reg.GetDevice(id.ProductKey, id.DeviceName); errors.Is(err, secrets.ErrNotFound) && q.Stats(id).Depth == 0 {
		return result{}, notFound("device %s: not found", id)
	} else if err != nil && !errors.Is(err, secrets.ErrNotFound) {
		return result{}, err
	}
	n, err := q.Purge(id)
	if err != nil {
		return result{}, fmt.Errorf("purge queue of device %s: %w", id, err)
	}
	a.audit(c, id.String(), "queue purged", "purged", n)
	return result{msg: fmt.Sprintf("device %s: %d queued messages purged", id, n), data: adminapi.Purged{Device: id.String(), Purged: n}}, nil
}
