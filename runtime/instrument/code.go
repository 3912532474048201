package instrument

// Instruction kinds: how to skip an opcode's immediates and whether the
// rewrite has to touch it.
const (
	kInvalid  = iota // not a Wasm 2.0 opcode
	kNone            // no immediates
	kBlock           // block, if: block type
	kLoop            // loop: block type; gets a countdown check
	kElse            // else
	kEnd             // end
	kBr              // br, br_if: label depth
	kBrTable         // br_table: vector of label depths + default
	kCall            // call, return_call: function index
	kU32x2           // call_indirect, return_call_indirect: type index, table index
	kU32             // local.*, global.*, table.get/set, memory.size/grow
	kMemarg          // loads and stores
	kI32             // i32.const
	kI64             // i64.const
	kF32             // f32.const
	kF64             // f64.const
	kSelectT         // typed select: vector of value types
	kRefNull         // ref.null: reference type
	kRefFunc         // ref.func: function index
	kPrefixFC        // 0xFC: saturating truncation, bulk memory, tables
	kPrefixFD        // 0xFD: SIMD
	kThreads         // 0xFE: threads and atomics
	kEH              // exception handling
)

var opKinds = func() (k [256]byte) {
	set := func(kind byte, ops ...int) {
		for _, op := range ops {
			k[op] = kind
		}
	}
	set(kNone, 0x00, 0x01, 0x0f, 0x1a, 0x1b, 0xd1)
	set(kBlock, 0x02, 0x04)
	set(kLoop, 0x03)
	set(kElse, 0x05)
	set(kEnd, 0x0b)
	set(kBr, 0x0c, 0x0d)
	set(kBrTable, 0x0e)
	set(kCall, 0x10, 0x12)
	set(kU32x2, 0x11, 0x13)
	set(kEH, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x18, 0x19, 0x1f)
	set(kSelectT, 0x1c)
	set(kU32, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x3f, 0x40)
	for op := 0x28; op <= 0x3e; op++ {
		k[op] = kMemarg
	}
	set(kI32, 0x41)
	set(kI64, 0x42)
	set(kF32, 0x43)
	set(kF64, 0x44)
	for op := 0x45; op <= 0xc4; op++ { // numeric ops and sign extension
		k[op] = kNone
	}
	set(kRefNull, 0xd0)
	set(kRefFunc, 0xd2)
	set(kPrefixFC, 0xfc)
	set(kPrefixFD, 0xfd)
	set(kThreads, 0xfe)
	return k
}()

// Immediates of SIMD (0xFD) opcodes 0..255.
const (
	simdNone    = iota + 1
	simdMemarg  // loads, stores, load*_zero
	simdMemLane // load*_lane, store*_lane: memarg + lane index
	simdLane    // extract_lane, replace_lane: lane index
	simdBytes16 // v128.const, i8x16.shuffle
)

var simdKinds = func() (k [256]byte) {
	for op := range k {
		k[op] = simdNone
	}
	for op := 0x00; op <= 0x0b; op++ {
		k[op] = simdMemarg
	}
	k[0x0c], k[0x0d] = simdBytes16, simdBytes16
	for op := 0x15; op <= 0x22; op++ {
		k[op] = simdLane
	}
	for op := 0x54; op <= 0x5b; op++ {
		k[op] = simdMemLane
	}
	k[0x5c], k[0x5d] = simdMemarg, simdMemarg
	// Opcodes left unassigned by the SIMD proposal.
	for _, op := range []int{0x9a, 0xa2, 0xa5, 0xa6, 0xaf, 0xb0, 0xb2, 0xb3, 0xb4, 0xbb,
		0xc2, 0xc5, 0xc6, 0xcf, 0xd0, 0xd2, 0xd3, 0xd4, 0xe2, 0xee} {
		k[op] = 0
	}
	return k
}()

// frame is one open control instruction of the input while its body is
// being rewritten. Wrapping a loop in the hoisted form opens four labels in
// the output where the input had one, so branch depths are recomputed from
// output label positions rather than shifted by a constant.
type frame struct {
	outIdx    int32 // position of the frame's branch target in the output label stack
	outLabels int32 // labels the frame occupies in the output
	hoisted   bool  // loop rewritten in the hoisted form; its end needs a tail
	local     bool  // loop checked on the counter local; its tail uses the local form
	region    bool  // loop that opened a region: its end writes the local back
	isIf      bool
	copies    int // unrolled loop: copies of the body still to emit after this one
	bodyAt    int // unrolled loop: input offset of the body
}

