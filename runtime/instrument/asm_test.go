package instrument

import "fmt"

// A tiny Wasm assembler for the tests: byte builders for sections, vectors
// and instructions, and hand-assembled modules for constructs Go's compiler
// never emits.

// Opcodes used by the hand-assembled modules.
const (
	opUnreachable  = 0x00
	opBlock        = 0x02
	opLoop         = 0x03
	opIf           = 0x04
	opElse         = 0x05
	opEnd          = 0x0b
	opBr           = 0x0c
	opBrIf         = 0x0d
	opBrTable      = 0x0e
	opReturn       = 0x0f
	opCall         = 0x10
	opCallIndirect = 0x11
	opReturnCall   = 0x12
	opDrop         = 0x1a
	opSelectT      = 0x1c
	opLocalGet     = 0x20
	opLocalSet     = 0x21
	opLocalTee     = 0x22
	opGlobalGet    = 0x23
	opGlobalSet    = 0x24
	opTableGet     = 0x25
	opTableSet     = 0x26
	opI32Load      = 0x28
	opI32Store     = 0x36
	opI32Const     = 0x41
	opI64Const     = 0x42
	opI32Eqz       = 0x45
	opI32Eq        = 0x46
	opI32LtU       = 0x49
	opI32GtU       = 0x4b
	opI32GeU       = 0x4f
	opI64Eqz       = 0x50
	opI32Add       = 0x6a
	opI32Sub       = 0x6b
	opI32Mul       = 0x6c
	opI32RemU      = 0x70
	opI32Xor       = 0x73
	opI32Shl       = 0x74
	opI32ShrU      = 0x76
	opI64Add       = 0x7c
	opI64Sub       = 0x7d
	opI64ExtendI32 = 0xad
	opRefNull      = 0xd0
	opRefIsNull    = 0xd1
	opRefFunc      = 0xd2
	opFC           = 0xfc
	opSIMD         = 0xfd

	tI32     = 0x7f
	tI64     = 0x7e
	tV128    = 0x7b
	tFuncref = 0x70
	tEmpty   = 0x40
)

// cat flattens bytes, ints (as single bytes) and byte slices.
func cat(parts ...any) []byte {
	var b []byte
	for _, p := range parts {
		switch v := p.(type) {
		case byte:
			b = append(b, v)
		case int:
			if v < 0 || v > 255 {
				panic(fmt.Sprintf("cat: %d is not a byte", v))
			}
			b = append(b, byte(v))
		case []byte:
			b = append(b, v...)
		default:
			panic(fmt.Sprintf("cat: unsupported %T", p))
		}
	}
	return b
}

func u(v uint32) []byte  { return appendU32(nil, v) }
func s32(v int32) []byte { return appendS32(nil, v) }
func s64(v int64) []byte {
	var b []byte
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if (v == 0 && c&0x40 == 0) || (v == -1 && c&0x40 != 0) {
			return append(b, c)
		}
		b = append(b, c|0x80)
	}
}
func str(s string) []byte { return appendName(nil, s) }

// vec prefixes the items with their count.
func vec(items ...[]byte) []byte {
	b := u(uint32(len(items)))
	for _, it := range items {
		b = append(b, it...)
	}
	return b
}

func sec(id byte, parts ...any) []byte { return appendSection(nil, id, cat(parts...)) }

func wasmModule(sections ...[]byte) []byte {
	b := append([]byte(nil), wasmHeader...)
	for _, s := range sections {
		b = append(b, s...)
	}
	return b
}

func functype(params, results []byte) []byte {
	return cat(0x60, u(uint32(len(params))), params, u(uint32(len(results))), results)
}

// fbody is a code-section entry: locals given as (count, type) pairs.
func fbody(locals [][2]int, code ...any) []byte {
	l := u(uint32(len(locals)))
	for _, p := range locals {
		l = append(l, u(uint32(p[0]))...)
		l = append(l, byte(p[1]))
	}
	c := append(l, cat(code...)...)
	return cat(u(uint32(len(c))), c)
}

func exportFunc(name string, idx uint32) []byte { return cat(str(name), 0x00, u(idx)) }

// simpleModule assembles a module of defined functions (no imports) with one
// memory page; funcs[i] is (type index, body).
type simpleFunc struct {
	typ  uint32
	body []byte
	name string // exported under this name if non-empty
}

