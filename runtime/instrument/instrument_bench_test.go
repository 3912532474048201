package instrument

import (
	"context"
	"os"
	"sort"
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

// BenchmarkTightLoop compares the cost per loop iteration of tight loops:
// unprotected (original module), wazero's WithCloseOnContextDone, and the
// instrumented module with the tick call inline in the loop or hoisted out
// of it. Each op is one call running iters iterations; ns/iter is the metric
// to compare.
func BenchmarkTightLoop(b *testing.B) {
	const iters = 1 << 20
	loops := []struct {
		name string
		wasm func(testing.TB) []byte
		fn   string
	}{
		{"go-xorshift", goGuest, "xorshift"},
		{"go-sum", goGuest, "sumloop"},
		{"wasm-countdown", func(testing.TB) []byte { return modSpinBr() }, "count"},
	}
	modes := []struct {
		name        string
		closeOnDone bool
		instrument  bool
		place       placement
	}{
		{"unprotected", false, false, 0},
		{"closeondone", true, false, 0},
		{"inline", false, true, placeInline},
		{"hoisted", false, true, placeAuto},
	}
	for _, l := range loops {
		for _, m := range modes {
			b.Run(l.name+"/"+m.name, func(b *testing.B) {
				wasm := l.wasm(b)
				if m.instrument {
					wasm = mustInstrument(b, wasm, m.place)
				}
				rt := newRuntime(b, compiler, m.closeOnDone)
				in := instantiate(b, rt, wasm)
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				fn := in.mod.ExportedFunction(l.fn)
				st := &callState{}
				ctx = withCall(ctx, st)
				arg := uint64(iters)
				if l.fn == "count" {
					arg = uint64(uint32(iters))
				}
				b.ResetTimer()
				for b.Loop() {
					if in.counter != nil {
						in.counter.Set(DefaultInterval)
					}
					if _, err := fn.Call(ctx, arg); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/iters, "ns/iter")
			})
		}
	}
}

// TestTightLoopTable measures the same loops as BenchmarkTightLoop in
// interleaved rounds and prints min and median ns/iter per variant with the
// ratio to unprotected. Interleaving and taking the minimum makes the
// comparison usable on a shared, noisy machine. It only runs when
// INSTRUMENT_TABLE=1:
//
//	INSTRUMENT_TABLE=1 go test -run TestTightLoopTable -v ./runtime/instrument/
func TestTightLoopTable(t *testing.T) {
	if os.Getenv("INSTRUMENT_TABLE") != "1" {
		t.Skip("set INSTRUMENT_TABLE=1 to measure")
	}
	const iters, rounds = 1 << 20, 60
	type variant struct {
		loop, mode string
		call       func()
		ns         []float64
	}
	var vs []*variant
	for _, l := range []struct {
		name string
		wasm []byte
		fn   string
	}{
		{"go-xorshift", goGuest(t), "xorshift"},
		{"go-sum", goGuest(t), "sumloop"},
		{"wasm-countdown", modSpinBr(), "count"},
	} {
		for _, m := range []struct {
			name               string
			closeOnDone, instr bool
			place              placement
		}{{"unprotected", false, false, 0}, {"closeondone", true, false, 0}, {"inline", false, true, placeInline}, {"hoisted", false, true, placeAuto}} {
			wasm := l.wasm
			if m.instr {
				wasm = mustInstrument(t, wasm, m.place)
			}
			in := instantiate(t, newRuntime(t, compiler, m.closeOnDone), wasm)
			ctx, cancel := context.WithCancel(withCall(context.Background(), &callState{}))
			t.Cleanup(cancel)
			fn := in.mod.ExportedFunction(l.fn)
			vs = append(vs, &variant{loop: l.name, mode: m.name, call: func() {
				if in.counter != nil {
					in.counter.Set(DefaultInterval)
				}
				if _, err := fn.Call(ctx, iters); err != nil {
					t.Fatal(err)
				}
			}})
		}
	}
	for r := 0; r < rounds; r++ {
		for _, v := range vs {
			if v.mode == "closeondone" && r%10 != 0 {
				continue // 40x slower: a few rounds are enough
			}
			t0 := time.Now()
			v.call()
			v.ns = append(v.ns, float64(time.Since(t0).Nanoseconds())/iters)
		}
	}
	base := map[string][2]float64{}
	for _, v := range vs {
		sort.Float64s(v.ns)
		mn, med := v.ns[0], v.ns[len(v.ns)/2]
		if v.mode == "unprotected" {
			base[v.loop] = [2]float64{mn, med}
		}
		b := base[v.loop]
		t.Logf("%-15s %-12s min %7.3f ns/iter (%5.2fx)   median %7.3f ns/iter (%5.2fx)", v.loop, v.mode, mn, mn/b[0], med, med/b[1])
	}
}