// Where the countdown lives.
//
// wazero keeps a mutable global in memory, so a check on the global costs
// a load and a store, and a tight loop carries its countdown through
// memory from one iteration to the next. Inside a loop that contains no
// call, the rewrite therefore keeps the countdown in a local instead, which
// wazero keeps in a register:
//
//   - A region is a loop that contains no call or call_indirect at any
//     depth (return_call and return_call_indirect leave the function and do
//     not count) and is not itself inside a region. Every function with a
//     region gets one new i32 local $c, declared after all its other locals
//     so no index moves.
//   - Entering a region (just before the loop, or its hoisted wrapper):
//     $c = global. Every check inside the region (the region's loop and the
//     loops nested in it) decrements and tests $c only.
//   - Every way out of the region writes $c back (global = $c): falling
//     out of the loop's end, br, br_if and br_table to a label outside the
//     loop (including the function's, i.e. returning), return,
//     return_call, return_call_indirect and unreachable; and so does the
//     tick path, before it calls tick. A taken or untaken br_if alike: an
//     extra write-back is harmless, $c stays the countdown.
//   - After tick returns, the reset goes to both $c and the global.
//   - Everything outside regions (function entry checks, loops with calls
//     in them, all calls) works on the global directly, as before. Keeping
//     the countdown in a local across calls would need a write-back before
//     and a reload after every call, which costs call-heavy code (Go's,
//     where every call sits in a function's dispatch loop) more than it
//     saves: with a local per function, Go's fib went from 1.05x to
//     1.11-1.18x of uninstrumented, JSON encoding from 1.04x to 1.10x.
//
// Invariant: inside a region $c is the true remaining countdown and the
// global may lag behind it; everywhere else the global is. No control
// leaves a region without a write-back, and a region contains no call but
// tick's (preceded by one), so whenever control is outside the guest's own
// instructions (in tick, in any other host function, in the host after the
// call returned) the global holds the true countdown, and
// ticks*Interval + (Interval - global) stays exact. Only a trap from an
// instruction other than unreachable (out-of-bounds access, division by
// zero, ...) inside a region leaves the decrements since the region was
// entered or last ticked out of the global: the call is undercounted by at
// most Interval+unroll (see Unrolling), on an instance the host discards
// anyway.
//
// Regions by themselves change neither the sequence of decrements nor the
// ticks; unrolling (below) moves ticks but not decrements. Work units are
// identical to the all-global form's either way.

// Unrolling.
//
// In a loop whose body is a few instructions, the check's compare and
// branch cost as much as the body (a one-add loop runs at twice its
// uninstrumented time whether the countdown is in a register or not).
// A small innermost loop in a region (no call and no loop inside, body at
// most maxUnrollBody bytes, no params) is therefore unrolled into
// config.unroll copies of its body inside the hoisted wrapper:
//
//	block $done (bt); loop $restart; block $tick; loop $L (bt)
//	  check                          ;; $c -= 1; br_if $tick if $c <= 0
//	  block $n  body  br $done  end  ;; body's branches to the loop go to $n's end
//	  $c -= 1
//	  ...                            ;; the same for every copy but the last
//	  body                           ;; branches to the loop go to $L
//	end ... (tail as for any hoisted loop)
//
// Every iteration still decrements $c once, so work units stay exact, but
// only every config.unroll-th iteration tests it: a tick can come up to
// unroll-1 iterations late, with the countdown down to -(unroll-1). Resets
// therefore add Interval to the countdown instead of setting it, so that
// every tick stands for exactly Interval checks whatever the countdown was
// when it ran; tick counts can differ by one from the other forms' for the
// same work.

// maxUnrollBody bounds the body (in input bytes) of a loop that is
// unrolled: the copies grow the code, and only loops whose body costs
// about as much as the check gain from it.
const maxUnrollBody = 128

