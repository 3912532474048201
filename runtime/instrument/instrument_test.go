package instrument

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/tetratelabs/wazero"
)

// form is one way to instrument: where loop checks put their tick call and
// where the countdown lives. Instrument always uses production; the others
// exist for comparison and must behave (and meter) identically. The -global
// forms are the rewrite as it was before call-free loops kept the countdown
// in a local: every check on the global.
type form struct {
	name      string
	place     placement
	counter   counterForm
	noRefresh bool
	unroll    int // zero: the default
}

var production = form{"hoisted", placeAuto, counterAuto, false, 0}

// forms are the forms the tests run.
var forms = []form{
	production,
	{"inline", placeInline, counterAuto, false, 0},
	{"hoisted-global", placeAuto, counterGlobal, false, 1},
	{"inline-global", placeInline, counterGlobal, false, 1},
	{"hoisted-unroll2", placeAuto, counterAuto, false, 2},
}

// benchForms adds forms that only the benchmarks compare.
var benchForms = append(forms[:len(forms):len(forms)],
	form{"hoisted-nounroll", placeAuto, counterAuto, false, 1},
	form{"hoisted-norefresh", placeAuto, counterAuto, true, 1}, // neither unrolling nor buildRefresh
)

// lag is how many iterations a tick can come late in f (1: none): unrolled
// loops only test every unroll-th decrement. Only the hoisted placement
// with regions unrolls.
func (f form) lag() int {
	switch {
	case f.place != placeAuto || f.counter != counterAuto:
		return 1
	case f.unroll == 0:
		return defaultUnroll
	}
	return f.unroll
}