func simpleModule(types [][]byte, funcs []simpleFunc, extra ...[]byte) []byte {
	var fsec, csec, esec [][]byte
	for i, f := range funcs {
		fsec = append(fsec, u(f.typ))
		csec = append(csec, f.body)
		if f.name != "" {
			esec = append(esec, exportFunc(f.name, uint32(i)))
		}
	}
	secs := [][]byte{
		sec(secType, vec(types...)),
		sec(secFunction, vec(fsec...)),
		sec(secMemory, vec(cat(0x00, u(1)))),
		sec(secExport, vec(esec...)),
		sec(secCode, vec(csec...)),
	}
	return wasmModule(append(secs, extra...)...)
}

// Hand-assembled test modules. Each is small enough to seed the fuzzer.

var (
	typeVoid  = functype(nil, nil)
	typeI32   = functype([]byte{tI32}, []byte{tI32})
	typeI64   = functype([]byte{tI64}, []byte{tI64})
	typeToI32 = functype(nil, []byte{tI32})
)

// modSpinBr: spin() loops forever with br; count(n) loops n times with br_if.
func modSpinBr() []byte {
	return simpleModule([][]byte{typeVoid, typeI32},
		[]simpleFunc{
			{0, fbody(nil, opLoop, tEmpty, opBr, 0, opEnd, opEnd), "spin"},
			{1, fbody(nil,
				opLoop, tEmpty,
				opLocalGet, 0, opI32Const, 1, opI32Sub, opLocalTee, 0, opBrIf, 0,
				opEnd, opLocalGet, 0, opEnd), "count"},
		})
}

// modSpinBrTable: spin() loops forever through br_table.
func modSpinBrTable() []byte {
	return simpleModule([][]byte{typeVoid},
		[]simpleFunc{{0, fbody(nil,
			opBlock, tEmpty,
			opLoop, tEmpty,
			opI32Const, 0, opBrTable, vec([]byte{0}, []byte{1}), 1,
			opEnd, opEnd, opEnd), "spin"}})
}

// modRecursion: tree(n) = n == 0 ? 1 : tree(n-1) + tree(n-1), with no loop
// anywhere: only the function entry check sees it. tree(62) runs for ages.
// tail(n) recurses forever with return_call (no stack growth at all).
func modRecursion() []byte {
	return simpleModule([][]byte{typeI64},
		[]simpleFunc{
			{0, fbody(nil,
				opLocalGet, 0, opI64Eqz,
				opIf, tI64, opI64Const, 1,
				opElse,
				opLocalGet, 0, opI64Const, 1, opI64Sub, opCall, 0,
				opLocalGet, 0, opI64Const, 1, opI64Sub, opCall, 0,
				opI64Add,
				opEnd, opEnd), "tree"},
			{0, fbody(nil, opLocalGet, 0, opI64Const, 1, opI64Add, opReturnCall, 1, opEnd), "tail"},
		})
}

// modMultiValue: loops whose block types have params and results, plus a
// loop without params but with two results (type-index block type).
func modMultiValue() []byte {
	types := [][]byte{
		functype([]byte{tI32, tI32}, []byte{tI32, tI32}), // 0: loop with params
		functype([]byte{tI32}, []byte{tI32, tI32}),       // 1: sumto
		functype(nil, []byte{tI32, tI64}),                // 2: loop without params, two results
		functype([]byte{tI32}, []byte{tI32, tI64}),       // 3: twores
	}
	// sumto(n) = (n, 1+2+...+n) via a loop carrying (i, acc) as params.
	sumto := fbody([][2]int{{2, tI32}},
		opI32Const, 0, opI32Const, 0,
		opLoop, 0x00, // type 0
		opLocalSet, 2, opLocalSet, 1,
		opLocalGet, 1, opI32Const, 1, opI32Add, opLocalTee, 1,
		opLocalGet, 2, opLocalGet, 1, opI32Add, opLocalTee, 2,
		opLocalGet, 1, opLocalGet, 0, opI32LtU, opBrIf, 0,
		opEnd, opEnd)
	// twores(n) = (n counted down to 0 ... returns (7, 9) after n iterations)
	twores := fbody(nil,
		opLoop, 0x02, // type 2
		opLocalGet, 0, opI32Const, 1, opI32Sub, opLocalTee, 0,
		opI32Const, 0, opI32GtU, opBrIf, 0,
		opLocalGet, 0, opI64Const, 9,
		opEnd, opEnd)
	return simpleModule(types, []simpleFunc{{1, sumto, "sumto"}, {3, twores, "twores"}})
}