// defaultUnroll is config.unroll's default: on the benchmarks' one-add
// loops, 2 copies brought the check's cost from 1.9x to 1.02x of the
// uninstrumented loop, and 4 copies gained another 25% on Go's loop (whose
// dispatch the copies also spread out) for 2.7 KB more code in a 3 MB Go
// module.
const defaultUnroll = 4

// seqs holds the check sequences for one home of the countdown. The
// global's are built once; the local's name the function's $c and are
// rebuilt for each function that has a region.
type seqs struct {
	check     []byte // inline check: decrement, and if <= 0 call tick and reset
	checkHead []byte // hoisted check: decrement, and br_if 1 if <= 0
	tail      []byte // closes a hoisted loop's wrapper after the loop's end
}

// codeWriter rewrites function bodies. It is reused across functions so the
// control stack and the sequences are allocated once.
type codeWriter struct {
	m      *module
	out    []byte
	frames []frame
	outN   int32 // labels open in the output

	global, local seqs
	save, load    []byte // global = $c; $c = global (for the current function's $c)
	decr          []byte // $c -= 1, starting an unrolled copy
	refresh       []byte // see buildRefresh

	loops  []loopInfo  // the current function's loops, in order (see loopCalls)
	scan   []scanBlock // loopCalls' control stack
	region int         // index in frames of the loop that opened the current region, or -1
}

func (m *module) newCodeWriter() *codeWriter {
	c := &codeWriter{m: m}
	c.buildSeqs(&c.global, false, 0)
	return c
}

// buildSeqs (re)builds s for the global, or for the local $c with index idx
// (after c.save and c.refresh are set for it).
func (c *codeWriter) buildSeqs(s *seqs, local bool, idx uint32) {
	m := c.m
	g := m.counter
	op := func(b []byte, op byte, imm uint32) []byte { return appendU32(append(b, op), imm) }
	// dec decrements the countdown and leaves "countdown <= 0" on the
	// stack. Signed <= 0, not == 0: a countdown left at 0 or below by an
	// aborted call must not run 2^32 more headers before the next tick.
	dec := func(b []byte) []byte {
		if local {
			b = op(b, 0x20, idx)            // local.get $c
			b = append(b, 0x41, 0x01, 0x6b) // i32.const 1; i32.sub
			b = op(b, 0x22, idx)            // local.tee $c
		} else {
			b = op(b, 0x23, g)              // global.get $g
			b = append(b, 0x41, 0x01, 0x6b) // i32.const 1; i32.sub
			b = op(op(b, 0x24, g), 0x23, g) // global.set $g; global.get $g
		}
		return append(b, 0x41, 0x00, 0x4c) // i32.const 0; i32.le_s
	}
	// tickReset calls tick and resets the countdown to v. For the local,
	// the tick path first refreshes the locals (see buildRefresh) and
	// writes $c back, so tick (and an abort) sees the true count, and
	// resets both $c and the global: the global then lags behind $c only
	// by the decrements since the last tick, which bounds what a trap can
	// leave unmetered.
	tickReset := func(b []byte, v int32) []byte {
		if local {
			b = append(b, c.refresh...)
			b = append(b, c.save...)
		}
		b = op(b, 0x10, m.funcImports) // call $tick
		if m.cfg.counter == counterGlobal {
			// The form before regions: reset to v.
			b = append(b, 0x41)
			b = appendS32(b, v)   // i32.const v
			return op(b, 0x24, g) // global.set $g
		}
		// Add v rather than set it: the countdown may be below 0 when an
		// unrolled loop's unchecked decrements took it there, and each
		// tick must stand for exactly Interval checks.
		if local {
			b = op(b, 0x20, idx) // local.get $c
		} else {
			b = op(b, 0x23, g) // global.get $g
		}
		b = append(b, 0x41)
		b = appendS32(b, v) // i32.const v
		b = append(b, 0x6a) // i32.add
		if local {
			b = op(b, 0x22, idx) // local.tee $c
		}
		return op(b, 0x24, g) // global.set $g
	}
	s.check = dec(s.check[:0])
	s.check = append(s.check, 0x04, 0x40) // if (empty)
	s.check = tickReset(s.check, m.cfg.interval)
	s.check = append(s.check, 0x0b) // end

	s.checkHead = dec(s.checkHead[:0])
	s.checkHead = append(s.checkHead, 0x0d, 0x01) // br_if $tick

	// After the original loop's end, inside block $tick:
	//   br $done; end; call $tick; add Interval+1 to the countdown;
	//   br $restart; end; unreachable; end
	// The reset is Interval+1 because re-entering the loop passes its check
	// once more; that leaves the countdown exactly where the inline form
	// leaves it, so metering does not depend on the placement.
	s.tail = append(s.tail[:0], 0x0c, 0x02, 0x0b)
	s.tail = tickReset(s.tail, m.cfg.interval+1)
	s.tail = append(s.tail, 0x0c, 0x00, 0x0b, 0x00, 0x0b)
}

