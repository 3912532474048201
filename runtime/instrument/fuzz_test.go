package instrument

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/experimental"
)

var fuzzRT struct {
	sync.Once
	rt wazero.Runtime
}

// validator returns a long-lived interpreter runtime: wazero validates a
// module fully when compiling it, and the interpreter compiles fastest.
func validator() wazero.Runtime {
	fuzzRT.Do(func() {
		cfg := wazero.NewRuntimeConfigInterpreter().WithCoreFeatures(api.CoreFeaturesV2 | experimental.CoreFeaturesTailCall)
		fuzzRT.rt = wazero.NewRuntimeWithConfig(context.Background(), cfg)
	})
	return fuzzRT.rt
}

// FuzzInstrument: Instrument never panics, fails only with *Error, and a
// module wazero accepts stays acceptable after instrumentation.
func FuzzInstrument(f *testing.F) {
	mods := handModules()
	for _, name := range sortedNames(mods) {
		m := mods[name]
		f.Add(m)
		f.Add(m[:len(m)*2/3]) // truncated variants exercise the error paths
	}
	f.Add(wasmModule())
	if !testing.Short() {
		g := goGuest(f)
		f.Add(g)
		f.Add(g[:64<<10])
	}
	f.Fuzz(func(t *testing.T, wasm []byte) {
		out, err := Instrument(wasm, Options{})
		if err != nil {
			var ierr *Error
			if !errors.As(err, &ierr) || out != nil {
				t.Fatalf("error %v (%T) with %d output bytes, want *Error and no output", err, err, len(out))
			}
			return
		}
		if implausibleCounts(wasm) {
			// wazero allocates a vector's declared length before noticing
			// the bytes are missing; a few such inputs in parallel workers
			// run the fuzzer out of memory. wazero rejects them anyway.
			return
		}
		ctx := context.Background()
		rt := validator()
		in, err := rt.CompileModule(ctx, wasm)
		if err != nil {
			return // wazero rejects the input: nothing to preserve
		}
		in.Close(ctx)
		cm, err := rt.CompileModule(ctx, out)
		if err != nil {
			t.Fatalf("wazero compiles the input but not the instrumented output: %v", err)
		}
		cm.Close(ctx)
	})
}

// implausibleCounts reports whether a section declares more entries than it
// has bytes.
func implausibleCounts(wasm []byte) bool {
	m := &module{wasm: wasm}
	if m.splitSections() != nil {
		return true
	}
	for _, s := range m.sections {
		if s.id == secCustom {
			// wazero also sizes name maps by their declared counts.
			r := m.reader(s)
			if name := r.name(); r.err == nil && string(name) == "name" {
				if _, ok := m.names(r.b[r.pos:]); !ok {
					return true
				}
			}
			continue
		}
		if s.id == secStart || s.id == secDataCount {
			continue
		}
		r := m.reader(s)
		if n := r.u32(); r.err != nil || int(n) > len(r.b) {
			return true
		}
	}
	return false
}
