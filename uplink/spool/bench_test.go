package spool_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgegw/edgegw/uplink/spool"
)

// Benchmarks use 200-byte payloads and real files in b.TempDir(), so the
// numbers include fsync (bbolt: two fdatasyncs per commit, data then
// meta). Run: go test -run '^$' -bench . -benchtime 3s ./uplink/spool/

func benchMsg(i int) spool.Message {
	return spool.Message{Topic: "/sys/pk/dev/thing/event/property/post", Payload: payload200(i), QoS: 1}
}

func openBench(b *testing.B, o spool.Options) *spool.Spool {
	b.Helper()
	s, err := spool.Open(filepath.Join(b.TempDir(), "spool.db"), o)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

func reportCommits(b *testing.B, s *spool.Spool, before spool.Totals, msgs int, elapsed time.Duration) {
	after := s.Totals()
	commits := after.Commits - before.Commits
	b.ReportMetric(float64(msgs)/elapsed.Seconds(), "msgs/s")
	b.ReportMetric(float64(commits)/elapsed.Seconds(), "commits/s")
	// bbolt fdatasyncs twice per commit: the data pages, then the meta page.
	b.ReportMetric(2*float64(commits)/elapsed.Seconds(), "fsyncs/s")
	if commits > 0 {
		b.ReportMetric(float64(msgs)/float64(commits), "msgs/commit")
	}
}

// BenchmarkSpoolAppend: one appender, so one commit (fsync) per message.
func BenchmarkSpoolAppend(b *testing.B) {
	s := openBench(b, spool.Options{Budget: 4 << 30})
	ctx := context.Background()
	d := dev(1)
	before := s.Totals()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		if _, err := s.Append(ctx, d, benchMsg(i)); err != nil {
			b.Fatal(err)
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	reportCommits(b, s, before, b.N, elapsed)
}

// BenchmarkSpoolAppendParallel: many devices appending at once share
// commits (group commit).
func BenchmarkSpoolAppendParallel(b *testing.B) {
	for _, par := range []int{8, 64, 512} { // goroutines per CPU
		b.Run(fmt.Sprintf("goroutines=%d", par*2), func(b *testing.B) {
			s := openBench(b, spool.Options{Budget: 4 << 30})
			ctx := context.Background()
			var next atomic.Int64
			before := s.Totals()
			b.SetParallelism(par)
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				d := dev(int(next.Add(1)))
				i := 0
				for pb.Next() {
					if _, err := s.Append(ctx, d, benchMsg(i)); err != nil {
						b.Error(err)
						return
					}
					i++
				}
			})
			elapsed := time.Since(start)
			b.StopTimer()
			reportCommits(b, s, before, b.N, elapsed)
		})
	}
}

// fill appends n messages spread over devices, with parallel appenders so
// that commits are grouped. Appender w owns devices w, w+workers, ... so
// that per-device order is one goroutine's order.
func fill(tb testing.TB, s *spool.Spool, devices, n int) {
	tb.Helper()
	workers := min(devices, 250)
	if devices%workers != 0 {
		tb.Fatalf("fill: %d devices not a multiple of %d workers", devices, workers)
	}
	per := devices / workers
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for k := 0; ; k++ {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if _, err := s.Append(context.Background(), dev(w+workers*(k%per)), benchMsg(i)); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		tb.Fatal(err)
	}
}

// drain reads and acknowledges everything, round-robin over devices, 100
// messages per read, and returns the count.
func drain(tb testing.TB, s *spool.Spool, devices int) int {
	tb.Helper()
	after := make([]uint64, devices)
	total := 0
	for {
		got := 0
		for d := range devices {
			ms, err := s.Read(dev(d), after[d], 100)
			if err != nil {
				tb.Fatal(err)
			}
			for _, m := range ms {
				if err := s.Ack(dev(d), m.Seq); err != nil {
					tb.Fatal(err)
				}
			}
			if len(ms) > 0 {
				after[d] = ms[len(ms)-1].Seq
			}
			got += len(ms)
		}
		total += got
		if got == 0 {
			if err := s.Sync(context.Background()); err != nil {
				tb.Fatal(err)
			}
			return total
		}
	}
}

