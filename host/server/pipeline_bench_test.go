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
func BenchmarkPipeline(b *testing.B) {
	ts := benchServer(b)
	for _, c := range []struct{ name, path string }{{"bare", "/healthz"}, {"hooks", "/v1/models"}} {
		b.Run(c.name, func(b *testing.B) {
			var ctx fasthttp.RequestCtx
			ctx.Init(&fasthttp.Request{}, nil, nil)
			ctx.Request.SetRequestURI(c.path)
			ctx.Request.Header.Set("Authorization", "Bearer "+keyA)
			ctx.Request.Header.Set("User-Agent", "bench")
			ts.handle(&ctx)
			if ctx.Response.StatusCode() != 200 {
				b.Fatalf("%s: %d %s", c.path, ctx.Response.StatusCode(), ctx.Response.Body())
			}
			b.ReportAllocs()
			router, rl := ts.metrics.plugin("bench", "router"), ts.metrics.plugin("bench", "ratelimit")
			u0, u1, n0 := router.WorkUnits.Load(), rl.WorkUnits.Load(), router.Calls.Load()
			for b.Loop() {
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
