package runtime

import (
	"context"
	goruntime "runtime"
	"runtime/metrics"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/abi"
	"github.com/plinth-dev/plinth/sdk/sdktest"
)

// BenchmarkGCPauseWhileGuestLoops measures how long the Go runtime needs to stop the world for a GC while
// a plugin spins in an endless loop, under each protection, next to a pure-Go busy goroutine and an idle
// process. Each op is one runtime.GC(); the metrics are the p50/p99 of the stop-the-world "stopping"
// phase (runtime/metrics /sched/pauses/stopping/gc:seconds), the p99 of whole stop-the-world pauses
// (/sched/pauses/total/gc:seconds) and the p99 of the whole GC call (mostly concurrent marking). Without protection a
// wazero guest never reaches a safe point and the first GC waits for the guest's deadline; that mode is
// not run.
func BenchmarkGCPauseWhileGuestLoops(b *testing.B) {
	for _, mode := range []string{"idle", "busy-go", "instrument", "close-on-done"} {
		b.Run(mode, func(b *testing.B) {
			stop := make(chan struct{})
			done := make(chan struct{})
			switch mode {
			case "idle":
				close(done)
			case "busy-go":
				var sink atomic.Uint64
				go func() {
					defer close(done)
					x := uint64(88172645463325252)
					for i := 0; ; i++ {
						x ^= x << 13
						x ^= x >> 7
						x ^= x << 17
						if i&0xfffff == 0 {
							select {
							case <-stop:
								sink.Store(x)
								return
							default:
							}
						}
					}
				}()
			default:
				pre := PreemptInstrument
				if mode == "close-on-done" {
					pre = PreemptCloseOnDone
				}
				e := newEngine(b, Config{Preemption: pre})
				p := newPool(b, e, hostileWasm(b), PoolConfig{Hooks: abi.HookSet(0).With(abi.HookRoute), Deadline: time.Hour})
				if err := p.Warm(context.Background(), 1); err != nil {
					b.Fatal(err)
				}
				ctx, cancel := context.WithCancel(context.Background())
				go func() {
					defer close(done)
					p.Call(ctx, abi.HookRoute, routeReq("/loop"), sdktest.New(), nil)
				}()
				go func() { <-stop; cancel() }()
				time.Sleep(50 * time.Millisecond) // let it spin
			}
			before, beforeTotal := pauses("stopping"), pauses("total")
			var durs []time.Duration
			b.ResetTimer()
			for b.Loop() {
				t0 := time.Now()
				goruntime.GC()
				durs = append(durs, time.Since(t0))
			}
			b.StopTimer()
			after, afterTotal := pauses("stopping"), pauses("total")
			close(stop)
			<-done
			p50, p99 := quantiles(before, after)
			b.ReportMetric(p50*1e6, "stop-p50-µs")
			b.ReportMetric(p99*1e6, "stop-p99-µs")
			_, total99 := quantiles(beforeTotal, afterTotal)
			b.ReportMetric(total99*1e6, "pause-p99-µs")
			b.ReportMetric(float64(percentile(durs, 0.99).Microseconds()), "gc-p99-µs")
		})
	}
}

// pauses reads a GC pause histogram: "stopping" (how long stopping the world took, which a guest that
// never reaches a safe point stretches) or "total" (the whole stop-the-world pause).
func pauses(phase string) *metrics.Float64Histogram {
	s := []metrics.Sample{{Name: "/sched/pauses/" + phase + "/gc:seconds"}}
	metrics.Read(s)
	return s[0].Value.Float64Histogram()
}

// quantiles returns the p50 and p99 of the observations between two snapshots of a histogram, as the
// upper bounds of the buckets that hold them.
func quantiles(before, after *metrics.Float64Histogram) (float64, float64) {
	var total uint64
	counts := make([]uint64, len(after.Counts))
	for i := range after.Counts {
		counts[i] = after.Counts[i] - before.Counts[i]
		total += counts[i]
	}
	q := func(p float64) float64 {
		rank := uint64(p * float64(total))
		var c uint64
		for i, n := range counts {
			c += n
			if c > rank {
				return after.Buckets[i+1]
			}
		}
		return after.Buckets[len(after.Buckets)-1]
	}
	return q(0.5), q(0.99)
}

func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[int(p*float64(len(s)-1))]
}