// code rewrites the code section.
func (m *module) code(r *reader) []byte {
	n := r.count(2)
	if r.err == nil && uint32(n) != m.definedFuncs {
		r.failAt(0, "the code section has %d bodies but the function section declares %d functions", n, m.definedFuncs)
		return nil
	}
	c := m.newCodeWriter()
	c.out = make([]byte, 0, len(r.b)+len(r.b)/4+64)
	c.out = appendU32(c.out, uint32(n))
	var body []byte
	for i := 0; i < n && r.err == nil; i++ {
		size := int(r.u32())
		b := r.bytes(size)
		if r.err != nil {
			break
		}
		br := newReader(b, r.off+r.pos-size)
		br.fn = int(m.funcImports) + i
		body = c.function(br, i, body[:0])
		if br.err != nil {
			r.err = br.err
			break
		}
		c.out = appendU32(c.out, uint32(len(body)))
		c.out = append(c.out, body...)
	}
	r.end("code")
	return c.out
}

// function rewrites the body (locals and expression) of defined function i
// into out.
func (c *codeWriter) function(r *reader, i int, out []byte) []byte {
	n := r.count(2)
	groupsAt := r.pos
	var declared uint64
	for j := 0; j < n && r.err == nil; j++ {
		declared += uint64(r.u32())
		r.valType()
	}
	if r.err != nil {
		return out
	}
	exprAt := r.pos
	c.loops = c.loops[:0]
	idx, ok := c.counterLocal(i, declared)
	if ok && c.loopCalls(&reader{b: r.b, pos: exprAt, off: r.off, fn: r.fn}) {
		// The function has a region: declare $c as one more local group
		// (1 x i32) after the others.
		out = appendU32(out, uint32(n+1))
		out = append(out, r.b[groupsAt:exprAt]...)
		out = append(out, 0x01, 0x7f)
		op := func(b []byte, op byte, imm uint32) []byte { return appendU32(append(b, op), imm) }
		c.save = op(op(c.save[:0], 0x20, idx), 0x24, c.m.counter) // local.get $c; global.set $g
		c.load = op(op(c.load[:0], 0x23, c.m.counter), 0x21, idx) // global.get $g; local.set $c
		c.decr = op(c.decr[:0], 0x20, idx)
		c.decr = op(append(c.decr, 0x41, 0x01, 0x6b), 0x21, idx) // local.get $c; i32.const 1; i32.sub; local.set $c
		c.buildRefresh(i, r.b[groupsAt:exprAt])
		c.buildSeqs(&c.local, true, idx)
	} else {
		c.loops = c.loops[:0] // no regions
		out = append(out, r.b[:exprAt]...)
	}
	return c.expr(r, out)
}

// counterLocal returns the index a new local of defined function i gets,
// and whether regions may be used at all (under counterAuto, when the index
// fits).
func (c *codeWriter) counterLocal(i int, declared uint64) (uint32, bool) {
	m := c.m
	if m.cfg.counter != counterAuto || i >= len(m.funcTypes) || m.funcTypes[i] >= uint32(len(m.types)) {
		return 0, false
	}
	idx := uint64(m.types[m.funcTypes[i]].params) + declared
	if idx >= 1<<32-1 {
		return 0, false
	}
	return uint32(idx), true
}

