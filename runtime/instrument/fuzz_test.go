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
		if !wazeroAccepts(ctx, rt, wasm) {
			return // wazero rejects the input: nothing to preserve
		}
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
				if _, ok := m.names(r.b[r.pos:]); !ok || !wazeroNamesPlausible(r.b[r.pos:]) {
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

// wazeroNamesPlausible reads a name section the way wazero does (it reads
// the module, function and local name subsections without regard to their
// declared sizes) and reports whether every count it would allocate for
// fits in the bytes left.
func wazeroNamesPlausible(b []byte) bool {
	r := newReader(b, 0)
	fits := func(n uint32) bool { return r.err == nil && int(n) <= len(r.b)-r.pos }
	for r.more() {
		id := r.byte()
		size := r.u32()
		switch id {
		case 0:
			r.name()
		case 1:
			n := r.u32()
			if !fits(n) {
				return false
			}
			for range n {
				r.u32()
				r.name()
			}
		case 2:
			n := r.u32()
			if !fits(n) {
				return false
			}
			for range n {
				r.u32()
				k := r.u32()
				if !fits(k) {
					return false
				}
				for range k {
					r.u32()
					r.name()
				}
			}
		default:
			r.bytes(int(size))
		}
		if r.err != nil {
			return true // wazero fails the same way, before allocating
		}
	}
	return true
}

// wazeroAccepts reports whether wazero compiles wasm. wazero v1.12.0's
// validator panics on some invalid modules (a function whose type index is
// out of range) instead of returning an error; that is a rejection too.
func wazeroAccepts(ctx context.Context, rt wazero.Runtime, wasm []byte) (ok bool) {
	defer func() {
		if recover() != nil {
			ok = false
		}
	}()
	cm, err := rt.CompileModule(ctx, wasm)
	if err != nil {
		return false
	}
	cm.Close(ctx)
	return true
}
