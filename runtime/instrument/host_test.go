package instrument

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/experimental"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"
)

// This file holds the test host: Go guest builds, wazero runtimes and the
// tick import, as a real Plinth host would provide them.

var guestOnce struct {
	sync.Once
	wasm []byte
	err  error
}

// goGuest builds testdata/guest with the real Go toolchain (once per test
// binary; the Go build cache makes repeated runs cheap).
func goGuest(tb testing.TB) []byte {
	tb.Helper()
	guestOnce.Do(func() {
		dir, err := os.MkdirTemp("", "instrument-guest")
		if err != nil {
			guestOnce.err = err
			return
		}
		defer os.RemoveAll(dir)
		out := filepath.Join(dir, "guest.wasm")
		cmd := exec.Command("go", "build", "-buildmode=c-shared", "-o", out, ".")
		cmd.Dir = filepath.Join("testdata", "guest")
		cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "GOWORK=off", "GOFLAGS=-buildvcs=false")
		if msg, err := cmd.CombinedOutput(); err != nil {
			guestOnce.err = errors.New("building the Go guest: " + err.Error() + "\n" + string(msg))
			return
		}
		guestOnce.wasm, guestOnce.err = os.ReadFile(out)
	})
	if guestOnce.err != nil {
		tb.Fatal(guestOnce.err)
	}
	return guestOnce.wasm
}

// errDeadline is what the test tick panics with when the call's deadline
// has passed; wazero returns it (wrapped) from the call.
var errDeadline = errors.New("guest exceeded its deadline")

// callState is the per-call state a host keeps for tick: how often tick ran
// and when the call must stop.
type callState struct {
	ticks      int64
	deadline   time.Time // zero: never abort
	hostWork   []int64   // work so far (from ticks and the countdown global) when env.peek ran
	tickGlobal []int32   // the countdown global when tick ran, if peekTicks
	peekTicks  bool
}

type callKey struct{}

func withCall(ctx context.Context, st *callState) context.Context {
	return context.WithValue(ctx, callKey{}, st)
}

// tick is the host side of the injected import.
func tick(ctx context.Context, mod api.Module, _ []uint64) {
	st, _ := ctx.Value(callKey{}).(*callState)
	if st == nil {
		return
	}
	st.ticks++
	if st.peekTicks {
		st.tickGlobal = append(st.tickGlobal, int32(mod.ExportedGlobal("plinth_countdown").Get()))
	}
	if !st.deadline.IsZero() && time.Now().After(st.deadline) {
		panic(errDeadline)
	}
}

// testCache shares compiled modules between the tests' runtimes: compiling
// the Go guest takes about a second per variant.
var testCache = wazero.NewCompilationCache()

type engine int

const (
	compiler engine = iota
	interpreter
)

// newRuntime returns a wazero runtime with WASI and the "plinth" host module
// providing tick. Tail calls are enabled so hand-assembled modules can use
// return_call.
func newRuntime(tb testing.TB, e engine, closeOnDone bool) wazero.Runtime {
	tb.Helper()
	ctx := context.Background()
	cfg := wazero.NewRuntimeConfigCompiler()
	if e == interpreter {
		cfg = wazero.NewRuntimeConfigInterpreter()
	}
	cfg = cfg.WithCoreFeatures(api.CoreFeaturesV2 | experimental.CoreFeaturesTailCall).WithCloseOnContextDone(closeOnDone)
	if !closeOnDone {
		// wazero's in-memory cache is keyed by module content only, not by
		// WithCloseOnContextDone, so runtimes that close on done must not
		// share it.
		cfg = cfg.WithCompilationCache(testCache)
	}
	rt := wazero.NewRuntimeWithConfig(ctx, cfg)
	tb.Cleanup(func() { rt.Close(ctx) })
	wasi_snapshot_preview1.MustInstantiate(ctx, rt)
	_, err := rt.NewHostModuleBuilder("plinth").
		NewFunctionBuilder().WithGoModuleFunction(api.GoModuleFunc(tick), nil, nil).Export("tick").
		Instantiate(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	_, err = rt.NewHostModuleBuilder("env").
		NewFunctionBuilder().WithGoFunction(api.GoFunc(func(_ context.Context, stack []uint64) {
		stack[0] = uint64(uint32(stack[0]) + 1)
	}), []api.ValueType{api.ValueTypeI32}, []api.ValueType{api.ValueTypeI32}).Export("add1").
		// peek records the work so far as a host function sees it.
		NewFunctionBuilder().WithGoModuleFunction(api.GoModuleFunc(func(ctx context.Context, mod api.Module, _ []uint64) {
		st, _ := ctx.Value(callKey{}).(*callState)
		if g := mod.ExportedGlobal("plinth_countdown"); st != nil && g != nil {
			st.hostWork = append(st.hostWork, st.ticks*DefaultInterval+DefaultInterval-int64(int32(g.Get())))
		}
	}), nil, nil).Export("peek").
		Instantiate(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	return rt
}

// instance is one instantiated guest.
type instance struct {
	mod     api.Module
	counter api.MutableGlobal // nil for uninstrumented modules
}

// instantiate compiles and instantiates wasm; Go c-shared guests get their
// _initialize export called.
func instantiate(tb testing.TB, rt wazero.Runtime, wasm []byte) *instance {
	tb.Helper()
	ctx := context.Background()
	cm, err := rt.CompileModule(ctx, wasm)
	if err != nil {
		tb.Fatal(err)
	}
	cfg := wazero.NewModuleConfig().WithName("").WithStartFunctions()
	mod, err := rt.InstantiateModule(ctx, cm, cfg)
	if err != nil {
		tb.Fatal(err)
	}
	if init := mod.ExportedFunction("_initialize"); init != nil {
		if _, err := init.Call(ctx); err != nil {
			tb.Fatal(err)
		}
	}
	inst := &instance{mod: mod}
	if g, ok := mod.ExportedGlobal("plinth_countdown").(api.MutableGlobal); ok {
		inst.counter = g
	}
	return inst
}

// call runs an export with a fresh countdown and returns its results, the
// tick count and the work units it used (zero for uninstrumented modules).
func (in *instance) call(ctx context.Context, st *callState, name string, args ...uint64) ([]uint64, int64, error) {
	if in.counter != nil {
		in.counter.Set(DefaultInterval)
	}
	res, err := in.mod.ExportedFunction(name).Call(withCall(ctx, st), args...)
	var work int64
	if in.counter != nil {
		work = st.ticks*DefaultInterval + (DefaultInterval - int64(int32(in.counter.Get())))
	}
	return res, work, err
}

func mustInstrument(tb testing.TB, wasm []byte, f form) []byte {
	tb.Helper()
	cfg, err := resolve(Options{})
	if err != nil {
		tb.Fatal(err)
	}
	cfg.place, cfg.counter, cfg.noRefresh = f.place, f.counter, f.noRefresh
	if f.unroll != 0 {
		cfg.unroll = f.unroll
	}
	out, err := instrument(wasm, cfg)
	if err != nil {
		tb.Fatal(err)
	}
	return out
}