// modNested: nested loops with branches from the inner loop to outer labels
// (br, br_if, br_table with mixed depths, branches out of if blocks).
// nested(n) returns a count that depends on every branch going where it
// should.
func modNested() []byte {
	const n, i, j, c = 0, 1, 2, 3
	body := fbody([][2]int{{3, tI32}},
		opBlock, tEmpty, // $exit
		opLoop, tEmpty, // $outer
		opLocalGet, i, opLocalGet, n, opI32GeU, opBrIf, 1, // i >= n: exit
		opLocalGet, i, opI32Const, 1, opI32Add, opLocalSet, i,
		opI32Const, 0, opLocalSet, j,
		opBlock, tEmpty, // $skip
		opLoop, tEmpty, // $inner; labels: 0 inner, 1 skip, 2 outer, 3 exit
		opLocalGet, c, opI32Const, 1, opI32Add, opLocalSet, c,
		opLocalGet, c, opI32Const, s32(1000000), opI32GtU, opBrIf, 3, // runaway guard: exit
		opLocalGet, j, opI32Const, 1, opI32Add, opLocalTee, j,
		opLocalGet, i, opI32LtU,
		opIf, tEmpty, // inside if: 0 if, 1 inner, 2 skip, 3 outer, 4 exit
		opLocalGet, j, opI32Const, 5, opI32RemU, opI32Eqz, opBrIf, 3, // every 5th j: continue outer
		opBr, 1, // continue inner
		opEnd,
		// j >= i: pick by (i+j) % 4: 0 -> skip, 1 -> outer, 2 -> inner? no: exit guard, default skip
		opLocalGet, i, opLocalGet, j, opI32Add, opI32Const, 4, opI32RemU,
		opBrTable, vec([]byte{1}, []byte{2}, []byte{1}), 1,
		opEnd, // inner
		opEnd, // skip
		opLocalGet, c, opI32Const, s32(1000), opI32Add, opLocalSet, c,
		opBr, 0, // continue outer
		opEnd, // outer
		opEnd, // exit
		opLocalGet, c, opEnd)
	return simpleModule([][]byte{typeI32}, []simpleFunc{{0, body, "nested"}})
}