// loopCalls fills c.loops for the expression at r: for each loop in order,
// whether it contains a call or call_indirect or another loop (at any
// depth), and its body's size. It reports whether any loop is call-free.
// Malformed code just ends the scan: the rewrite reports it.
func (c *codeWriter) loopCalls(r *reader) bool {
	st := append(c.scan[:0], scanBlock{loop: -1}) // the function's own block
	defer func() { c.scan = st[:0] }()
	any := false
	for r.more() {
		at := r.pos
		op := r.byte()
		switch opKinds[op] {
		case kBlock:
			r.blockType(c.m)
			st = append(st, scanBlock{loop: -1})
		case kLoop:
			r.blockType(c.m)
			st[len(st)-1].loops = true
			st = append(st, scanBlock{loop: int32(len(c.loops)), start: r.pos})
			c.loops = append(c.loops, loopInfo{})
		case kEnd:
			top := st[len(st)-1]
			st = st[:len(st)-1]
			if top.loop >= 0 {
				c.loops[top.loop] = loopInfo{callFree: !top.calls, nested: top.loops, size: at - top.start}
				any = any || !top.calls
			}
			if len(st) == 0 {
				return any
			}
			p := &st[len(st)-1]
			p.calls, p.loops = p.calls || top.calls, p.loops || top.loops
		case kCall, kU32x2:
			r.u32()
			if opKinds[op] == kU32x2 {
				r.u32()
			}
			if op == 0x10 || op == 0x11 { // call, call_indirect
				st[len(st)-1].calls = true
			}
		case kBr, kRefFunc:
			r.u32()
		case kBrTable:
			n := r.count(1)
			for i := 0; i <= n && r.err == nil; i++ {
				r.u32()
			}
		case kElse:
		default:
			r.immediates(op, at)
		}
	}
	return false
}

// scanBlock is an open block during loopCalls.
type scanBlock struct {
	loop  int32 // index in loops, or -1 for other blocks
	start int   // a loop's body offset
	calls bool  // a call was seen inside
	loops bool  // a loop was seen inside
}

// loopInfo is what loopCalls learns about a loop.
type loopInfo struct {
	callFree bool // no call or call_indirect inside
	nested   bool // another loop inside
	size     int  // body bytes, up to the loop's end
}

