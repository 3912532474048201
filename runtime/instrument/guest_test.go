package instrument

import (
	"bytes"
	"context"
	"runtime"
	"runtime/metrics"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// Tests on real Go compiler output (testdata/guest) run by real wazero.

type guestCall struct {
	fn    string
	args  []uint64
	iters int64 // loop iterations the call performs at least, 0 if unknown
}

var guestCalls = []guestCall{
	{"xorshift", []uint64{1_000_000}, 1_000_000},
	{"sumloop", []uint64{1_000_000}, 1_000_000},
	{"fib", []uint64{25}, 0},
	{"memops", []uint64{100_000}, 100_000},
	{"sortints", []uint64{20_000, 42}, 20_000},
	{"hash", []uint64{10_000}, 10_000},
	{"jsonenc", []uint64{500}, 500},
}

// TestGoGuestDifferential runs the same calls on the original module and on
// every form: results and the whole linear memory afterwards must be
// identical, and the metered work must not depend on the form.
func TestGoGuestDifferential(t *testing.T) {
	wasm := goGuest(t)
	ctx := context.Background()
	rt := newRuntime(t, compiler, false)
	orig := instantiate(t, rt, wasm)
	var variants []*instance
	for _, p := range forms {
		variants = append(variants, instantiate(t, rt, mustInstrument(t, wasm, p)))
	}
	for _, c := range guestCalls {
		want, _, err := orig.call(ctx, &callState{}, c.fn, c.args...)
		if err != nil {
			t.Fatalf("%s%v on the original: %v", c.fn, c.args, err)
		}
		works := make([]int64, len(variants))
		for i, in := range variants {
			st := &callState{deadline: time.Now().Add(30 * time.Second)}
			got, work, err := in.call(ctx, st, c.fn, c.args...)
			if err != nil {
				t.Fatalf("%s%v %s: %v", c.fn, c.args, forms[i].name, err)
			}
			if len(got) != len(want) || (len(got) > 0 && got[0] != want[0]) {
				t.Errorf("%s%v %s = %v, original %v", c.fn, c.args, forms[i].name, got, want)
			}
			works[i] = work
			if work < c.iters || work <= 0 {
				t.Errorf("%s%v %s: work %d, want >= %d iterations and > 0", c.fn, c.args, forms[i].name, work, c.iters)
			}
			// The countdown ends in (-lag, Interval]; it ends at 0 only
			// where a tick follows, unless the loop is unrolled.
			if st.ticks*DefaultInterval > work || work >= (st.ticks+1)*DefaultInterval+int64(forms[i].lag()-1) {
				t.Errorf("%s%v %s: %d ticks inconsistent with work %d", c.fn, c.args, forms[i].name, st.ticks, work)
			}
			if c.iters >= 1_000_000 && st.ticks < c.iters/DefaultInterval-1 {
				t.Errorf("%s%v %s: %d ticks for %d iterations", c.fn, c.args, forms[i].name, st.ticks, c.iters)
			}
		}
		for i := range works {
			if works[i] != works[0] {
				t.Errorf("%s%v: work %s %d != %s %d", c.fn, c.args, forms[i].name, works[i], forms[0].name, works[0])
			}
		}
		t.Logf("%s%v = %v: work %d", c.fn, c.args, want, works[0])
	}
	origMem, _ := orig.mod.Memory().Read(0, orig.mod.Memory().Size())
	for i, in := range variants {
		mem, _ := in.mod.Memory().Read(0, in.mod.Memory().Size())
		if !bytes.Equal(mem, origMem) {
			t.Errorf("%s: linear memory differs from the original's after the same calls (%d vs %d bytes)", forms[i].name, len(mem), len(origMem))
		}
	}
}

// TestGoGuestNames: the name section survives renumbering, so wazero's
// function names (and stack traces) stay right.
func TestGoGuestNames(t *testing.T) {
	wasm := goGuest(t)
	ctx := context.Background()
	rt := newRuntime(t, compiler, false)
	orig, err := rt.CompileModule(ctx, wasm)
	if err != nil {
		t.Fatal(err)
	}
	inst, err := rt.CompileModule(ctx, mustInstrument(t, wasm, production))
	if err != nil {
		t.Fatal(err)
	}
	for name, def := range orig.ExportedFunctions() {
		got := inst.ExportedFunctions()[name]
		if got.Name() != def.Name() || got.Index() != def.Index()+1 || got.Name() == "" {
			t.Errorf("export %s: name %q index %d, original %q index %d", name, got.Name(), got.Index(), def.Name(), def.Index())
		}
	}
	// Go names its c-shared entry point in the name section only.
	if got := inst.ExportedFunctions()["_initialize"].Name(); got != "_rt0_wasm_wasip1_lib" {
		t.Errorf("_initialize is named %q, want _rt0_wasm_wasip1_lib", got)
	}
}

// spinCase is a guest call that never returns on its own.
type spinCase struct {
	name string
	wasm func(testing.TB) []byte
	fn   string
	args []uint64
}

var spinCases = []spinCase{
	{"loop-br", func(testing.TB) []byte { return modSpinBr() }, "spin", nil},
	{"loop-br_table", func(testing.TB) []byte { return modSpinBrTable() }, "spin", nil},
	{"recursion", func(testing.TB) []byte { return modRecursion() }, "tree", []uint64{62}},
	{"tail-recursion", func(testing.TB) []byte { return modRecursion() }, "tail", []uint64{0}},
	{"go-for", goGuest, "spin", nil},
}

// TestPreemption: a tick that panics past the deadline stops every kind of
// endless guest shortly after the deadline.
func TestPreemption(t *testing.T) {
	ctx := context.Background()
	rt := newRuntime(t, compiler, false)
	const deadline = 20 * time.Millisecond
	for _, c := range spinCases {
		for _, p := range forms {
			// Never reuse an aborted instance: a fresh one per call.
			in := instantiate(t, rt, mustInstrument(t, c.wasm(t), p))
			var overs []time.Duration
			for range 3 {
				st := &callState{deadline: time.Now().Add(deadline)}
				done := make(chan error, 1)
				go func() {
					_, _, err := in.call(ctx, st, c.fn, c.args...)
					done <- err
				}()
				var err error
				select {
				case err = <-done:
				case <-time.After(5 * time.Second):
					// The guest keeps spinning on its goroutine; the test
					// binary ends with the failure anyway.
					t.Fatalf("%s/%s: still running 5 s after a %v deadline", c.name, p.name, deadline)
				}
				overs = append(overs, time.Since(st.deadline))
				if err == nil || !strings.Contains(err.Error(), errDeadline.Error()) {
					t.Fatalf("%s/%s: error %v, want the deadline panic", c.name, p.name, err)
				}
				if c.name == "go-for" {
					break // a Go guest aborted mid-call must not be called again
				}
			}
			sort.Slice(overs, func(i, j int) bool { return overs[i] < overs[j] })
			// The mechanism stops the guest within one Interval (tens of
			// µs); the bound is generous because the measured time also
			// includes OS scheduling on a shared, loaded machine.
			if med := overs[len(overs)/2]; med > 20*time.Millisecond {
				t.Errorf("%s/%s: stopped %v after the deadline, want a few ms at most", c.name, p.name, overs)
			}
			t.Logf("%s/%s: stopped %v after the %v deadline", c.name, p.name, overs, deadline)
		}
	}
}

// TestGCNotHeldUp: while a guest spins, the host's garbage collections are
// not held up (without instrumentation every stop-the-world would wait for
// the whole call). It reports the runtime.GC() durations and, from
// runtime/metrics, how long stop-the-worlds waited for goroutines to stop.
func TestGCNotHeldUp(t *testing.T) {
	ctx := context.Background()
	rt := newRuntime(t, compiler, false)
	gcs := func(d time.Duration) (durs []time.Duration, stopping []float64) {
		before := stoppingHist()
		end := time.Now().Add(d)
		for time.Now().Before(end) {
			t0 := time.Now()
			runtime.GC()
			durs = append(durs, time.Since(t0))
			time.Sleep(time.Millisecond)
		}
		return durs, histDelta(before, stoppingHist())
	}
	report := func(what string, durs []time.Duration, stopping []float64) time.Duration {
		sort.Slice(durs, func(i, j int) bool { return durs[i] < durs[j] })
		p99 := durs[len(durs)*99/100]
		t.Logf("%s: %d runtime.GC(): p50 %v p99 %v max %v; STW stopping p50 %s p99 %s max %s", what, len(durs),
			durs[len(durs)/2], p99, durs[len(durs)-1], quantile(stopping, 0.5), quantile(stopping, 0.99), quantile(stopping, 1))
		return p99
	}
	durs, stopping := gcs(300 * time.Millisecond)
	report("idle baseline", durs, stopping)
	for _, c := range []spinCase{spinCases[0], spinCases[len(spinCases)-1]} {
		in := instantiate(t, rt, mustInstrument(t, c.wasm(t), production))
		st := &callState{deadline: time.Now().Add(400 * time.Millisecond)}
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			in.call(ctx, st, c.fn, c.args...)
		}()
		time.Sleep(20 * time.Millisecond) // let the guest start spinning
		durs, stopping := gcs(time.Until(st.deadline) - 30*time.Millisecond)
		wg.Wait()
		// Without instrumentation each runtime.GC() would wait for the
		// whole 400 ms call. The bounds are generous: the GC's own
		// concurrent work competes for the machine's 2 cores.
		p99 := report(c.name+" spinning", durs, stopping)
		p50 := durs[len(durs)/2]
		if len(durs) < 5 || p50 > 50*time.Millisecond || p99 > 100*time.Millisecond {
			t.Errorf("%s: %d GCs in 350 ms, p50 %v p99 %v: GC held up by the guest", c.name, len(durs), p50, p99)
		}
		if len(stopping) > 0 && stopping[len(stopping)*99/100] > 0.05 {
			t.Errorf("%s: stop-the-world waited %s (p99) for goroutines to stop", c.name, quantile(stopping, 0.99))
		}
	}
}

