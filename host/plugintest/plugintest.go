// Package plugintest runs a plugin's sdktest-based tests against its compiled .wasm in the real runtime.
//
// A plugin test written against *sdktest.Host can run both ways:
//
//	func TestRoutes(t *testing.T)     { testRoutes(t, sdktest.New()) }
//	func TestRoutesWasm(t *testing.T) { testRoutes(t, plugintest.New(t, ".")) }
//
// New builds the package in dir with GOOS=wasip1 (see runtime/wasmbuild), compiles it with the
// production engine settings (instrumented preemption) and serves its host calls from the returned
// sdktest.Host, so state, clock and configuration behave exactly as in the native run.
package plugintest

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/abi"
	"github.com/plinth-dev/plinth/runtime"
	"github.com/plinth-dev/plinth/runtime/wasmbuild"
	"github.com/plinth-dev/plinth/sdk/sdktest"
)

var (
	engineOnce sync.Once
	engine     *runtime.Engine
	engineErr  error
)

// sharedEngine is one engine per test process, so each module compiles once however many tests use it.
func sharedEngine() (*runtime.Engine, error) {
	engineOnce.Do(func() {
		engine, engineErr = runtime.New(runtime.Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	})
	return engine, engineErr
}

// New builds the plugin in dir and returns a Host whose hook calls run the .wasm.
func New(t testing.TB, dir string) *sdktest.Host {
	t.Helper()
	wasm := wasmbuild.ForTest(t, dir)
	e, err := sharedEngine()
	if err != nil {
		t.Fatal(err)
	}
	m, err := e.Compile(context.Background(), wasm, runtime.CompileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r := &runner{engine: e, module: m, pools: map[poolKey]*runtime.Pool{}}
	t.Cleanup(r.close)
	return sdktest.NewWithRunner(r)
}

// runner keeps one pool per (hook, configuration): a plugin reads its configuration once per instance,
// so a changed configuration needs fresh instances, as in the server.
type runner struct {
	engine *runtime.Engine
	module *runtime.Module

	mu    sync.Mutex
	pools map[poolKey]*runtime.Pool // guarded by mu
}

type poolKey struct {
	hook   abi.Hook
	config string
}

func (r *runner) Run(h abi.Host, hook abi.Hook, input []byte) ([]byte, error) {
	cfg := make([]byte, 4096)
	n := h.Config(cfg)
	if int(n) > len(cfg) {
		cfg = make([]byte, n)
		n = h.Config(cfg)
	}
	key := poolKey{hook: hook, config: string(cfg[:max(n, 0)])}
	r.mu.Lock()
	p, ok := r.pools[key]
	if !ok {
		var err error
		p, err = r.engine.NewPool(runtime.PoolConfig{Name: "plugintest", Module: r.module,
			Hooks: abi.HookSet(0).With(hook), MaxInstances: 1, Deadline: 5 * time.Second, InitHost: h})
		if err != nil {
			r.mu.Unlock()
			return nil, err
		}
		r.pools[key] = p
	}
	r.mu.Unlock()
	return p.Call(context.Background(), hook, input, h, nil)
}

func (r *runner) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range r.pools {
		p.Close()
	}
	r.module.Release()
}