func sortedNames(m map[string][]byte) []string {
	var names []string
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// TestHandModulesCompile checks that every hand-assembled module is valid
// before and after instrumentation, for both engines and every form.
func TestHandModulesCompile(t *testing.T) {
	mods := handModules()
	for _, e := range []engine{compiler, interpreter} {
		rt := newRuntime(t, e, false)
		for _, name := range sortedNames(mods) {
			if _, err := rt.CompileModule(context.Background(), mods[name]); err != nil {
				t.Fatalf("engine %d: input module %s is invalid (test assembler bug): %v", e, name, err)
			}
			for _, p := range forms {
				out := mustInstrument(t, mods[name], p)
				if _, err := rt.CompileModule(context.Background(), out); err != nil {
					t.Errorf("engine %d: %s/%s: instrumented module does not compile: %v", e, name, p.name, err)
				}
			}
		}
	}
}

type handCase struct {
	mod  string
	fn   string
	args []uint64
	want []uint64 // nil: only compare with the original module
}

var handCases = []handCase{
	{"spinbr", "count", []uint64{1000}, []uint64{0}},
	{"recursion", "tree", []uint64{10}, []uint64{1024}},
	{"multivalue", "sumto", []uint64{100}, []uint64{100, 5050}},
	{"multivalue", "twores", []uint64{5}, []uint64{0, 9}},
	{"nested", "nested", []uint64{0}, nil},
	{"nested", "nested", []uint64{1}, nil},
	{"nested", "nested", []uint64{7}, nil},
	{"nested", "nested", []uint64{30}, nil},
	{"tables", "dispatch", []uint64{0}, []uint64{202}},
	{"tables", "dispatch", []uint64{1}, []uint64{306}},
	{"tables", "dispatch", []uint64{2}, []uint64{412}},
	{"tables", "dispatch", []uint64{10}, []uint64{333}},
	{"tables", "dispatch", []uint64{12}, []uint64{14*113 + 42}},
	{"tables", "viaref", []uint64{5}, []uint64{14*6 + 42}},
	{"simd", "simd", []uint64{5}, nil},
	{"bulk", "bulk", []uint64{3}, nil},
	// Region exits; the 40000-iteration cases tick twice on the way.
	{"exits", "retin", []uint64{5}, []uint64{10}},
	{"exits", "retin", []uint64{40000}, []uint64{80000}},
	{"exits", "brfn", []uint64{3}, []uint64{7}},
	{"exits", "brfn", []uint64{40000}, []uint64{7}},
	{"exits", "brtbl", []uint64{30}, []uint64{}},
	{"exits", "brtbl", []uint64{40000}, []uint64{}},
	{"exits", "tailout", []uint64{40000}, []uint64{0}},
	{"exits", "nestcall", []uint64{30}, nil},
	{"exits", "nestcall", []uint64{3000}, nil},
	{"exits", "peek", []uint64{20000}, []uint64{1}},
	{"exits", "floats", []uint64{50000}, []uint64{0xffa00001 ^ 0x7ff4000000000123 ^ 0xafaeadacabaaa9a8 ^ 0x123456788}}, // 3 ticks
}

// TestHandModulesBehave runs the hand-assembled functions on the original and
// the instrumented modules and compares results (and known answers). Every
// form must meter exactly the work the original rewrite (hoisted-global)
// meters, also when env.peek looks in the middle of a call: the global is
// exact whenever the host runs. Tick counts match too, up to unrolling's
// delays, and tick sees the countdown exhausted (not a stale value).
func TestHandModulesBehave(t *testing.T) {
	mods := handModules()
	ctx := context.Background()
	ref := slices.IndexFunc(forms, func(f form) bool { return f.name == "hoisted-global" })
	for _, e := range []engine{compiler, interpreter} {
		rt := newRuntime(t, e, false)
		for _, c := range handCases {
			works := make([]int64, len(forms))
			sts := make([]*callState, len(forms))
			orig := instantiate(t, rt, mods[c.mod])
			want, _, err := orig.call(ctx, &callState{}, c.fn, c.args...)
			if err != nil {
				t.Fatalf("%s.%s%v on the original: %v", c.mod, c.fn, c.args, err)
			}
			if c.want != nil && fmt.Sprint(want) != fmt.Sprint(c.want) {
				t.Fatalf("%s.%s%v on the original = %v, want %v (test bug)", c.mod, c.fn, c.args, want, c.want)
			}
			for i, p := range forms {
				in := instantiate(t, rt, mustInstrument(t, mods[c.mod], p))
				// A deadline turns a miswired branch (an endless loop) into a
				// failure instead of a hung test.
				st := &callState{deadline: time.Now().Add(10 * time.Second), peekTicks: true}
				got, work, err := in.call(ctx, st, c.fn, c.args...)
				if err != nil {
					t.Fatalf("%s.%s%v %s: %v", c.mod, c.fn, c.args, p.name, err)
				}
				if fmt.Sprint(got) != fmt.Sprint(want) {
					t.Errorf("engine %d: %s.%s%v %s = %v, original %v", e, c.mod, c.fn, c.args, p.name, got, want)
				}
				if work <= 0 {
					t.Errorf("%s.%s%v %s: work %d, want > 0", c.mod, c.fn, c.args, p.name, work)
				}
				for _, g := range st.tickGlobal {
					if g > 0 || g <= -int32(p.lag()) {
						t.Errorf("engine %d: %s.%s%v %s: tick saw countdown %d, want 0 down to %d", e, c.mod, c.fn, c.args, p.name, g, 1-p.lag())
						break
					}
				}
				works[i], sts[i] = work, st
			}
			for i, p := range forms {
				w, st, st0 := works[i], sts[i], sts[ref]
				if w != works[ref] || fmt.Sprint(st.hostWork) != fmt.Sprint(st0.hostWork) ||
					st.ticks > st0.ticks || st.ticks < st0.ticks-int64(p.lag()-1) {
					t.Errorf("engine %d: %s.%s%v: %s metered work %d (host saw %v) ticks %d; %s %d (%v) %d",
						e, c.mod, c.fn, c.args, p.name, w, st.hostWork, st.ticks, forms[ref].name, works[ref], st0.hostWork, st0.ticks)
				}
			}
		}
	}
}

// TestExactWork pins the check placement: a loop of n iterations in a
// function that starts with the loop does n checks (the entry check is
// elided), unrolled or not, and tree(k) makes 2^(k+1)-1 calls with no loop
// at all.
func TestExactWork(t *testing.T) {
	mods := handModules()
	ctx := context.Background()
	rt := newRuntime(t, compiler, false)
	for _, p := range forms {
		spin := instantiate(t, rt, mustInstrument(t, mods["spinbr"], p))
		tree := instantiate(t, rt, mustInstrument(t, mods["recursion"], p))
		for _, n := range []int64{1, 1000, DefaultInterval - 1, DefaultInterval, DefaultInterval + 1, 1_000_003} {
			st := &callState{}
			_, work, err := spin.call(ctx, st, "count", uint64(n))
			if err != nil {
				t.Fatal(err)
			}
			// Unrolling can delay a tick by up to lag-1 iterations: count
			// is unrolled, and its Interval-th iteration runs in a copy of
			// the body that decrements without testing.
			wantTicks := n / DefaultInterval
			if p.lag() > 1 && n == DefaultInterval {
				wantTicks = 0
			}
			if work != n || st.ticks > n/DefaultInterval || st.ticks < (n-int64(p.lag()-1))/DefaultInterval || st.ticks != wantTicks && n == DefaultInterval {
				t.Errorf("%s: count(%d): work %d ticks %d, want work %d ticks %d", p.name, n, work, st.ticks, n, wantTicks)
			}
		}
		for _, k := range []int64{0, 5, 16} {
			st := &callState{}
			_, work, err := tree.call(ctx, st, "tree", uint64(k))
			if err != nil {
				t.Fatal(err)
			}
			if want := int64(1)<<(k+1) - 1; work != want {
				t.Errorf("%s: tree(%d): work %d, want %d", p.name, k, work, want)
			}
		}
	}
}

// TestTrapWork: a trap inside a call-free loop. unreachable writes the
// local countdown back first, so metering stays exact; other traps lose at
// most the decrements since the loop was entered or last ticked
// (Interval+unroll), on an instance the host discards anyway.
func TestTrapWork(t *testing.T) {
	ctx := context.Background()
	rt := newRuntime(t, compiler, false)
	const n = 20000 // ticks once, then traps 20000-16384 headers later
	for _, fn := range []string{"trapin", "oob"} {
		for _, p := range forms {
			in := instantiate(t, rt, mustInstrument(t, modExits(), p))
			st := &callState{}
			_, work, err := in.call(ctx, st, fn, n)
			if err == nil {
				t.Fatalf("%s %s: no trap", fn, p.name)
			}
			if st.ticks != 1 {
				t.Errorf("%s %s: %d ticks, want 1", fn, p.name, st.ticks)
			}
			if p.counter == counterGlobal {
				if work != n { // the all-global forms count every header
					t.Errorf("%s %s: work %d, want %d", fn, p.name, work, n)
				}
				continue
			}
			if fn == "trapin" && work != n {
				t.Errorf("%s %s: work %d, want %d (exact)", fn, p.name, work, n)
			}
			if lost := n - work; lost < 0 || lost > DefaultInterval+int64(p.lag()) {
				t.Errorf("%s %s: work %d, want within %d below %d", fn, p.name, work, DefaultInterval+p.lag(), n)
			}
		}
	}
}

// TestRenumbering checks that imports, exports, the start function, element
// segments and the name section follow the inserted tick import.
func TestRenumbering(t *testing.T) {
	ctx := context.Background()
	rt := newRuntime(t, compiler, false)
	orig, err := rt.CompileModule(ctx, modTables())
	if err != nil {
		t.Fatal(err)
	}
	out := mustInstrument(t, modTables(), production)
	inst, err := rt.CompileModule(ctx, out)
	if err != nil {
		t.Fatal(err)
	}
	imps := inst.ImportedFunctions()
	if len(imps) != 2 {
		t.Fatalf("instrumented module imports %d functions, want 2", len(imps))
	}
	mod, name, _ := imps[1].Import()
	if mod != "plinth" || name != "tick" || imps[1].Index() != 1 || imps[1].Name() != "plinth.tick" {
		t.Errorf("second import is %s.%s index %d name %q, want plinth.tick index 1 named plinth.tick", mod, name, imps[1].Index(), imps[1].Name())
	}
	if imps[0].Name() != "add1" {
		t.Errorf("first import named %q, want add1", imps[0].Name())
	}
	for exp, def := range orig.ExportedFunctions() {
		got := inst.ExportedFunctions()[exp]
		if got.Index() != def.Index()+1 || got.Name() != def.Name() || got.Name() == "" {
			t.Errorf("export %s: index %d name %q, original index %d name %q", exp, got.Index(), got.Name(), def.Index(), def.Name())
		}
	}
	if inst.Name() != "tables" {
		t.Errorf("module name %q, want tables", inst.Name())
	}
	// The start function ran (42 shows up in viaref) and the element
	// segments, ref.func and the funcref global point at the right
	// functions: TestHandModulesBehave checks the values. Here: a trap's
	// stack trace names the renumbered functions.
	m, err := rt.InstantiateModule(ctx, inst, wazero.NewModuleConfig().WithName(""))
	if err != nil {
		t.Fatal(err)
	}
	_, err = m.ExportedFunction("dispatch").Call(withCall(ctx, &callState{}), 11) // null table slot
	if err == nil || !strings.Contains(err.Error(), "tables.dispatch") {
		t.Errorf("trap in dispatch: error %v does not name tables.dispatch", err)
	}
	// Local names survive: the name section still decodes with the local
	// name of dispatch under its new index.
	if !bytes.Contains(out, str("slot")) {
		t.Error("local name lost")
	}
}

// TestTypeReuse: an existing () -> () type is reused, not duplicated.
func TestTypeReuse(t *testing.T) {
	out := mustInstrument(t, modBulk(), production)
	m := &module{wasm: out, appendType: true}
	if err := m.splitSections(); err != nil {
		t.Fatal(err)
	}
	if err := m.scan(); err != nil {
		t.Fatal(err)
	}
	if len(m.types) != 2 || m.funcImports != 1 || m.appendType {
		t.Errorf("types %d, function imports %d, appendType %v; want 2 types (reused), 1 import", len(m.types), m.funcImports, m.appendType)
	}
	// And a module without types, imports, globals or exports gets them.
	empty := wasmModule()
	out, err := Instrument(empty, Options{})
	if err != nil {
		t.Fatal(err)
	}
	rt := newRuntime(t, interpreter, false)
	cm, err := rt.CompileModule(context.Background(), out)
	if err != nil {
		t.Fatal(err)
	}
	if len(cm.ImportedFunctions()) != 1 {
		t.Errorf("empty module: %d imports, want the tick import", len(cm.ImportedFunctions()))
	}
}

func TestOptions(t *testing.T) {
	opts := Options{Interval: 100, ImportModule: "host", ImportName: "yield", CounterExport: "fuel"}
	out, err := Instrument(modSpinBr(), opts)
	if err != nil {
		t.Fatal(err)
	}
	rt := newRuntime(t, interpreter, false)
	_, err = rt.NewHostModuleBuilder("host").NewFunctionBuilder().WithFunc(func() {}).Export("yield").Instantiate(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	cm, err := rt.CompileModule(context.Background(), out)
	if err != nil {
		t.Fatal(err)
	}
	mod, name, _ := cm.ImportedFunctions()[0].Import()
	if mod != "host" || name != "yield" {
		t.Errorf("import %s.%s, want host.yield", mod, name)
	}
	m, err := rt.InstantiateModule(context.Background(), cm, wazero.NewModuleConfig())
	if err != nil {
		t.Fatal(err)
	}
	if g := m.ExportedGlobal("fuel"); g == nil || g.Get() != 100 {
		t.Errorf("countdown exported as fuel: %v, want a global holding 100", g)
	}
	if !bytes.Contains(out, []byte{opI32Const, 0xe4, 0x00}) { // i32.const 100
		t.Error("interval 100 not used")
	}
	for _, iv := range []int32{-1, maxInterval + 1} {
		var ierr *Error
		if _, err := Instrument(modSpinBr(), Options{Interval: iv}); !errors.As(err, &ierr) {
			t.Errorf("Interval %d: error %v, want *Error", iv, err)
		}
	}
}

// TestRefusals: modules the rewrite cannot handle safely are refused with
// an *Error naming the function and the offending construct.
func TestRefusals(t *testing.T) {
	one := func(code ...any) []byte {
		return simpleModule([][]byte{typeVoid}, []simpleFunc{{0, fbody(nil, code...), "f"}})
	}
	twoFuncs := func(code ...any) []byte {
		return simpleModule([][]byte{typeVoid}, []simpleFunc{{0, fbody(nil, opEnd), "ok"}, {0, fbody(nil, code...), "bad"}})
	}
	valid := modSpinBr()
	cases := []struct {
		name string
		wasm []byte
		fn   int // expected Error.Func
		want string
	}{
		{"threads", one(opI32Const, 0, 0xfe, 0x10, 2, 0, opDrop, opEnd), 0, "threads"},
		{"legacy try", one(0x06, tEmpty, opEnd, opEnd), 0, "exception"},
		{"throw", twoFuncs(0x08, 0, opEnd), 1, "exception"},
		{"try_table", one(0x1f, tEmpty, 0, opEnd, opEnd), 0, "exception"},
		{"unknown opcode", one(0x27, opEnd), 0, "unknown opcode 0x27"},
		{"typed func refs", one(0xd4, opEnd), 0, "unknown opcode 0xd4"},
		{"unknown 0xfc", one(opFC, u(99), opEnd), 0, "unknown opcode 0xfc 99"},
		{"relaxed simd", one(opSIMD, u(0x100), opEnd), 0, "relaxed SIMD"},
		{"unassigned simd", one(opSIMD, u(0x9a), opEnd), 0, "unknown SIMD opcode"},
		{"branch depth", one(opBr, 1, opEnd), 0, "branch depth 1"},
		{"else without if", one(opBlock, tEmpty, opElse, opEnd, opEnd), 0, "else without"},
		{"missing end", one(opNop()), 0, "without a final end"},
		{"trailing bytes", one(opEnd, opEnd), 0, "after the function's final end"},
		{"block type", one(opBlock, 0x05, opEnd, opEnd), 0, "block type"},
		{"tag section", wasmModule(sec(secTag, vec(cat(0x00, u(0))))), -1, "tag section"},
		{"already imported", wasmModule(sec(secType, vec(typeVoid)), sec(secImport, vec(cat(str("plinth"), str("tick"), 0x00, u(0))))), -1, "already imports plinth.tick"},
		{"already exported", wasmModule(
			sec(secGlobal, vec(cat(tI32, 0x00, opI32Const, 0, opEnd))),
			sec(secExport, vec(cat(str("plinth_countdown"), 0x03, u(0))))), -1, "already exports"},
		{"shared memory", wasmModule(sec(secMemory, vec(cat(0x03, u(1), u(1))))), -1, "threads"},
		{"not wasm", []byte("hello, world"), -1, "not a WebAssembly binary"},
		{"component", append([]byte{0, 'a', 's', 'm', 0x0d, 0, 1, 0}, 0), -1, "version"},
		{"truncated", valid[:len(valid)-3], -1, "past the end"},
		{"section order", wasmModule(sec(secFunction, vec()), sec(secType, vec())), -1, "out of order"},
		{"gc types", wasmModule(sec(secType, vec(cat(0x5f, vec())))), -1, "GC"},
		{"bad LEB", wasmModule(sec(secStart, 0x80, 0x80, 0x80, 0x80, 0x10)), -1, "LEB128"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, err := Instrument(c.wasm, Options{})
			var ierr *Error
			if !errors.As(err, &ierr) {
				t.Fatalf("got %v (output %d bytes), want an *Error", err, len(out))
			}
			if out != nil {
				t.Error("output returned with an error")
			}
			if !strings.Contains(err.Error(), c.want) || ierr.Func != c.fn {
				t.Errorf("error %q (Func %d), want it to contain %q with Func %d", err, ierr.Func, c.want, c.fn)
			}
			if ierr.Offset < 0 || ierr.Offset > len(c.wasm) {
				t.Errorf("offset %d outside the module", ierr.Offset)
			}
		})
	}
}

func opNop() int { return 0x01 }