// expr rewrites a function's expression; r is positioned after the locals.
func (c *codeWriter) expr(r *reader, out []byte) []byte {
	if !entersLoopFirst(r.b[r.pos:]) {
		out = append(out, c.global.check...)
	}
	c.frames = append(c.frames[:0], frame{outIdx: 0, outLabels: 1})
	c.outN = 1
	c.region = -1
	loops := 0
	copied := r.pos // input up to here is already in out
	b := r.b
	flush := func(upto int) {
		out = append(out, b[copied:upto]...)
	}
	// insert emits the input up to at, then seq; the instruction at at is
	// still to be copied.
	insert := func(at int, seq []byte) {
		flush(at)
		out = append(out, seq...)
		copied = at
	}
	// leaves reports whether a branch to label depth d (validated) leaves
	// the current region.
	leaves := func(d uint32) bool {
		return c.region >= 0 && len(c.frames)-1-int(d) < c.region
	}
	for r.err == nil {
		if r.pos >= len(b) {
			r.failAt(r.pos, "function body ends without a final end opcode")
			break
		}
		at := r.pos
		op := b[at]
		r.pos++
		switch opKinds[op] {
		case kBlock:
			r.blockType(c.m)
			c.frames = append(c.frames, frame{outIdx: c.outN, outLabels: 1, isIf: op == 0x04})
			c.outN++
		case kLoop:
			btAt := r.pos
			params, _ := r.blockType(c.m)
			if r.err != nil {
				break
			}
			flush(at)
			bt := b[btAt:r.pos]
			f := frame{local: c.region >= 0}
			var info loopInfo
			if loops < len(c.loops) {
				info = c.loops[loops]
			}
			if c.region < 0 && info.callFree {
				// Enter a region.
				out = append(out, c.load...)
				f.local, f.region = true, true
				c.region = len(c.frames)
			}
			loops++
			s := &c.global
			if f.local {
				s = &c.local
			}
			// Hoisted form: the loop body only decrements and leaves
			// through "br_if $tick"; the call sits outside the loop, so
			// wazero does not treat the loop as containing a call (which
			// makes it spill the loop's live values around it on every
			// iteration). Re-entering through $restart is only equivalent
			// to branching back to the loop when the loop takes no params:
			// loops with params get the inline form.
			if params == 0 && c.m.cfg.place == placeAuto {
				// block $done (bt); loop $restart; block $tick; loop $L (bt)
				// bt has no params, so it doubles as $done's type: the
				// loop's results leave $done through "br $done".
				out = append(out, 0x02)
				out = append(out, bt...)
				out = append(out, 0x03, 0x40, 0x02, 0x40, 0x03)
				out = append(out, bt...)
				out = append(out, s.checkHead...)
				f.outIdx, f.outLabels, f.hoisted = c.outN+3, 4, true
				if k := c.m.cfg.unroll; k > 1 && f.local && !info.nested && info.size <= maxUnrollBody {
					// Unrolled: the first copy of the body goes in
					// block $n (see Unrolling).
					out = append(out, 0x02, 0x40)
					f.outIdx, f.outLabels = c.outN+4, 5
					f.copies, f.bodyAt = k-1, r.pos
				}
			} else {
				out = append(out, 0x03)
				out = append(out, bt...)
				out = append(out, s.check...)
				f.outIdx, f.outLabels = c.outN, 1
			}
			c.frames = append(c.frames, f)
			c.outN += f.outLabels
			copied = r.pos
		case kElse:
			if !c.frames[len(c.frames)-1].isIf {
				r.failAt(at, "else without a matching if")
			}
			c.frames[len(c.frames)-1].isIf = false
		case kEnd:
			f := c.frames[len(c.frames)-1]
			c.frames = c.frames[:len(c.frames)-1]
			c.outN -= f.outLabels
			if f.copies > 0 {
				// End of an unrolled copy but the last: falling out of the
				// body leaves the loop (br $done); "end" of $n is where
				// the copy's branches to the loop continue. Then the next
				// copy, from the body's start again.
				flush(at)
				out = append(out, 0x0c, 0x04, 0x0b) // br $done; end
				out = append(out, c.decr...)
				if f.copies--; f.copies > 0 {
					out = append(out, 0x02, 0x40) // block $n
					f.outIdx, f.outLabels = c.outN+4, 5
				} else {
					f.outIdx, f.outLabels = c.outN+3, 4
				}
				c.frames = append(c.frames, f)
				c.outN += f.outLabels
				r.pos, copied = f.bodyAt, f.bodyAt
				break
			}
			if f.hoisted || f.region {
				flush(r.pos)
				copied = r.pos
			}
			if f.hoisted {
				if f.local {
					out = append(out, c.local.tail...)
				} else {
					out = append(out, c.global.tail...)
				}
			}
			if f.region {
				out = append(out, c.save...) // fall out of the region
				c.region = -1
			}
			if len(c.frames) == 0 {
				if r.pos != len(b) {
					r.failAt(r.pos, "%d bytes after the function's final end", len(b)-r.pos)
				}
				flush(r.pos)
				return out
			}
		case kBr:
			d := r.u32()
			nd := c.depth(r, at, d)
			if r.err != nil {
				break
			}
			if leaves(d) {
				insert(at, c.save)
			}
			if nd != d {
				flush(at)
				out = append(out, op)
				out = appendU32(out, nd)
				copied = r.pos
			}
		case kBrTable:
			vecAt := r.pos
			cnt := r.count(1)
			changed, leave := false, false
			for i := 0; i <= cnt && r.err == nil; i++ { // targets + default
				d := r.u32()
				if c.depth(r, at, d) != d {
					changed = true
				}
				leave = leave || leaves(d)
			}
			if r.err != nil {
				break
			}
			if leave {
				insert(at, c.save)
			}
			if changed {
				flush(at)
				out = append(out, op)
				out = appendU32(out, uint32(cnt))
				r.pos = vecAt
				r.u32()
				for i := 0; i <= cnt; i++ {
					out = appendU32(out, c.depth(r, at, r.u32()))
				}
				copied = r.pos
			}
		case kCall, kU32x2: // call, return_call; call_indirect, return_call_indirect
			idx := r.u32()
			if op == 0x11 || op == 0x13 {
				r.u32()
			}
			if r.err != nil {
				break
			}
			if c.region >= 0 {
				// Tail calls leave the region. loopCalls keeps calls out of
				// regions; were one there, writing back before it and
				// reloading after it would keep the invariant.
				insert(at, c.save)
			}
			if op == 0x10 || op == 0x12 {
				if nidx := c.m.fn(idx); nidx != idx {
					flush(at)
					out = append(out, op)
					out = appendU32(out, nidx)
					copied = r.pos
				}
			}
			if c.region >= 0 && (op == 0x10 || op == 0x11) {
				flush(r.pos)
				out = append(out, c.load...)
				copied = r.pos
			}
		case kRefFunc:
			idx := r.u32()
			if r.err == nil {
				flush(at)
				out = append(out, op)
				out = appendU32(out, c.m.fn(idx))
				copied = r.pos
			}
		case kNone:
			if c.region >= 0 && (op == 0x0f || op == 0x00) { // return, unreachable
				insert(at, c.save)
			}
		default:
			r.immediates(op, at)
		}
	}
	return out
}

