package runtime

import (
	"context"
	"fmt"
	"os"
	goruntime "runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/abi"
	"github.com/plinth-dev/plinth/sdk/sdktest"
)

// routeInput is a ~200-byte route hook input: a request with a few typical headers.
func routeInput() []byte {
	r := abi.Request{ID: "req_0123456789", Method: "POST", Path: "/echo", Tenant: "acme", KeyID: "key-1",
		KeyLabel: "pro", ClientIP: "203.0.113.7", Headers: []abi.Pair{
			{Key: "host", Value: "api.example.com"}, {Key: "user-agent", Value: "openai-go/3.9 (linux; amd64)"},
			{Key: "content-type", Value: "application/json"}, {Key: "accept", Value: "application/json"},
			{Key: "x-request-source", Value: "benchmark"}}}
	return r.AppendTo(nil)
}

// BenchmarkRouteHook is one route-hook call through the pool (~200 B in, ~50 B out) under each
// preemption mode.
func BenchmarkRouteHook(b *testing.B) {
	in := routeInput()
	for _, pre := range []Preemption{PreemptInstrument, PreemptCloseOnDone, PreemptNone} {
		b.Run(pre.String(), func(b *testing.B) {
			e := newEngine(b, Config{Preemption: pre})
			p := newPool(b, e, echoWasm(b), PoolConfig{Hooks: abi.HookSet(0).With(abi.HookRoute)})
			h := sdktest.New()
			ctx := context.Background()
			out, err := p.Call(ctx, abi.HookRoute, in, h, nil)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if out, err = p.Call(ctx, abi.HookRoute, in, h, out); err != nil {
					b.Fatal(err)
				}
			}
			// After the loop: b.Loop's first call resets the timer, which drops metrics reported before.
			b.ReportMetric(float64(len(in)), "bytes-in")
			b.ReportMetric(float64(len(out)), "bytes-out")
		})
	}
}

// BenchmarkColdStart measures what loading a plugin costs: compiling without and with a warm file
// cache (a restart), creating one instance, and the memory an idle instance holds.
func BenchmarkColdStart(b *testing.B) {
	wasm := echoWasm(b)
	ctx := context.Background()
	b.Run("compile-cold", func(b *testing.B) {
		for b.Loop() {
			e := newEngine(b, Config{CacheDir: b.TempDir()})
			m, err := e.Compile(ctx, wasm, CompileOptions{})
			if err != nil {
				b.Fatal(err)
			}
			m.Release()
			e.Close(ctx)
		}
	})
	b.Run("compile-warm-cache", func(b *testing.B) {
		dir := b.TempDir()
		e := newEngine(b, Config{CacheDir: dir})
		m, err := e.Compile(ctx, wasm, CompileOptions{})
		if err != nil {
			b.Fatal(err)
		}
		m.Release()
		e.Close(ctx)
		for b.Loop() {
			e := newEngine(b, Config{CacheDir: dir})
			m, err := e.Compile(ctx, wasm, CompileOptions{})
			if err != nil {
				b.Fatal(err)
			}
			m.Release()
			e.Close(ctx)
		}
	})
	b.Run("instantiate", func(b *testing.B) {
		e := newEngine(b, Config{})
		p := newPool(b, e, wasm, PoolConfig{Hooks: abi.HookSet(0).With(abi.HookRoute), MaxInstances: 1})
		for b.Loop() {
			inst, err := p.newInstance(ctx, sdktest.New())
			if err != nil {
				b.Fatal(err)
			}
			p.discard(inst)
		}
	})
	b.Run("idle-instance-memory", func(b *testing.B) {
		// Linear memory is mmap-backed, outside Go's heap: the resident set shows what it really takes.
		e := newEngine(b, Config{})
		p := newPool(b, e, wasm, PoolConfig{Hooks: abi.HookSet(0).With(abi.HookRoute), MaxInstances: 16})
		var before, after goruntime.MemStats
		goruntime.GC()
		goruntime.ReadMemStats(&before)
		rssBefore := residentBytes()
		if err := p.Warm(ctx, 16); err != nil {
			b.Fatal(err)
		}
		goruntime.GC()
		goruntime.ReadMemStats(&after)
		rssAfter := residentBytes()
		for b.Loop() {
			time.Sleep(time.Microsecond)
		}
		b.ReportMetric(float64(e.MemoryUsed())/16/(1<<20), "MiB-linear/instance")
		b.ReportMetric(float64(int64(after.HeapAlloc)-int64(before.HeapAlloc))/16/(1<<20), "MiB-goheap/instance")
		if rssBefore > 0 {
			b.ReportMetric(float64(rssAfter-rssBefore)/16/(1<<20), "MiB-rss/instance")
		}
	})
}

// residentBytes is the process's resident set size from /proc (0 where there is none).
func residentBytes() int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseInt(f[1], 10, 64)
	return pages * int64(os.Getpagesize())
}

// TestColdStartReport prints the first-request latency of a plugin with and without a warm compilation
// cache when PLINTH_REPORT is set (a measurement aid for docs, not an assertion).
func TestColdStartReport(t *testing.T) {
	if os.Getenv("PLINTH_REPORT") == "" {
		t.Skip("set PLINTH_REPORT=1 to print cold-start timings")
	}
	wasm := echoWasm(t)
	dir := t.TempDir()
	for _, label := range []string{"empty cache", "warm cache"} {
		start := time.Now()
		e := newEngine(t, Config{CacheDir: dir})
		m, err := e.Compile(context.Background(), wasm, CompileOptions{})
		if err != nil {
			t.Fatal(err)
		}
		p, err := e.NewPool(PoolConfig{Name: "x", Module: m, Hooks: abi.HookSet(0).With(abi.HookRoute)})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.Call(context.Background(), abi.HookRoute, routeInput(), sdktest.New(), nil); err != nil {
			t.Fatal(err)
		}
		fmt.Printf("load to first served call, %s: %v\n", label, time.Since(start))
		p.Close()
		m.Release()
		e.Close(context.Background())
	}
}

// BenchmarkDeadlineOvershoot measures how long after its deadline a call of a guest in an endless loop
// returns to the caller, under each protection: the time to notice (one tick interval) plus unwinding.
// Each op is one call with a 2 ms deadline on a warm instance; the instance is discarded after it.
func BenchmarkDeadlineOvershoot(b *testing.B) {
	const deadline = 2 * time.Millisecond
	for _, pre := range []Preemption{PreemptInstrument, PreemptCloseOnDone} {
		b.Run(pre.String(), func(b *testing.B) {
			e := newEngine(b, Config{Preemption: pre})
			p := newPool(b, e, hostileWasm(b), PoolConfig{Hooks: abi.HookSet(0).With(abi.HookRoute), Deadline: deadline})
			in := routeReq("/loop")
			var overs []time.Duration
			for b.Loop() {
				b.StopTimer()
				if err := p.Warm(context.Background(), 1); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				start := time.Now()
				if _, err := p.Call(context.Background(), abi.HookRoute, in, sdktest.New(), nil); err == nil {
					b.Fatal("the endless loop returned")
				}
				overs = append(overs, time.Since(start)-deadline)
			}
			slices.Sort(overs)
			us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
			b.ReportMetric(us(overs[len(overs)/2]), "over-p50-µs")
			b.ReportMetric(us(overs[len(overs)*99/100]), "over-p99-µs")
			b.ReportMetric(us(overs[len(overs)-1]), "over-max-µs")
		})
	}
}
