package instrument

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkInstrument measures the rewriter itself on the Go guest (a
// ~3 MB module with DWARF).
func BenchmarkInstrument(b *testing.B) {
	wasm := goGuest(b)
	b.SetBytes(int64(len(wasm)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Instrument(wasm, Options{}); err != nil {
			b.Fatal(err)
		}
	}
}

// benchLoop is a guest function measured by BenchmarkTightLoop and
// TestTightLoopTable: one call with arg does per units of work (loop
// iterations, or calls for fib), and ns/iter is the time per unit. pad is
// an instruction with no effect (see padFirstFunc).
type benchLoop struct {
	name string
	wasm func(testing.TB) []byte
	fn   string
	arg  uint64
	per  float64
	pad  []byte
}

const benchIters = 1 << 20

var (
	// Go's global 0 is its stack pointer: storing it to itself changes
	// nothing.
	padGo = []byte{opGlobalGet, 0, opGlobalSet, 0}
	// modSpinBr never uses its memory.
	padMem = []byte{opI32Const, 0, opI32Const, 0, opI32Store, 2, 0}
)

var benchLoops = []benchLoop{
	{"go-xorshift", goGuest, "xorshift", benchIters, benchIters, padGo},
	{"go-sum", goGuest, "sumloop", benchIters, benchIters, padGo},
	{"wasm-countdown", func(testing.TB) []byte { return modSpinBr() }, "count", benchIters, benchIters, padMem},
	// Call-heavy Go code. fib(20) makes 21891 calls; jsonenc(200) is
	// allocation, reflection and runtime code, per record.
	{"go-fib", goGuest, "fib", 20, 21891, padGo},
	{"go-jsonenc", goGuest, "jsonenc", 200, 200, padGo},
}

// benchMode is a way to run a benchLoop: unprotected (the original module),
// wazero's WithCloseOnContextDone, or instrumented in one of the forms.
type benchMode struct {
	name        string
	closeOnDone bool
	form        *form // nil: not instrumented
}

func benchModes() []benchMode {
	modes := []benchMode{{"unprotected", false, nil}, {"closeondone", true, nil}}
	for i := range benchForms {
		modes = append(modes, benchMode{benchForms[i].name, false, &benchForms[i]})
	}
	return modes
}

// padFirstFunc returns wasm with k copies of pad (an instruction sequence
// with no effect) at the start of the first defined function, which moves
// the machine code of every later function: wazero places functions one
// after the other at 16-byte boundaries. Tight loops run up to 25% faster
// or slower depending on where their code lands relative to the CPU's
// fetch and cache line boundaries, so two forms that differ only in code
// size elsewhere can measure differently; sampling several paddings
// averages that out.
func padFirstFunc(tb testing.TB, wasm []byte, pad []byte, k int) []byte {
	tb.Helper()
	if k == 0 {
		return wasm
	}
	m := &module{wasm: wasm}
	if err := m.splitSections(); err != nil {
		tb.Fatal(err)
	}
	out := append([]byte(nil), wasmHeader...)
	for _, s := range m.sections {
		if s.id != secCode {
			out = append(out, wasm[s.hdr:s.end]...)
			continue
		}
		r := m.reader(s)
		n := r.u32()
		size := int(r.u32())
		first := newReader(r.bytes(size), 0)
		groups := first.u32()
		for range groups {
			first.u32()
			first.byte()
		}
		if r.err != nil || first.err != nil {
			tb.Fatal("padFirstFunc: malformed code section")
		}
		body := append([]byte(nil), first.b[:first.pos]...)
		for range k {
			body = append(body, pad...)
		}
		body = append(body, first.b[first.pos:]...)
		c := appendU32(nil, n)
		c = appendU32(c, uint32(len(body)))
		c = append(c, body...)
		c = append(c, r.b[r.pos:]...)
		out = appendSection(out, secCode, c)
	}
	return out
}

// setup instantiates l under m, with k pads, and returns a function making
// one call.
func (l benchLoop) setup(tb testing.TB, m benchMode, k int) func() {
	wasm := padFirstFunc(tb, l.wasm(tb), l.pad, k)
	if m.form != nil {
		wasm = mustInstrument(tb, wasm, *m.form)
	}
	in := instantiate(tb, newRuntime(tb, compiler, m.closeOnDone), wasm)
	ctx, cancel := context.WithCancel(withCall(context.Background(), &callState{}))
	tb.Cleanup(cancel)
	fn := in.mod.ExportedFunction(l.fn)
	return func() {
		if in.counter != nil {
			in.counter.Set(DefaultInterval)
		}
		if _, err := fn.Call(ctx, l.arg); err != nil {
			tb.Fatal(err)
		}
	}
}

// BenchmarkTightLoop compares the cost per loop iteration (per call for
// go-fib, per record for go-jsonenc) of the benchLoops under every
// benchMode: "hoisted" is what Instrument produces. Each op is one call;
// ns/iter is the metric to compare.
func BenchmarkTightLoop(b *testing.B) {
	for _, l := range benchLoops {
		for _, m := range benchModes() {
			b.Run(l.name+"/"+m.name, func(b *testing.B) {
				call := l.setup(b, m, 0)
				b.ResetTimer()
				for b.Loop() {
					call()
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/l.per, "ns/iter")
			})
		}
	}
}

// TestTightLoopTable measures the same loops as BenchmarkTightLoop in
// interleaved rounds and prints, per variant, min and median ns/iter with
// their ratio to unprotected, and the median and quartiles of the
// per-round ratios (each variant's time over the same round's unprotected
// time with the same padding), which cancel most of the load drifting
// between rounds. Interleaving makes the comparison usable on a shared,
// noisy machine. It only runs when INSTRUMENT_TABLE=1:
//
//	INSTRUMENT_TABLE=1 go test -run TestTightLoopTable -v ./runtime/instrument/
//
// INSTRUMENT_ROUNDS sets the number of rounds (default 60);
// INSTRUMENT_PADS=n compiles every variant n times with 0, 2, 4, ...
// padding instructions in front (see padFirstFunc) and pools the samples,
// so code placement does not decide the comparison (n=4 takes a few
// minutes); INSTRUMENT_LOOPS and INSTRUMENT_MODES (comma-separated names)
// restrict the table.
func TestTightLoopTable(t *testing.T) {
	if os.Getenv("INSTRUMENT_TABLE") != "1" {
		t.Skip("set INSTRUMENT_TABLE=1 to measure")
	}
	rounds, pads := 60, 1
	if n, err := strconv.Atoi(os.Getenv("INSTRUMENT_ROUNDS")); err == nil && n > 0 {
		rounds = n
	}
	if n, err := strconv.Atoi(os.Getenv("INSTRUMENT_PADS")); err == nil && n > 0 {
		pads = n
	}
	pick := func(env, name string) bool {
		list := os.Getenv(env)
		return list == "" || slices.Contains(strings.Split(list, ","), name)
	}
	type variant struct {
		loop, mode string
		per        float64
		calls      []func() // one per padding
		ns, ratios []float64
		padRatios  [][]float64 // ratios by padding
	}
	var vs []*variant
	for _, l := range benchLoops {
		if !pick("INSTRUMENT_LOOPS", l.name) {
			continue
		}
		for _, m := range benchModes() {
			if m.name != "unprotected" && !pick("INSTRUMENT_MODES", m.name) {
				continue
			}
			v := &variant{loop: l.name, mode: m.name, per: l.per}
			for k := range pads {
				if m.closeOnDone && k > 0 {
					break // 15-200x slower: placement does not matter
				}
				v.calls = append(v.calls, l.setup(t, m, 2*k))
			}
			vs = append(vs, v)
		}
	}
	base := map[string][]float64{} // this round's unprotected time per loop and padding
	for r := 0; r < rounds; r++ {
		for _, v := range vs {
			if v.mode == "closeondone" && r%10 != 0 {
				continue // a few rounds are enough
			}
			for k, call := range v.calls {
				t0 := time.Now()
				call()
				ns := float64(time.Since(t0).Nanoseconds()) / v.per
				v.ns = append(v.ns, ns)
				if v.mode == "unprotected" {
					if k == 0 {
						base[v.loop] = base[v.loop][:0]
					}
					base[v.loop] = append(base[v.loop], ns)
				} else {
					v.ratios = append(v.ratios, ns/base[v.loop][k])
					if len(v.padRatios) <= k {
						v.padRatios = append(v.padRatios, nil)
					}
					v.padRatios[k] = append(v.padRatios[k], ns/base[v.loop][k])
				}
			}
		}
	}
	mins := map[string][2]float64{}
	for _, v := range vs {
		sort.Float64s(v.ns)
		sort.Float64s(v.ratios)
		mn, med := v.ns[0], v.ns[len(v.ns)/2]
		if v.mode == "unprotected" {
			mins[v.loop] = [2]float64{mn, med}
			t.Logf("%-15s %-18s min %8.3f ns/iter          median %8.3f ns/iter", v.loop, v.mode, mn, med)
			continue
		}
		b := mins[v.loop]
		q := func(f float64) float64 { return v.ratios[int(f*float64(len(v.ratios)-1))] }
		byPad := ""
		if len(v.padRatios) > 1 {
			byPad = "  by padding"
			for _, rs := range v.padRatios {
				sort.Float64s(rs)
				byPad += fmt.Sprintf(" %.2f", rs[len(rs)/2])
			}
		}
		t.Logf("%-15s %-18s min %8.3f ns/iter (%5.2fx)  median %8.3f ns/iter (%5.2fx)  per-round ratio median %5.2fx [p25 %5.2f, p75 %5.2f]%s",
			v.loop, v.mode, mn, mn/b[0], med, med/b[1], q(0.5), q(0.25), q(0.75), byPad)
	}
}
