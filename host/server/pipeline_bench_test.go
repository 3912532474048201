package server

import (
	"context"
	"testing"

	"github.com/valyala/fasthttp"

	"github.com/plinth-dev/plinth/abi"
	"github.com/plinth-dev/plinth/host/tenant"
)

// benchServer serves the pipeline with the first-party router and ratelimit plugins built from source.
func benchServer(b *testing.B) *testServer {
	ts := startServer(b, Options{})
	t := &tenant.Tenant{ID: "bench", Plugins: map[string]*tenant.Plugin{
		"router": plugin(b, ts, "router", "../../plugins/router", `{"routes":[{"path":"/v1/{rest...}","default":true}]}`),
		"ratelimit": plugin(b, ts, "ratelimit", "../../plugins/ratelimit",
			`{"tiers":{"default":{"requests":{"limit":1000000000,"period":"1m"}}}}`),
	}, Bindings: map[abi.Hook]string{abi.HookRoute: "router", abi.HookRateLimit: "ratelimit"}}
	snap, err := tenant.NewSnapshot([]*tenant.Tenant{t}, []*tenant.Key{{ID: "k", Tenant: "bench", Hash: tenant.HashKey([]byte(keyA))}})
	if err != nil {
		b.Fatal(err)
	}
	ts.Apply(context.Background(), snap)
	return ts
}

// BenchmarkPipeline runs requests through the handler in-process (no network): bare /healthz and
// GET /v1/models through authenticate → route → ratelimit → built-in.
//
// The cold variants evict the CPU caches (by writing an 8 MiB buffer) before every request, as a real
// server's caches are when the kernel's network stack and other work run between requests; cold/evict
// is the eviction alone, to subtract. On the 2-core development machine the hooks path cost ~10 µs hot
// and 20-27 µs cold, three quarters of it in guest code: this, not the loop protection, is what bounds
// make bench's hooks/bare ratio.
func BenchmarkPipeline(b *testing.B) {
	ts := benchServer(b)
	cases := []struct {
		name, path string
		cold       bool
	}{{"bare", "/healthz", false}, {"hooks", "/v1/models", false},
		{"cold/evict", "", true}, {"cold/bare", "/healthz", true}, {"cold/hooks", "/v1/models", true}}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			var ctx fasthttp.RequestCtx
			ctx.Init(&fasthttp.Request{}, nil, nil)
			ctx.Request.SetRequestURI(c.path)
			ctx.Request.Header.Set("Authorization", "Bearer "+keyA)
			ctx.Request.Header.Set("User-Agent", "bench")
			if c.path == "" {
				for b.Loop() {
					evictCaches()
				}
				return
			}
			ts.handle(&ctx)
			if ctx.Response.StatusCode() != 200 {
				b.Fatalf("%s: %d %s", c.path, ctx.Response.StatusCode(), ctx.Response.Body())
			}
			b.ReportAllocs()
			router, rl := ts.metrics.plugin("bench", "router"), ts.metrics.plugin("bench", "ratelimit")
			u0, u1, n0 := router.WorkUnits.Load(), rl.WorkUnits.Load(), router.Calls.Load()
			for b.Loop() {
				if c.cold {
					evictCaches()
				}
				ctx.Response.Reset()
				ts.handle(&ctx)
			}
			if n := router.Calls.Load() - n0; n > 0 {
				b.ReportMetric(float64(router.WorkUnits.Load()-u0)/float64(n), "route-units/op")
				b.ReportMetric(float64(rl.WorkUnits.Load()-u1)/float64(n), "ratelimit-units/op")
			}
		})
	}
}

// evictBuf is larger than the caches of the machines we measure on.
var evictBuf = make([]byte, 8<<20)

// evictCaches writes a byte of every cache line of evictBuf, pushing everything else out of the caches.
func evictCaches() {
	for i := 0; i < len(evictBuf); i += 64 {
		evictBuf[i]++
	}
}