const stoppingMetric = "/sched/pauses/stopping/gc:seconds"

func stoppingHist() *metrics.Float64Histogram {
	s := []metrics.Sample{{Name: stoppingMetric}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindFloat64Histogram {
		return nil
	}
	return s[0].Value.Float64Histogram()
}

// histDelta returns one value (the bucket's upper bound) per event recorded
// between two reads of a histogram.
func histDelta(a, b *metrics.Float64Histogram) []float64 {
	if a == nil || b == nil {
		return nil
	}
	var vals []float64
	for i := range b.Counts {
		for n := b.Counts[i] - a.Counts[i]; n > 0; n-- {
			vals = append(vals, b.Buckets[i+1])
		}
	}
	return vals
}

func quantile(sorted []float64, q float64) string {
	if len(sorted) == 0 {
		return "n/a"
	}
	i := int(q * float64(len(sorted)-1))
	return time.Duration(sorted[i] * float64(time.Second)).String()
}

// TestGoGuestMetering: work units grow linearly with loop iterations.
func TestGoGuestMetering(t *testing.T) {
	ctx := context.Background()
	rt := newRuntime(t, compiler, false)
	in := instantiate(t, rt, mustInstrument(t, goGuest(t), production))
	for _, fn := range []string{"sumloop", "xorshift"} {
		work := func(n int64) int64 {
			_, w, err := in.call(ctx, &callState{}, fn, uint64(n))
			if err != nil {
				t.Fatal(err)
			}
			return w
		}
		base := work(100_000)
		slope := work(200_000) - base // per 100k iterations
		if slope < 100_000 {
			t.Fatalf("%s: %d work units per 100k iterations, want >= 100k", fn, slope)
		}
		for _, k := range []int64{4, 16, 64} {
			got := work(k * 100_000)
			want := base + (k-1)*slope
			if d := got - want; d < -want/1000 || d > want/1000 {
				t.Errorf("%s(%d00k): work %d, linear prediction %d", fn, k, got, want)
			}
		}
		t.Logf("%s: %.3f work units per iteration", fn, float64(slope)/100_000)
	}
}