// immediates skips the immediates of an instruction the rewrite copies
// unchanged, and fails on opcodes it does not support.
func (r *reader) immediates(op byte, at int) {
	switch opKinds[op] {
	case kNone:
	case kU32:
		r.u32()
	case kMemarg:
		r.memarg()
	case kI32:
		r.sleb(32)
	case kI64:
		r.sleb(64)
	case kF32:
		r.bytes(4)
	case kF64:
		r.bytes(8)
	case kSelectT:
		k := r.count(1)
		for i := 0; i < k; i++ {
			r.valType()
		}
	case kRefNull:
		rt := r.byte()
		if rt != 0x70 && rt != 0x6f {
			r.failAt(at+1, "ref.null with unsupported heap type %#x", rt)
		}
	case kPrefixFC:
		r.prefixFC(at)
	case kPrefixFD:
		r.prefixFD(at)
	case kThreads:
		r.failAt(at, "opcode 0xfe (threads/atomics) is not supported: build the plugin without shared memory and atomics")
	case kEH:
		r.failAt(at, "opcode %#x belongs to the exception-handling proposal, which is not supported: build without exceptions", op)
	default:
		r.failAt(at, "unknown opcode %#x", op)
	}
}

// maxRefreshLocals bounds the locals buildRefresh redefines: beyond it, the
// tick path's code would grow more than the spills it saves are worth.
const maxRefreshLocals = 32

// buildRefresh sets c.refresh, the code a region's tick path runs before
// calling tick: every local of defined function i (params, then declared
// locals, given by their groups) is replaced by a copy computed from it
// (x | 0, -(-x), not(not x)): bit for bit the same value.
//
// Why: wazero's register allocator spills every value live across a call,
// and a loop-carried value (a phi at the loop header) that is spilled is
// stored to its stack slot on every iteration, not only on the path with
// the call. In a region, tick's call is the only call, and without the
// copies every local is live across it as the loop header's phi. With the
// copies, only the copies are live across the call: they are stored on the
// tick path only, and the loop keeps its values in registers.
// Reference-typed locals have no cheap identity operation and are left
// alone (they stay spilled).
func (c *codeWriter) buildRefresh(i int, groups []byte) {
	m := c.m
	c.refresh = c.refresh[:0]
	if m.cfg.noRefresh {
		return
	}
	params := m.types[m.funcTypes[i]].paramTypes // counterLocal checked the indices
	total := uint64(len(params))
	r := newReader(groups, 0)
	for r.more() {
		total += uint64(r.u32())
		r.byte()
	}
	if total > maxRefreshLocals || r.err != nil {
		return
	}
	idx := uint32(0)
	one := func(t byte) {
		var id []byte
		switch t {
		case 0x7f:
			id = []byte{0x41, 0x00, 0x72} // i32.const 0; i32.or
		case 0x7e:
			id = []byte{0x42, 0x00, 0x84} // i64.const 0; i64.or
		case 0x7d:
			id = []byte{0x8c, 0x8c} // f32.neg; f32.neg
		case 0x7c:
			id = []byte{0x9a, 0x9a} // f64.neg; f64.neg
		case 0x7b:
			id = []byte{0xfd, 0x4d, 0xfd, 0x4d} // v128.not; v128.not
		}
		if id != nil {
			c.refresh = appendU32(append(c.refresh, 0x20), idx) // local.get
			c.refresh = append(c.refresh, id...)
			c.refresh = appendU32(append(c.refresh, 0x21), idx) // local.set
		}
		idx++
	}
	for _, t := range params {
		one(t)
	}
	r = newReader(groups, 0)
	for r.more() {
		n := r.u32()
		t := r.byte()
		for range n {
			one(t)
		}
	}
}