// modTables: an imported function, a funcref table filled by every kind of
// element segment, ref.func in code and in a global initializer, a start
// function, and a name section with function and local names.
func modTables() []byte {
	// Functions: 0 = import env.add1, 1 = start, 2..5 = f2..f5, 6 = dispatch,
	// 7 = viaref.
	types := [][]byte{typeVoid, typeI32}
	imports := vec(cat(str("env"), str("add1"), 0x00, u(1)))
	fn := func(k int32) []byte { // f(x) = add1(x) * k
		return fbody(nil, opLocalGet, 0, opCall, 0, opI32Const, s32(k), opI32Mul, opEnd)
	}
	start := fbody(nil, opI32Const, s32(42), opGlobalSet, 1, opEnd)
	// dispatch(i) = table[i](i + 100)
	dispatch := fbody(nil, opLocalGet, 0, opI32Const, s32(100), opI32Add, opLocalGet, 0, opCallIndirect, u(1), 0, opEnd)
	// viaref(x): table[5] = ref.func f5 (declared by a declarative
	// segment); table[6] = global 0 (ref.func f3); table.init of the passive
	// segments into 7..8; then sum of table[5..8](x) plus global 1 (set to 42
	// by the start function).
	viaref := fbody(nil,
		opI32Const, 5, opRefFunc, 5, opTableSet, 0,
		opI32Const, 6, opGlobalGet, 0, opTableSet, 0,
		opI32Const, 7, opI32Const, 0, opI32Const, 1, opFC, u(12), u(1), 0, // table.init elem 1 -> [7]
		opI32Const, 8, opI32Const, 0, opI32Const, 1, opFC, u(12), u(3), 0, // table.init elem 3 -> [8]
		opLocalGet, 0, opI32Const, 5, opCallIndirect, u(1), 0,
		opLocalGet, 0, opI32Const, 6, opCallIndirect, u(1), 0, opI32Add,
		opLocalGet, 0, opI32Const, 7, opCallIndirect, u(1), 0, opI32Add,
		opLocalGet, 0, opI32Const, 8, opCallIndirect, u(1), 0, opI32Add,
		opGlobalGet, 1, opI32Add,
		opEnd)
	elems := vec(
		cat(0x00, opI32Const, 0, opEnd, vec(u(2), u(3))),                                                    // active, funcidx vector
		cat(0x01, 0x00, vec(u(4))),                                                                          // passive, funcidx vector
		cat(0x02, u(0), opI32Const, 2, opEnd, 0x00, vec(u(4), u(6))),                                        // active with table index
		cat(0x05, tFuncref, vec(cat(opRefFunc, u(2), opEnd))),                                               // passive, expressions
		cat(0x03, 0x00, vec(u(5))),                                                                          // declarative, funcidx vector
		cat(0x04, opI32Const, 10, opEnd, vec(cat(opRefFunc, u(3), opEnd), cat(opRefNull, tFuncref, opEnd))), // active, expressions
		cat(0x06, u(0), opI32Const, 12, opEnd, tFuncref, vec(cat(opRefFunc, u(7), opEnd))),                  // active with table, expressions
		cat(0x07, tFuncref, vec(cat(opRefFunc, u(5), opEnd))),                                               // declarative, expressions
	)
	names := cat(str("name"),
		0x00, u(uint32(len(str("tables")))), str("tables"),
		0x01, u(uint32(len(vec(
			cat(u(0), str("add1")), cat(u(1), str("start")), cat(u(2), str("f2")), cat(u(3), str("f3")),
			cat(u(4), str("f4")), cat(u(5), str("f5")), cat(u(6), str("dispatch")), cat(u(7), str("viaref")))))),
		vec(cat(u(0), str("add1")), cat(u(1), str("start")), cat(u(2), str("f2")), cat(u(3), str("f3")),
			cat(u(4), str("f4")), cat(u(5), str("f5")), cat(u(6), str("dispatch")), cat(u(7), str("viaref"))),
		0x02, u(uint32(len(vec(cat(u(6), vec(cat(u(0), str("slot")))))))),
		vec(cat(u(6), vec(cat(u(0), str("slot"))))),
	)
	return wasmModule(
		sec(secType, vec(types...)),
		sec(secImport, imports),
		sec(secFunction, vec(u(0), u(1), u(1), u(1), u(1), u(1), u(1))),
		sec(secTable, vec(cat(tFuncref, 0x00, u(16)))),
		sec(secMemory, vec(cat(0x00, u(1)))),
		sec(secGlobal, vec(cat(tFuncref, 0x00, opRefFunc, u(3), opEnd), cat(tI32, 0x01, opI32Const, 0, opEnd))),
		sec(secExport, vec(exportFunc("dispatch", 6), exportFunc("viaref", 7), cat(str("tbl"), 0x01, u(0)))),
		sec(secStart, u(1)),
		sec(secElement, elems),
		sec(secCode, vec(start, fn(2), fn(3), fn(4), fn(5), dispatch, viaref)),
		sec(secCustom, names),
	)
}

// modSIMD exercises SIMD immediates inside a loop: v128.const, shuffle,
// lane ops, loads and stores with memarg and lane. simd(n) returns a lane.
func modSIMD() []byte {
	var k16 [16]byte
	for i := range k16 {
		k16[i] = byte(i + 1)
	}
	var shuf [16]byte
	for i := range shuf {
		shuf[i] = byte(15 - i)
	}
	body := fbody([][2]int{{1, tV128}},
		opSIMD, u(12), k16[:], opLocalSet, 1,
		opLoop, tEmpty,
		opI32Const, 16, opLocalGet, 1, opLocalGet, 1, opLocalGet, 1, opSIMD, u(13), shuf[:], opSIMD, u(0x6e), // i8x16.add
		opSIMD, u(11), 4, 0, // v128.store align=4 offset=0
		opI32Const, 16, opSIMD, u(0), 4, 0, opLocalSet, 1, // v128.load
		opI32Const, 16, opLocalGet, 1, opSIMD, u(0x5a), 2, 0, 3, // v128.store32_lane lane 3
		opI32Const, 16, opLocalGet, 1, opSIMD, u(0x56), 2, 0, 1, opLocalSet, 1, // v128.load32_lane lane 1
		opLocalGet, 0, opI32Const, 1, opI32Sub, opLocalTee, 0, opBrIf, 0,
		opEnd,
		opLocalGet, 1, opSIMD, u(0x1b), 2, // i32x4.extract_lane 2
		opLocalGet, 1, opSIMD, u(0x15), 1, opI32Add, // i8x16.extract_lane_s 1
		opEnd)
	return simpleModule([][]byte{typeI32}, []simpleFunc{{0, body, "simd"}})
}