// BenchmarkSpoolDrain: read and acknowledge b.N buffered messages of 100
// devices, the acknowledgements committed in groups.
func BenchmarkSpoolDrain(b *testing.B) {
	const devices = 100
	s := openBench(b, spool.Options{Budget: 4 << 30})
	fill(b, s, devices, b.N)
	before := s.Totals()
	b.ResetTimer()
	start := time.Now()
	n := drain(b, s, devices)
	elapsed := time.Since(start)
	b.StopTimer()
	if n != b.N {
		b.Fatalf("drained %d of %d", n, b.N)
	}
	reportCommits(b, s, before, n, elapsed)
	if d := s.Totals().Depth; d != 0 {
		b.Fatalf("depth %d after drain", d)
	}
}

// TestDrainMillion buffers 1,000,000 messages of 1,000 devices and drains
// them (read + ack), reporting the rates. It takes about a minute: run it
// with EDGEGW_SPOOL_MILLION=1.
func TestDrainMillion(t *testing.T) {
	if os.Getenv("EDGEGW_SPOOL_MILLION") == "" {
		t.Skip("set EDGEGW_SPOOL_MILLION=1 to buffer and drain 1,000,000 messages")
	}
	const devices, n = 1000, 1_000_000
	path := filepath.Join(t.TempDir(), "spool.db")
	s, err := spool.Open(path, spool.Options{Budget: 4 << 30})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	fill(t, s, devices, n)
	fillTook := time.Since(start)
	tot := s.Totals()
	t.Logf("filled %d messages (%d MiB accounted, file %d MiB) in %v: %.0f msgs/s, %d commits (%.0f msgs/commit, avg commit %v)",
		n, tot.Bytes>>20, tot.FileSize>>20, fillTook, n/fillTook.Seconds(), tot.Commits, float64(n)/float64(tot.Commits), tot.Commit.Avg)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	s, err = spool.Open(path, spool.Options{Budget: 4 << 30})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	t.Logf("reopened (verify, check, rebuild of %d messages) in %v", s.Totals().Depth, time.Since(start))
	before := s.Totals()
	start = time.Now()
	got := drain(t, s, devices)
	took := time.Since(start)
	after := s.Totals()
	if got != n || after.Depth != 0 {
		t.Fatalf("drained %d of %d, depth %d", got, n, after.Depth)
	}
	t.Logf("drained %d messages in %v: %.0f msgs/s, %d commits (%.0f acks/commit); commit latency over the run: avg %v, max %v, histogram %v",
		got, took, float64(got)/took.Seconds(), after.Commits-before.Commits, float64(got)/float64(after.Commits-before.Commits),
		after.Commit.Avg, after.Commit.Max, after.Commit.Buckets)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	s, err = spool.Open(path, spool.Options{Budget: 4 << 30})
	if err != nil {
		t.Fatal(err)
	}
	if c := s.Totals().Compaction; c != nil {
		t.Logf("compaction of the drained file on reopen: %d MiB -> %d KiB in %v (open total %v)", c.Before>>20, c.After>>10, c.Took, time.Since(start))
	} else {
		t.Errorf("drained file was not compacted on reopen")
	}
	s.Close()
}

// BenchmarkSpoolAppendWindow: 1,000 devices, each with a window of
// messages in flight, as the broker's sink appends them. With Append a
// device has one message per commit whatever its window (it waits for
// each); with AppendAsync all it has in flight join the next commit.
func BenchmarkSpoolAppendWindow(b *testing.B) {
	const devices = 1000
	for _, c := range []struct {
		name   string
		async  bool
		window int
	}{{"append/window=1", false, 1}, {"async/window=1", true, 1}, {"async/window=16", true, 16}} {
		b.Run(c.name, func(b *testing.B) {
			s := openBench(b, spool.Options{Budget: 4 << 30})
			ctx := context.Background()
			var next atomic.Int64
			before := s.Totals()
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			for d := range devices {
				wg.Go(func() {
					slots := make(chan struct{}, c.window)
					var inFlight sync.WaitGroup
					for i := 0; next.Add(1) <= int64(b.N); i++ {
						if !c.async {
							if _, err := s.Append(ctx, dev(d), benchMsg(i)); err != nil {
								b.Error(err)
								return
							}
							continue
						}
						slots <- struct{}{}
						inFlight.Add(1)
						s.AppendAsync(ctx, dev(d), benchMsg(i), func(_ uint64, err error) {
							if err != nil {
								b.Error(err)
							}
							<-slots
							inFlight.Done()
						})
					}
					inFlight.Wait()
				})
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			reportCommits(b, s, before, b.N, elapsed)
			b.ReportMetric(float64(s.Totals().Commit.Avg.Microseconds()), "µs/commit")
		})
	}
}
