package server

import (
	"context"
	"strings"
	"testing"

	"github.com/plinth-dev/plinth/abi"
	"github.com/plinth-dev/plinth/host/tenant"
)

// TestTenantCPUBudgets checks the per-call and per-minute CPU budgets of a tenant, and the CPU metrics.
func TestTenantCPUBudgets(t *testing.T) {
	ts := startServer(t, Options{})
	mk := func(id string, l tenant.Limits) *tenant.Tenant {
		return &tenant.Tenant{ID: id, Limits: l, Plugins: map[string]*tenant.Plugin{
			"hostile": plugin(t, ts, "hostile", "../../testdata/guests/hostile", ""),
		}, Bindings: map[abi.Hook]string{abi.HookRoute: "hostile"}}
	}
	snap, err := tenant.NewSnapshot([]*tenant.Tenant{
		mk("percall", tenant.Limits{CPUPerCall: 1 << 24}),
		mk("perminute", tenant.Limits{CPUPerMinute: 1 << 26}),
	}, []*tenant.Key{
		{ID: "k1", Tenant: "percall", Hash: tenant.HashKey([]byte("pk-percall"))},
		{ID: "k2", Tenant: "perminute", Hash: tenant.HashKey([]byte("pk-perminute"))},
	})
	if err != nil {
		t.Fatal(err)
	}
	ts.Apply(context.Background(), snap)

	// A call that loops is stopped by its per-call budget long before the 1 s deadline.
	r := do(t, "GET", ts.url+"/v1/loop", "pk-percall", "")
	if r.status != 500 || r.err.Code != "plugin_cpu_budget_exceeded" || !strings.Contains(r.err.Message, "16777216 work units per call") {
		t.Fatalf("per-call budget: %d %+v", r.status, r.err)
	}
	if r := do(t, "GET", ts.url+"/v1/models", "pk-percall", ""); r.status != 200 {
		t.Fatalf("a normal call after the budget stop: %d %s", r.status, r.body)
	}
	// The per-minute budget: the loop spends it, then every call of the tenant is refused until the
	// minute is over, with a message that says when.
	r = do(t, "GET", ts.url+"/v1/loop", "pk-perminute", "")
	if r.status != 500 || r.err.Code != "plugin_cpu_budget_exceeded" || !strings.Contains(r.err.Message, "per minute is spent") {
		t.Fatalf("per-minute budget: %d %+v", r.status, r.err)
	}
	if r := do(t, "GET", ts.url+"/v1/models", "pk-perminute", ""); r.status != 500 || r.err.Code != "plugin_cpu_budget_exceeded" {
		t.Fatalf("a call after the minute's budget is spent: %d %s", r.status, r.body)
	}
	m := do(t, "GET", ts.url+"/metrics", "", "").body
	for _, want := range []string{`plinth_plugin_cpu_budget_exceeded_total{tenant="percall",plugin="hostile"} 1`,
		`plinth_tenant_cpu_work_units_total{tenant="perminute"} `} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}