// modBulk uses the 0xFC bulk memory ops, typed select, sign extension and
// saturating truncation, with an existing () -> () type to reuse.
func modBulk() []byte {
	body := fbody(nil,
		opI32Const, 0, opLocalGet, 0, opI32Const, s32(100), opFC, u(11), 0, // memory.fill
		opI32Const, s32(200), opI32Const, 0, opI32Const, s32(100), opFC, u(10), 0, 0, // memory.copy
		opI32Const, s32(250), opI32Load, 2, 0,
		opI32Const, 7, opI32Const, 1, opSelectT, vec([]byte{tI32}),
		0xc0,                                                     // i32.extend8_s
		0x44, 0, 0, 0, 0, 0, 0, 0xf0, 0x7f, opFC, u(2), opI32Add, // f64 +inf, i32.trunc_sat_f64_s
		opEnd)
	return simpleModule([][]byte{typeI32, typeVoid}, []simpleFunc{
		{0, body, "bulk"},
		{1, fbody(nil, opEnd), "noop"},
	})
}

// modExits exercises every way out of a call-free loop (a region, where
// the countdown lives in a local; see code.go) and the invariant that the
// countdown global is exact whenever the host runs: return, br and br_if
// to the function's label, br_table mixing inner and outer targets,
// return_call, a region inside a loop with calls, host calls between
// regions, unreachable and an out-of-bounds trap. floats keeps float,
// NaN and v128 bit patterns in locals across ticks (the tick path
// rewrites every local, see buildRefresh).
//
// Functions: 0 = import env.peek (records the countdown), 1 inner, 2
// retin, 3 brfn, 4 brtbl, 5 tailout, 6 nestcall, 7 peek, 8 floats, 9
// trapin, 10 oob.
func modExits() []byte {
	types := [][]byte{
		typeVoid,                             // 0
		typeI32,                              // 1
		functype([]byte{tI32}, nil),          // 2
		functype([]byte{tI32}, []byte{tI64}), // 3
	}
	dec0 := cat(opLocalGet, 0, opI32Const, 1, opI32Sub, opLocalTee, 0) // n--, leaves n
	// inner(n): counts n down to 0 in a loop, returns 0.
	inner := fbody(nil, opLoop, tEmpty, dec0, opBrIf, 0, opEnd, opLocalGet, 0, opEnd)
	// retin(n): calls inner(1) first, then returns 2*i from inside the loop
	// once i reaches n.
	retin := fbody([][2]int{{1, tI32}},
		opI32Const, 1, opCall, 1, opDrop,
		opLoop, tEmpty,
		opLocalGet, 1, opI32Const, 1, opI32Add, opLocalTee, 1,
		opLocalGet, 0, opI32GeU,
		opIf, tEmpty, opLocalGet, 1, opI32Const, 2, opI32Mul, opReturn, opEnd,
		opBr, 0,
		opEnd, opI32Const, s32(-1), opEnd)
	// brfn(n): leaves the function with 7 through br to its label.
	brfn := fbody(nil,
		opLoop, tEmpty, dec0, opI32Eqz,
		opIf, tEmpty, opI32Const, 7, opBr, 2, opEnd,
		opBr, 0, opEnd, opI32Const, 0, opEnd)
	// brtbl(n), n >= 1: br_table continues the loop, leaves it for the
	// enclosing block when n reaches 0, or returns when n reaches 50.
	brtbl := fbody(nil,
		opBlock, tEmpty, opLoop, tEmpty,
		dec0, opI32Const, 50, opI32Eq, opI32Const, 1, opI32Shl,
		opLocalGet, 0, opI32Eqz, opI32Add,
		opBrTable, vec([]byte{0}, []byte{1}, []byte{2}), 0,
		opEnd, opEnd,
		opI32Const, 0, opLocalGet, 0, opI32Store, 2, 0, opEnd)
	// tailout(n), n > 10: counts down, then tail-calls inner(10) from
	// inside the loop.
	tailout := fbody(nil,
		opLoop, tEmpty, dec0, opI32Const, 10, opI32GtU, opBrIf, 0,
		opLocalGet, 0, opReturnCall, 1,
		opEnd, opI32Const, 0, opEnd)
	// nestcall(n): an outer loop calling inner(n) around a call-free inner
	// loop that continues the outer loop or leaves for a block.
	nestcall := fbody([][2]int{{1, tI32}},
		opLoop, tEmpty,
		opLocalGet, 0, opCall, 1, opDrop,
		opBlock, tEmpty, opLoop, tEmpty, // labels: 0 inner loop, 1 block, 2 outer loop
		opLocalGet, 1, opI32Const, 1, opI32Add, opLocalTee, 1,
		opI32Const, 7, opI32RemU, opI32Eqz, opBrIf, 2,
		opLocalGet, 1, opI32Const, 3, opI32RemU, opI32Eqz, opBrIf, 1,
		opBr, 0,
		opEnd, opEnd,
		dec0, opBrIf, 0,
		opEnd, opLocalGet, 1, opEnd)
	// peek(n): a loop of n, a host call, a loop of 5, a host call.
	peek := fbody(nil,
		opLoop, tEmpty, dec0, opBrIf, 0, opEnd,
		opCall, 0,
		opI32Const, 5, opLocalSet, 0,
		opLoop, tEmpty, dec0, opBrIf, 0, opEnd,
		opCall, 0,
		opI32Const, 1, opEnd)
	// floats(n): NaNs with payloads, a v128 and an i64 in locals survive n
	// iterations; returns their bits xored together.
	var v128 [16]byte
	for i := range v128 {
		v128[i] = byte(0xa0 + i)
	}
	floats := fbody([][2]int{{1, 0x7d}, {1, 0x7c}, {1, tV128}, {1, tI64}},
		0x43, 0x01, 0x00, 0xa0, 0xff, opLocalSet, 1, // f32.const (bits 0xffa00001: negative signalling NaN)
		0x44, 0x23, 0x01, 0, 0, 0, 0, 0xf4, 0x7f, opLocalSet, 2, // f64.const (bits 0x7ff4000000000123)
		opSIMD, u(12), v128[:], opLocalSet, 3,
		opI64Const, s64(0x123456788), opLocalSet, 4,
		opLoop, tEmpty, dec0, opBrIf, 0, opEnd,
		opLocalGet, 1, 0xbc, opI64ExtendI32, // i32.reinterpret_f32, i64.extend_i32_u
		opLocalGet, 2, 0xbd, 0x85, // i64.reinterpret_f64, i64.xor
		opLocalGet, 3, opSIMD, u(0x1d), 1, 0x85, // i64x2.extract_lane 1, i64.xor
		opLocalGet, 4, 0x85,
		opEnd)
	// trapin(n), oob(n): trap inside the loop when n reaches 0, through
	// unreachable or an out-of-bounds load.
	trapAt := func(trap ...any) []byte {
		return fbody(nil,
			opLoop, tEmpty, dec0, opI32Eqz,
			opIf, tEmpty, cat(trap...), opEnd,
			opBr, 0, opEnd, opI32Const, 0, opEnd)
	}
	trapin := trapAt(opUnreachable)
	oob := trapAt(opI32Const, s32(-16), opI32Load, 2, 0, opDrop)
	exports := [][]byte{}
	for i, name := range []string{"inner", "retin", "brfn", "brtbl", "tailout", "nestcall", "peek", "floats", "trapin", "oob"} {
		exports = append(exports, exportFunc(name, uint32(i+1)))
	}
	return wasmModule(
		sec(secType, vec(types...)),
		sec(secImport, vec(cat(str("env"), str("peek"), 0x00, u(0)))),
		sec(secFunction, vec(u(1), u(1), u(1), u(2), u(1), u(1), u(1), u(3), u(1), u(1))),
		sec(secMemory, vec(cat(0x00, u(1)))),
		sec(secExport, vec(exports...)),
		sec(secCode, vec(inner, retin, brfn, brtbl, tailout, nestcall, peek, floats, trapin, oob)),
	)
}

// handModules lists the hand-assembled modules by name.
func handModules() map[string][]byte {
	return map[string][]byte{
		"spinbr":     modSpinBr(),
		"spinbrtbl":  modSpinBrTable(),
		"recursion":  modRecursion(),
		"multivalue": modMultiValue(),
		"nested":     modNested(),
		"tables":     modTables(),
		"simd":       modSIMD(),
		"bulk":       modBulk(),
		"exits":      modExits(),
	}
}