// entersLoopFirst reports whether every execution of a function body reaches
// a loop header (and so its check) before any call, branch or other loop:
// the body starts with straight-line code (at most a few dozen locals,
// globals, constants, memory accesses, numeric ops and block openings) and
// then a loop. The function entry check is redundant there and left out;
// Go's wasip1 output starts every function this way (save SP, open blocks,
// enter the dispatch loop). Anything else keeps the entry check, which is
// what stops endless recursion.
func entersLoopFirst(b []byte) bool {
	r := newReader(b, 0)
	for i := 0; i < 32 && r.more(); i++ {
		op := r.byte()
		switch opKinds[op] {
		case kLoop:
			return true
		case kNone:
			if op == 0x00 || op == 0x0f { // unreachable, return: leave it to the general case
				return false
			}
		case kBlock:
			if op != 0x02 {
				return false
			}
			if r.pos < len(r.b) && r.b[r.pos] != 0x40 {
				return false // typed blocks: keep it simple
			}
			r.pos++
		case kU32, kMemarg, kI32, kI64, kF32, kF64:
			r.immediates(op, r.pos-1)
		default:
			return false
		}
	}
	return false
}

// depth maps the label depth d of a branch at input offset at to the output.
// Depths that reach the frame's own label or inner labels only cross frames
// that occupy one output label each, so they stay unchanged; depths crossing
// a hoisted loop's wrapper grow by three per wrapper.
func (c *codeWriter) depth(r *reader, at int, d uint32) uint32 {
	if r.err != nil {
		return d
	}
	if d >= uint32(len(c.frames)) {
		r.failAt(at, "branch depth %d exceeds the %d enclosing labels", d, len(c.frames))
		return d
	}
	f := &c.frames[len(c.frames)-1-int(d)]
	return uint32(c.outN - 1 - f.outIdx)
}

// blockType decodes a block type and returns its parameter and result counts.
func (r *reader) blockType(m *module) (params, results int) {
	at := r.pos
	if r.pos < len(r.b) {
		switch b := r.b[r.pos]; b {
		case 0x40:
			r.pos++
			return 0, 0
		case 0x7f, 0x7e, 0x7d, 0x7c, 0x7b, 0x70, 0x6f:
			r.pos++
			return 0, 1
		}
	}
	idx := r.sleb(33)
	if r.err != nil {
		return 0, 0
	}
	if idx < 0 || idx >= int64(len(m.types)) {
		r.failAt(at, "unsupported block type %d (not a value type or a valid type index)", idx)
		return 0, 0
	}
	t := m.types[idx]
	return t.params, t.results
}

func (r *reader) memarg() {
	align := r.u32()
	if align&0x40 != 0 { // multi-memory: explicit memory index
		r.u32()
	}
	r.u32()
}

func (r *reader) prefixFC(at int) {
	switch sub := r.u32(); sub {
	case 0, 1, 2, 3, 4, 5, 6, 7: // saturating truncations
	case 9, 11, 13, 15, 16, 17: // data.drop, memory.fill, elem.drop, table.grow/size/fill
		r.u32()
	case 8, 10, 12, 14: // memory.init, memory.copy, table.init, table.copy
		r.u32()
		r.u32()
	default:
		if r.err == nil {
			r.failAt(at, "unknown opcode 0xfc %d", sub)
		}
	}
}

func (r *reader) prefixFD(at int) {
	sub := r.u32()
	if r.err != nil {
		return
	}
	if sub > 0xff {
		r.failAt(at, "unknown SIMD opcode 0xfd %d (relaxed SIMD is not supported)", sub)
		return
	}
	switch simdKinds[sub] {
	case simdNone:
	case simdMemarg:
		r.memarg()
	case simdMemLane:
		r.memarg()
		r.byte()
	case simdLane:
		r.byte()
	case simdBytes16:
		r.bytes(16)
	default:
		r.failAt(at, "unknown SIMD opcode 0xfd %d", sub)
	}
}
