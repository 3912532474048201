package runtime

import (
	"context"
	"os"
	"testing"

	"github.com/plinth-dev/plinth/abi"
	"github.com/plinth-dev/plinth/sdk/sdktest"
)

// TestWorkUnitsReport prints the instrumented work units of one route-hook call when PLINTH_REPORT is
// set: a deterministic measure of guest work, for comparing SDK changes on a noisy machine.
func TestWorkUnitsReport(t *testing.T) {
	if os.Getenv("PLINTH_REPORT") == "" {
		t.Skip("set PLINTH_REPORT=1 to print work units per call")
	}
	e := newEngine(t, Config{})
	wasm := echoWasm(t)
	if path := os.Getenv("PLINTH_REPORT_WASM"); path != "" {
		wasm, _ = os.ReadFile(path)
	}
	p := newPool(t, e, wasm, PoolConfig{Hooks: abi.HookSet(0).With(abi.HookRoute)})
	in := routeInput()
	h := sdktest.New()
	for i := 0; i < 1000; i++ {
		if _, err := p.Call(context.Background(), abi.HookRoute, in, h, nil); err != nil {
			t.Fatal(err)
		}
	}
	before := p.Stats().WorkUnits.Load()
	for i := 0; i < 1000; i++ {
		p.Call(context.Background(), abi.HookRoute, in, h, nil)
	}
	t.Logf("route hook (echo fixture, %d-byte input): %d work units per call", len(in), (p.Stats().WorkUnits.Load()-before)/1000)
}
