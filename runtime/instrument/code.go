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
	hoisted   bool  // loop rewritten in the hoisted form; its end needs the tail
	isIf      bool
}

// codeWriter rewrites function bodies. It is reused across functions so the
// control stack is allocated once.
type codeWriter struct {
	m      *module
	out    []byte
	frames []frame
	outN   int32 // labels open in the output

	check     []byte // inline check: decrement, and if <= 0 call tick and reset
	checkHead []byte // hoisted check: decrement, and br_if 1 if <= 0
	tail      []byte // closes a hoisted loop's wrapper after the loop's end
}

func (m *module) newCodeWriter() *codeWriter {
	c := &codeWriter{m: m}
	dec := func(b []byte) []byte {
		// global.get $c; i32.const 1; i32.sub; global.set $c;
		// global.get $c; i32.const 0; i32.le_s
		// Signed <= 0, not == 0: a countdown left at 0 or below by an
		// aborted call must not run 2^32 more headers before the next tick.
		b = append(b, 0x23)
		b = appendU32(b, m.counter)
		b = append(b, 0x41, 0x01, 0x6b, 0x24)
		b = appendU32(b, m.counter)
		b = append(b, 0x23)
		b = appendU32(b, m.counter)
		return append(b, 0x41, 0x00, 0x4c)
	}
	tickReset := func(b []byte, v int32) []byte {
		// call $tick; i32.const v; global.set $c
		b = append(b, 0x10)
		b = appendU32(b, m.funcImports)
		b = append(b, 0x41)
		b = appendS32(b, v)
		b = append(b, 0x24)
		return appendU32(b, m.counter)
	}
	c.check = dec(nil)
	c.check = append(c.check, 0x04, 0x40) // if (empty)
	c.check = tickReset(c.check, m.cfg.interval)
	c.check = append(c.check, 0x0b) // end

	c.checkHead = dec(nil)
	c.checkHead = append(c.checkHead, 0x0d, 0x01) // br_if $tick

	// After the original loop's end, inside block $tick:
	//   br $done; end; call $tick; i32.const Interval+1; global.set $c;
	//   br $restart; end; unreachable; end
	// The reset is Interval+1 because re-entering the loop passes its check
	// once more; that leaves the countdown exactly where the inline form
	// leaves it, so metering does not depend on the placement.
	c.tail = append(c.tail, 0x0c, 0x02, 0x0b)
	c.tail = tickReset(c.tail, m.cfg.interval+1)
	c.tail = append(c.tail, 0x0c, 0x00, 0x0b, 0x00, 0x0b)
	return c
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
		body = c.function(br, body[:0])
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

// function rewrites one function body (locals and expression) into out.
func (c *codeWriter) function(r *reader, out []byte) []byte {
	// Locals are copied unchanged.
	n := r.count(2)
	for i := 0; i < n && r.err == nil; i++ {
		r.u32()
		r.valType()
	}
	if r.err != nil {
		return out
	}
	out = append(out, r.b[:r.pos]...)
	if !entersLoopFirst(r.b[r.pos:]) {
		out = append(out, c.check...)
	}
	c.frames = append(c.frames[:0], frame{outIdx: 0, outLabels: 1})
	c.outN = 1
	copied := r.pos // input up to here is already in out
	b := r.b
	flush := func(upto int) {
		out = append(out, b[copied:upto]...)
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
		case kNone:
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
				out = append(out, c.checkHead...)
				c.frames = append(c.frames, frame{outIdx: c.outN + 3, outLabels: 4, hoisted: true})
				c.outN += 4
			} else {
				out = append(out, 0x03)
				out = append(out, bt...)
				out = append(out, c.check...)
				c.frames = append(c.frames, frame{outIdx: c.outN, outLabels: 1})
				c.outN++
			}
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
			if f.hoisted {
				flush(r.pos)
				out = append(out, c.tail...)
				copied = r.pos
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
			if nd != d && r.err == nil {
				flush(at)
				out = append(out, op)
				out = appendU32(out, nd)
				copied = r.pos
			}
		case kBrTable:
			vecAt := r.pos
			cnt := r.count(1)
			changed := false
			for i := 0; i <= cnt && r.err == nil; i++ { // targets + default
				d := r.u32()
				if c.depth(r, at, d) != d {
					changed = true
				}
			}
			if changed && r.err == nil {
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
		case kCall:
			idx := r.u32()
			if nidx := c.m.fn(idx); nidx != idx && r.err == nil {
				flush(at)
				out = append(out, op)
				out = appendU32(out, nidx)
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
		case kU32x2:
			r.u32()
			r.u32()
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
	return out
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
