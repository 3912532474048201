package runtime

import (
	"context"
	"errors"
	"io"
	"log/slog"
	goruntime "runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/abi"
	"github.com/plinth-dev/plinth/runtime/wasmbuild"
	"github.com/plinth-dev/plinth/sdk/sdktest"
)

func echoWasm(t testing.TB) []byte    { return wasmbuild.ForTest(t, "../testdata/guests/echo") }
func hostileWasm(t testing.TB) []byte { return wasmbuild.ForTest(t, "../testdata/guests/hostile") }

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func newEngine(t testing.TB, cfg Config) *Engine {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = quietLogger()
	}
	e, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close(context.Background()) })
	return e
}

func newPool(t testing.TB, e *Engine, wasm []byte, cfg PoolConfig) *Pool {
	t.Helper()
	m, err := e.Compile(context.Background(), wasm, CompileOptions{MemoryLimit: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Release()
	cfg.Module = m
	if cfg.Name == "" {
		cfg.Name = "tenant/plugin@1"
	}
	p, err := e.NewPool(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

var preemptions = []Preemption{PreemptInstrument, PreemptCloseOnDone}

func routeReq(path string) []byte {
	r := abi.Request{Method: "GET", Path: path, Tenant: "acme", KeyID: "k1", KeyLabel: "pro",
		Headers: []abi.Pair{{Key: "user-agent", Value: "test"}}}
	return r.AppendTo(nil)
}

func TestCallRoundTrip(t *testing.T) {
	for _, pre := range preemptions {
		t.Run(pre.String(), func(t *testing.T) {
			e := newEngine(t, Config{Preemption: pre})
			p := newPool(t, e, echoWasm(t), PoolConfig{Hooks: abi.HookSet(0).With(abi.HookRoute)})
			out, err := p.Call(context.Background(), abi.HookRoute, routeReq("/echo"), sdktest.New(), nil)
			if err != nil {
				t.Fatal(err)
			}
			var d abi.RouteDecision
			if err := d.Decode(out); err != nil {
				t.Fatal(err)
			}
			if d.Action != abi.RouteRespond || string(d.Response.Body) != "GET /echo key=k1 tier=pro" {
				t.Fatalf("decision %+v, body %q", d, d.Response.Body)
			}
			if pre == PreemptInstrument && p.Stats().WorkUnits.Load() == 0 {
				t.Fatal("instrumented call metered no work units")
			}
		})
	}
}

func TestHostCallsReachTheCallsHost(t *testing.T) {
	e := newEngine(t, Config{})
	hooks := abi.HookSet(0).With(abi.HookRateLimit).With(abi.HookHandle).With(abi.HookRoute)
	p := newPool(t, e, echoWasm(t), PoolConfig{Hooks: hooks})
	h := sdktest.New()
	h.SetConfig([]byte(`{"a":1}`))
	ctx := context.Background()

	// config: the route hook answers /config with the plugin's configuration.
	out, err := p.Call(ctx, abi.HookRoute, routeReq("/config"), h, nil)
	if err != nil {
		t.Fatal(err)
	}
	var d abi.RouteDecision
	if err := d.Decode(out); err != nil || string(d.Response.Body) != `{"a":1}` {
		t.Fatalf("config through the host: %q, %v", d.Response.Body, err)
	}
	// rl_take: three allowed, the fourth denied with a retry-after, on the host's GCRA state.
	for i := 0; i < 4; i++ {
		out, err := p.Call(ctx, abi.HookRateLimit, routeReq("/x"), h, nil)
		if err != nil {
			t.Fatal(err)
		}
		var rl abi.RateLimitDecision
		if err := rl.Decode(out); err != nil {
			t.Fatal(err)
		}
		if rl.Deny != (i == 3) {
			t.Fatalf("take %d: deny=%v", i, rl.Deny)
		}
		if i == 3 && (rl.RetryAfterMs != 20000 || rl.Policies[0].Remaining != 0) {
			t.Fatalf("denial %+v, want retry after 20s (one emission interval of 3/min)", rl)
		}
	}
	// kv_incr: state lives in the host, so it survives instances.
	req := abi.Request{Method: "POST", Path: "/handled", Body: []byte("ping")}
	for i := 1; i <= 2; i++ {
		out, err := p.Call(ctx, abi.HookHandle, req.AppendTo(nil), h, nil)
		if err != nil {
			t.Fatal(err)
		}
		var r abi.Response
		if err := r.Decode(out); err != nil {
			t.Fatal(err)
		}
		if string(r.Body) != "ping" || r.Headers[0].Value != string(rune('0'+i)) {
			t.Fatalf("handle %d: %+v", i, r)
		}
	}
	if got := string(h.KVData()["calls"]); got != "2" {
		t.Fatalf("kv calls = %q, want 2", got)
	}
}

func TestValidationRefusesForbiddenImports(t *testing.T) {
	e := newEngine(t, Config{})
	_, err := e.Compile(context.Background(), wasmbuild.ForTest(t, "../testdata/guests/forbidden"), CompileOptions{})
	if !IsValidation(err) || !strings.Contains(err.Error(), "env.open_socket") {
		t.Fatalf("err = %v, want a validation error naming env.open_socket", err)
	}
	_, err = e.Compile(context.Background(), []byte("\x00asm\x01\x00\x00\x00garbage"), CompileOptions{})
	if !IsValidation(err) {
		t.Fatalf("garbage: err = %v, want a validation error", err)
	}
}

func TestPoolRefusesHookTheModuleDoesNotRegister(t *testing.T) {
	e := newEngine(t, Config{})
	// hostile exports every hook (the SDK does) but registers no ratelimit handler.
	p := newPool(t, e, hostileWasm(t), PoolConfig{Hooks: abi.HookSet(0).With(abi.HookRateLimit)})
	_, err := p.Call(context.Background(), abi.HookRateLimit, routeReq("/"), sdktest.New(), nil)
	var ce *CallError
	if !errors.As(err, &ce) || ce.Kind != KindInit || !strings.Contains(err.Error(), "sdk.OnRateLimit") {
		t.Fatalf("err = %v, want an init error telling to call sdk.OnRateLimit", err)
	}
}

// TestHostileGuests checks that each kind of misbehaviour fails only its own call, with an error that
// names the plugin and says what happened, and that the pool serves the next call normally.
func TestHostileGuests(t *testing.T) {
	cases := []struct {
		path string
		kind Kind
		text string
	}{
		{"/loop", KindTimeout, "deadline exceeded"},
		{"/bomb", KindTrap, "out of memory"},
		{"/recurse", KindTrap, "out of memory"},
		{"/crash", KindTrap, "hostile plugin crashed on purpose"},
		{"/huge", KindInvalid, "exceeds"},
	}
	for _, pre := range preemptions {
		t.Run(pre.String(), func(t *testing.T) {
			e := newEngine(t, Config{Preemption: pre})
			for _, c := range cases {
				// Memory exhaustion takes the Go runtime a while (GC near GOMEMLIMIT, stack doubling), so
				// only the loop gets a short deadline.
				deadline := 10 * time.Second
				if c.kind == KindTimeout {
					deadline = 200 * time.Millisecond
				}
				p := newPool(t, e, hostileWasm(t), PoolConfig{Name: "evil/hostile@1",
					Hooks: abi.HookSet(0).With(abi.HookRoute), Deadline: deadline, MaxResult: 1 << 20})
				start := time.Now()
				_, err := p.Call(context.Background(), abi.HookRoute, routeReq(c.path), sdktest.New(), nil)
				elapsed := time.Since(start)
				var ce *CallError
				if !errors.As(err, &ce) || ce.Kind != c.kind || !strings.Contains(err.Error(), "evil/hostile@1") ||
					!strings.Contains(err.Error(), c.text) {
					t.Fatalf("%s: err = %v, want kind %v mentioning the plugin and %q", c.path, err, c.kind, c.text)
				}
				if c.kind == KindTimeout && elapsed > time.Second {
					t.Fatalf("%s: stopped after %v with a 200ms deadline", c.path, elapsed)
				}
				// The next call gets a fresh instance and works.
				out, err := p.Call(context.Background(), abi.HookRoute, routeReq("/fine"), sdktest.New(), nil)
				var d abi.RouteDecision
				if err != nil || d.Decode(out) != nil || d.Action != abi.RouteDefault {
					t.Fatalf("call after %s: %v %+v", c.path, err, d)
				}
			}
			// A panic in the handler is recovered by the SDK: a handler error, not a trap.
			p := newPool(t, e, hostileWasm(t), PoolConfig{Hooks: abi.HookSet(0).With(abi.HookRoute)})
			out, err := p.Call(context.Background(), abi.HookRoute, routeReq("/panic"), sdktest.New(), nil)
			var d abi.RouteDecision
			if err != nil || d.Decode(out) != nil || !strings.Contains(d.Error, "panicked on purpose") {
				t.Fatalf("/panic: err=%v decision=%+v", err, d)
			}
		})
	}
}

// TestLoopingGuestDoesNotStallGC runs an endless guest loop and checks that a full garbage collection in
// another goroutine completes long before the guest's deadline; without protection it would wait for it.
func TestLoopingGuestDoesNotStallGC(t *testing.T) {
	for _, pre := range preemptions {
		t.Run(pre.String(), func(t *testing.T) {
			e := newEngine(t, Config{Preemption: pre})
			p := newPool(t, e, hostileWasm(t), PoolConfig{Hooks: abi.HookSet(0).With(abi.HookRoute), Deadline: 2 * time.Second})
			if err := p.Warm(context.Background(), 1); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() {
				_, err := p.Call(context.Background(), abi.HookRoute, routeReq("/loop"), sdktest.New(), nil)
				done <- err
			}()
			time.Sleep(100 * time.Millisecond) // let the guest start spinning
			var worst time.Duration
			for i := 0; i < 5; i++ {
				start := time.Now()
				goruntime.GC()
				worst = max(worst, time.Since(start))
			}
			if worst > 500*time.Millisecond {
				t.Fatalf("runtime.GC took %v while a guest looped", worst)
			}
			if err := <-done; err == nil {
				t.Fatal("endless loop returned without error")
			}
		})
	}
}

func TestCallerCancellationStopsGuest(t *testing.T) {
	for _, pre := range preemptions {
		t.Run(pre.String(), func(t *testing.T) {
			e := newEngine(t, Config{Preemption: pre})
			hooks := abi.HookSet(0).With(abi.HookRoute)
			p := newPool(t, e, hostileWasm(t), PoolConfig{Hooks: hooks, Deadline: 10 * time.Second})
			if err := p.Warm(context.Background(), 1); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(50*time.Millisecond, cancel)
			start := time.Now()
			_, err := p.Call(ctx, abi.HookRoute, routeReq("/loop"), sdktest.New(), nil)
			var ce *CallError
			if !errors.As(err, &ce) || ce.Kind != KindTimeout || time.Since(start) > time.Second {
				t.Fatalf("err=%v after %v, want a timeout soon after cancellation", err, time.Since(start))
			}
		})
	}
}

// foreignCtx is a cancellable context of a type the context package does not know, like
// *fasthttp.RequestCtx: contexts derived from it are watched from a goroutine.
type foreignCtx struct {
	context.Context
	done chan struct{}
}

func (c foreignCtx) Done() <-chan struct{} { return c.done }

// TestCancellableCallerContextManyCalls runs short calls under a caller context that can be cancelled
// but is not: whatever watches that context for the call must stop with the call, and never touch the
// instance's reused call state afterwards (close-on-done once crashed the process that way).
func TestCancellableCallerContextManyCalls(t *testing.T) {
	for _, pre := range preemptions {
		t.Run(pre.String(), func(t *testing.T) {
			e := newEngine(t, Config{Preemption: pre})
			p := newPool(t, e, echoWasm(t), PoolConfig{Hooks: abi.HookSet(0).With(abi.HookRoute)})
			ctx := foreignCtx{context.Background(), make(chan struct{})}
			base := goruntime.NumGoroutine()
			var wg sync.WaitGroup
			for w := 0; w < 4; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; i < 500; i++ {
						if _, err := p.Call(ctx, abi.HookRoute, routeReq("/echo"), sdktest.New(), nil); err != nil {
							t.Error(err)
							return
						}
						goruntime.Gosched()
					}
				}()
			}
			wg.Wait()
			deadline := time.Now().Add(5 * time.Second)
			for goruntime.NumGoroutine() > base+2 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if n := goruntime.NumGoroutine(); n > base+2 {
				t.Fatalf("%d goroutines after the calls, %d before", n, base)
			}
		})
	}
}

func TestCallBudget(t *testing.T) {
	e := newEngine(t, Config{})
	p := newPool(t, e, hostileWasm(t), PoolConfig{Hooks: abi.HookSet(0).With(abi.HookRoute), CallBudget: 1 << 22})
	_, err := p.Call(context.Background(), abi.HookRoute, routeReq("/loop"), sdktest.New(), nil)
	var ce *CallError
	if !errors.As(err, &ce) || ce.Kind != KindBudget || !strings.Contains(err.Error(), "CPU budget") {
		t.Fatalf("err = %v, want a CPU budget error", err)
	}
	if p.Stats().Budget.Load() != 1 {
		t.Fatalf("budget counter %d", p.Stats().Budget.Load())
	}
}

type meterFunc func(int64) error

func (f meterFunc) Charge(n int64) error { return f(n) }

func TestMeterCanStopACall(t *testing.T) {
	e := newEngine(t, Config{})
	var mu sync.Mutex
	var charged int64
	m := meterFunc(func(n int64) error {
		mu.Lock()
		defer mu.Unlock()
		charged += n
		if charged > 1<<24 {
			return errors.New("tenant budget for this minute is spent")
		}
		return nil
	})
	p := newPool(t, e, hostileWasm(t), PoolConfig{Hooks: abi.HookSet(0).With(abi.HookRoute), Meter: m})
	_, err := p.Call(context.Background(), abi.HookRoute, routeReq("/loop"), sdktest.New(), nil)
	if err == nil || !strings.Contains(err.Error(), "tenant budget for this minute is spent") {
		t.Fatalf("err = %v", err)
	}
}

func TestPoolCapAndIdleEviction(t *testing.T) {
	e := newEngine(t, Config{})
	p := newPool(t, e, echoWasm(t), PoolConfig{Hooks: abi.HookSet(0).With(abi.HookRoute), MaxInstances: 2})
	var wg sync.WaitGroup
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := p.Call(context.Background(), abi.HookRoute, routeReq("/echo"), sdktest.New(), nil); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if n := p.Stats().Created.Load(); n > 2 {
		t.Fatalf("created %d instances with MaxInstances 2", n)
	}
	if e.MemoryUsed() <= 0 {
		t.Fatal("no memory accounted for live instances")
	}
	if n := p.evictIdle(mono()+time.Second, false); n == 0 {
		t.Fatal("nothing evicted")
	}
	if e.MemoryUsed() != 0 || p.Stats().Instances.Load() != 0 {
		t.Fatalf("after eviction: memory %d, instances %d", e.MemoryUsed(), p.Stats().Instances.Load())
	}
}

func TestMemoryBudgetEvictsOtherPools(t *testing.T) {
	e := newEngine(t, Config{})
	cfg := PoolConfig{Hooks: abi.HookSet(0).With(abi.HookRoute)}
	a := newPool(t, e, echoWasm(t), cfg)
	if err := a.Warm(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	per := e.MemoryUsed()
	// A budget that fits one instance: a call on pool b must evict a's idle one.
	e.cfg.MemoryBudget = per + per/2
	b := newPool(t, e, echoWasm(t), cfg)
	if _, err := b.Call(context.Background(), abi.HookRoute, routeReq("/echo"), sdktest.New(), nil); err != nil {
		t.Fatal(err)
	}
	if a.Stats().Evicted.Load() != 1 {
		t.Fatalf("pool a evicted %d instances, want 1", a.Stats().Evicted.Load())
	}
}

func TestCompileIsCachedByHash(t *testing.T) {
	e := newEngine(t, Config{CacheDir: t.TempDir()})
	w := echoWasm(t)
	m1, err := e.Compile(context.Background(), w, CompileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m2, err := e.Compile(context.Background(), w, CompileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if m1 != m2 || m1.Hash != ModuleHash(w) {
		t.Fatal("same bytes compiled twice")
	}
	m1.Release()
	m2.Release()
}

// TestBlockedHostCallsDoNotCountAgainstTheDeadline: the deadline bounds the plugin's own running time;
// time it spends waiting in a host call that does I/O (here a slow search) is not counted.
func TestBlockedHostCallsDoNotCountAgainstTheDeadline(t *testing.T) {
	e := newEngine(t, Config{})
	p := newPool(t, e, echoWasm(t), PoolConfig{Hooks: abi.HookSet(0).With(abi.HookRoute), Deadline: 100 * time.Millisecond})
	h := sdktest.New()
	h.OnSearch(func(*abi.SearchRequest) ([]abi.SearchHit, error) {
		time.Sleep(300 * time.Millisecond)
		return []abi.SearchHit{{Text: "a"}, {Text: "b"}}, nil
	})
	r := abi.Request{Method: "GET", Path: "/search", Query: "q"}
	out, err := p.Call(context.Background(), abi.HookRoute, r.AppendTo(nil), h, nil)
	var d abi.RouteDecision
	if err != nil || d.Decode(out) != nil || string(d.Response.Body) != "2" {
		t.Fatalf("a call blocked 300ms in search with a 100ms deadline: %v %+v", err, d)
	}
}
