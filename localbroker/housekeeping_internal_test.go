package localbroker

import (
	"errors"
	"io"
	"log/slog"
	"testing"
	"testing/synctest"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// TestSlowHousekeeping checks that slowHousekeeping reaches mochi's expiry
// tickers: an offline session whose expiry has passed is removed on the
// next housekeeping round, which comes every 30 s instead of every second.
// It runs on synctest's fake clock.
func TestSlowHousekeeping(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		caps := mqtt.NewDefaultServerCapabilities()
		caps.MaximumSessionExpiryInterval = 1 // seconds
		srv := mqtt.New(&mqtt.Options{Capabilities: caps, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err := slowHousekeeping(srv, 30*time.Second); err != nil {
			t.Fatal(err)
		}
		if err := srv.Serve(); err != nil {
			t.Fatal(err)
		}
		defer srv.Close()

		cl := srv.NewClient(nil, "test", "offline-session", false)
		srv.Clients.Add(cl)
		cl.Stop(errors.New("gone")) // offline from now; expired after 1 s
		time.Sleep(5 * time.Second)
		synctest.Wait()
		if _, ok := srv.Clients.Get(cl.ID); !ok {
			t.Fatal("the session expired on mochi's 1 s housekeeping")
		}
		time.Sleep(30 * time.Second)
		synctest.Wait()
		if _, ok := srv.Clients.Get(cl.ID); ok {
			t.Fatal("the session did not expire on the 30 s housekeeping")
		}
	})
}

func TestHousekeepingEvery(t *testing.T) {
	for in, want := range map[time.Duration]time.Duration{
		time.Second:     time.Second,
		5 * time.Second: time.Second,
		2 * time.Minute: 12 * time.Second,
		time.Hour:       30 * time.Second,
		720 * time.Hour: 30 * time.Second,
	} {
		if got := housekeepingEvery(in); got != want {
			t.Errorf("housekeepingEvery(%v) = %v, want %v", in, got, want)
		}
	}
}
