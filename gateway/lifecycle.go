package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// ErrAlreadyRun is returned by a second call of Gateway.Run: a Gateway runs
// once (New makes a fresh one).
var ErrAlreadyRun = errors.New("gateway: Run was already called on this gateway")

// stopBudget is shutdown.timeout (kept below systemd's TimeoutStopSec)
// split among the stop steps. New computes it once; every part takes its
// bound from here and from nowhere else (docs/architecture.md §7: stop
// accepting, finish in-flight commits, close the cloud sessions, exit
// within the bound; what is not delivered stays in the spool).
type stopBudget struct {
	total time.Duration // shutdown.timeout

	// broker: stop accepting, disconnect the devices, let the in-flight
	// publishes commit (localbroker.Config.ShutdownTimeout).
	broker time.Duration
	// uplink: quiesce and close the cloud sessions
	// (uplink.ManagerConfig.StopTimeout).
	uplink time.Duration
	// spool: the writer's last commits (spool.Options.CloseTimeout).
	spool time.Duration
	// metrics: in-flight scrapes and health checks finish.
	metrics time.Duration
	// registry: bbolt's close; no transaction is open by then.
	registry time.Duration
}

// newStopBudget splits total: 40% for the local broker, 40% for the cloud
// sessions, 20% (at least 2 s) for the spool's last commits; the metrics
// server and the registry get a fixed grace on top.
func newStopBudget(total time.Duration) stopBudget {
	return stopBudget{
		total:    total,
		broker:   total * 2 / 5,
		uplink:   total * 2 / 5,
		spool:    max(total/5, 2*time.Second),
		metrics:  time.Second,
		registry: time.Second,
	}
}

// stopSlack is how long past its share a step is waited for before it is
// left behind. Every part bounds its own stop by its share and reports an
// overrun itself; the slack only absorbs scheduling delays.
const stopSlack = time.Second

// stopStep is one named part of the shutdown.
type stopStep struct {
	name  string
	share time.Duration
	stop  func() error
}

// stopSteps is what Run has started, in order. Steps stop last-in-first-
// out: the part started last (the local broker, which feeds the others)
// stops first, the registry that everything reads stops last.
type stopSteps struct {
	log   *slog.Logger
	steps []stopStep
}

// add registers the stop of a part that has just started.
func (s *stopSteps) add(name string, share time.Duration, stop func() error) {
	s.steps = append(s.steps, stopStep{name: name, share: share, stop: stop})
}

// run runs the steps last-in-first-out, each once, and logs each one's
// name and duration. A step still running stopSlack past its share is left
// behind, so that the rest still stop and Run returns within the budget;
// the returned error names it. Step errors are joined, each prefixed with
// the step's name.
func (s *stopSteps) run() error {
	var errs []error
	for i := len(s.steps) - 1; i >= 0; i-- {
		st := s.steps[i]
		start := time.Now()
		err := st.await(stopSlack)
		took := time.Since(start).Round(time.Millisecond)
		switch {
		case errors.Is(err, errOverran):
			err = fmt.Errorf("stop %s: not done within its share of the shutdown budget (%v); left running", st.name, st.share)
			s.log.Error("shutdown step overran; not waiting for it", "step", st.name, "duration", took, "share", st.share)
		case err != nil:
			err = fmt.Errorf("stop %s: %w", st.name, err)
			s.log.Warn("shutdown step failed", "step", st.name, "duration", took, "err", err)
		default:
			s.log.Info("shutdown step done", "step", st.name, "duration", took)
		}
		errs = append(errs, err)
	}
	s.steps = nil
	return errors.Join(errs...)
}

// errOverran is await's answer for a step it stopped waiting for.
var errOverran = errors.New("overran")

// await runs the step and waits for it for its share plus slack.
func (st stopStep) await(slack time.Duration) error {
	done := make(chan error, 1)
	go func() { done <- st.stop() }()
	t := time.NewTimer(st.share + slack)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		return errOverran
	}
}

// runner is a long-running part (the local broker, the uplink manager)
// run in its own goroutine until its context ends.
type runner struct {
	cancel context.CancelFunc
	done   chan struct{}
	err    error // set before done is closed
	// taken: Run returned err itself, so the stop step does not repeat it.
	// Written by Run's goroutine before the stop steps start.
	taken bool
}

func startRunner(ctx context.Context, run func(context.Context) error) *runner {
	ctx, cancel := context.WithCancel(ctx)
	r := &runner{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		r.err = run(ctx)
	}()
	return r
}

// result returns the part's error once it has ended (after done), for Run
// to return.
func (r *runner) result() error {
	r.taken = true
	return r.err
}

// stop ends the part and waits for it; its stop step bounds the wait.
// Cancellation is not an error.
func (r *runner) stop() error {
	r.cancel()
	<-r.done
	if r.taken || errors.Is(r.err, context.Canceled) {
		return nil
	}
	return r.err
}
