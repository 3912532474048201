package instrument

import (
	"bytes"
	"fmt"
	"strings"
)

// Section ids of the Wasm binary format.
const (
	secCustom    = 0
	secType      = 1
	secImport    = 2
	secFunction  = 3
	secTable     = 4
	secMemory    = 5
	secGlobal    = 6
	secExport    = 7
	secStart     = 8
	secElement   = 9
	secCode      = 10
	secData      = 11
	secDataCount = 12
	secTag       = 13
)

// sectionRank gives the position each known non-custom section must have;
// the binary format requires them in this order, each at most once.
var sectionRank = [...]int{
	secType: 1, secImport: 2, secFunction: 3, secTable: 4, secMemory: 5,
	secGlobal: 6, secExport: 7, secStart: 8, secElement: 9, secDataCount: 10,
	secCode: 11, secData: 12,
}

var wasmHeader = []byte{0x00, 'a', 's', 'm', 0x01, 0x00, 0x00, 0x00}

type section struct {
	id         byte
	hdr        int // offset of the section id byte
	start, end int // content range in the input
}

// funcType holds what the code rewrite needs of a function type: the number
// of parameters and results, for type-index block types, and the parameter
// types (aliasing the input), for the locals of functions of this type.
type funcType struct {
	params, results int
	paramTypes      []byte
}

// module holds what the rewrite needs to know about the input module.
type module struct {
	cfg  config
	wasm []byte

	sections []section
	has      [secDataCount + 1]bool

	types      []funcType
	tickType   uint32 // index of the () -> () type, existing or appended
	appendType bool   // whether tickType must be appended to the type section

	funcImports   uint32 // imported functions; also the index of the tick import
	globalImports uint32
	globals       uint32   // defined globals
	definedFuncs  uint32   // entries in the function section
	funcTypes     []uint32 // type index of each defined function
	counter       uint32   // index of the injected countdown global
}

func errAt(off int, format string, args ...any) *Error {
	return &Error{Offset: off, Func: -1, Reason: fmt.Sprintf(format, args...)}
}

func instrument(wasm []byte, cfg config) ([]byte, error) {
	if len(wasm) < 8 || !bytes.Equal(wasm[:4], wasmHeader[:4]) {
		return nil, errAt(0, "not a WebAssembly binary (missing \\0asm magic)")
	}
	if !bytes.Equal(wasm[4:8], wasmHeader[4:]) {
		return nil, errAt(4, "unsupported WebAssembly binary version %x (only version 1 modules are supported, not components)", wasm[4:8])
	}
	m := &module{cfg: cfg, wasm: wasm, appendType: true}
	if err := m.splitSections(); err != nil {
		return nil, err
	}
	if err := m.scan(); err != nil {
		return nil, err
	}
	out, err := m.emit()
	if err != nil {
		return nil, err
	}
	return out, nil
}

// splitSections records every section's range and checks their order.
func (m *module) splitSections() *Error {
	r := newReader(m.wasm, 0)
	r.pos = 8
	lastRank := 0
	for r.more() {
		at := r.pos
		id := r.byte()
		size := int(r.u32())
		start := r.pos
		r.bytes(size)
		if r.err != nil {
			return errAt(at, "section %d: size %d runs past the end of the module", id, size)
		}
		switch {
		case id == secTag:
			return errAt(at, "the module has a tag section: the exception-handling proposal is not supported; build without exceptions (e.g. -fno-exceptions, or panic=abort for Rust)")
		case id > secDataCount:
			return errAt(at, "unknown section id %d", id)
		case id != secCustom:
			rank := sectionRank[id]
			if rank <= lastRank {
				return errAt(at, "section %d is duplicated or out of order", id)
			}
			lastRank = rank
			m.has[id] = true
		}
		m.sections = append(m.sections, section{id: id, hdr: at, start: start, end: r.pos})
	}
	return nil
}

func (m *module) reader(s section) *reader {
	return newReader(m.wasm[s.start:s.end], s.start)
}

// scan decodes the sections whose contents determine the new indices: types,
// imports, functions, globals and exports.
func (m *module) scan() *Error {
	for _, s := range m.sections {
		r := m.reader(s)
		switch s.id {
		case secType:
			m.scanTypes(r)
		case secImport:
			m.scanImports(r)
		case secFunction:
			n := r.count(1)
			m.funcTypes = make([]uint32, 0, n)
			for i := 0; i < n && r.err == nil; i++ {
				m.funcTypes = append(m.funcTypes, r.u32())
			}
			m.definedFuncs = uint32(n)
			r.end("function")
		case secTable:
			n := r.count(3)
			for i := 0; i < n && r.err == nil; i++ {
				r.valType()
				r.limits("table")
			}
			r.end("table")
		case secMemory:
			n := r.count(2)
			for i := 0; i < n && r.err == nil; i++ {
				r.limits("memory")
			}
			r.end("memory")
		case secGlobal:
			// Decoded fully during emit; only the count matters here.
			m.globals = uint32(r.count(3))
		case secExport:
			n := r.count(3)
			for i := 0; i < n && r.err == nil; i++ {
				at := r.pos
				name := r.name()
				r.byte()
				r.u32()
				if r.err == nil && string(name) == m.cfg.counterExp {
					r.failAt(at, "the module already exports %q, the name reserved for the injected countdown global; rename the export or choose another Options.CounterExport", name)
				}
			}
			r.end("export")
		}
		if r.err != nil {
			return r.err
		}
	}
	m.counter = m.globalImports + m.globals
	if !m.appendType {
		return nil
	}
	m.tickType = uint32(len(m.types))
	return nil
}

// end fails unless the reader consumed its whole section.
func (r *reader) end(what string) {
	if r.err == nil && r.pos != len(r.b) {
		r.failAt(r.pos, "%d unexpected bytes at the end of the %s section", len(r.b)-r.pos, what)
	}
}

func (r *reader) valType() byte {
	at := r.pos
	t := r.byte()
	switch t {
	case 0x7f, 0x7e, 0x7d, 0x7c, 0x7b, 0x70, 0x6f: // i32 i64 f32 f64 v128 funcref externref
	default:
		if r.err == nil {
			r.failAt(at, "unsupported value type %#x (only Wasm 2.0 types are supported; GC and typed function references are not)", t)
		}
	}
	return t
}

func (m *module) scanTypes(r *reader) {
	n := r.count(1)
	m.types = make([]funcType, 0, n)
	for i := 0; i < n && r.err == nil; i++ {
		at := r.pos
		if form := r.byte(); form != 0x60 {
			r.failAt(at, "type %d has form %#x: only function types are supported (no GC / recursive types)", i, form)
			return
		}
		var ft funcType
		ft.params = r.count(1)
		pt := r.pos
		for j := 0; j < ft.params; j++ {
			r.valType()
		}
		ft.paramTypes = r.b[pt:r.pos]
		ft.results = r.count(1)
		for j := 0; j < ft.results; j++ {
			r.valType()
		}
		if ft.params == 0 && ft.results == 0 && m.appendType {
			m.appendType = false
			m.tickType = uint32(i)
		}
		m.types = append(m.types, ft)
	}
	r.end("type")
}

func (r *reader) limits(what string) {
	at := r.pos
	switch flags := r.byte(); flags {
	case 0x00:
		r.u32()
	case 0x01:
		r.u32()
		r.u32()
	case 0x02, 0x03:
		r.failAt(at, "shared %s: the threads proposal is not supported; build the plugin without threads/atomics", what)
	default:
		r.failAt(at, "unsupported %s limits flags %#x (memory64 and custom page sizes are not supported)", what, flags)
	}
}

func (m *module) scanImports(r *reader) {
	n := r.count(4)
	for i := 0; i < n && r.err == nil; i++ {
		at := r.pos
		mod := r.name()
		name := r.name()
		kindAt := r.pos
		kind := r.byte()
		if r.err != nil {
			return
		}
		switch kind {
		case 0x00:
			r.u32()
			if string(mod) == m.cfg.importMod && string(name) == m.cfg.importName {
				r.failAt(at, "the module already imports %s.%s, the function reserved for the injected tick; it may be instrumented already", mod, name)
				return
			}
			m.funcImports++
		case 0x01:
			r.valType()
			r.limits("table")
		case 0x02:
			r.limits("memory")
		case 0x03:
			r.valType()
			r.byte()
			m.globalImports++
		case 0x04:
			r.failAt(kindAt, "import %s.%s is a tag: the exception-handling proposal is not supported", mod, name)
		default:
			r.failAt(kindAt, "import %s.%s has unknown kind %#x", mod, name, kind)
		}
	}
	r.end("import")
}

// fn maps a function index of the input module to the output module: the
// tick import is inserted after the imported functions.
func (m *module) fn(idx uint32) uint32 {
	if idx >= m.funcImports {
		return idx + 1
	}
	return idx
}

// emit writes the rewritten module.
func (m *module) emit() ([]byte, *Error) {
	out := make([]byte, 0, len(m.wasm)+len(m.wasm)/8+256)
	out = append(out, wasmHeader...)
	// Sections the rewrite must add to even when the input lacks them.
	missing := []byte{secType, secImport, secGlobal, secExport}
	injectBefore := func(rank int) {
		for len(missing) > 0 && sectionRank[missing[0]] < rank {
			id := missing[0]
			missing = missing[1:]
			if !m.has[id] {
				out = appendSection(out, id, m.sectionContent(id, nil))
			}
		}
	}
	// Sections injected at the end go before trailing custom sections, so
	// a custom section that ended the input still ends the output: wazero
	// reads a malformed "name" section past its end into whatever follows
	// it, and would reject an output it accepted as input.
	trailing := len(m.sections)
	for trailing > 0 && m.sections[trailing-1].id == secCustom {
		trailing--
	}
	var err *Error
	for i, s := range m.sections {
		if i == trailing {
			injectBefore(1 << 30)
		}
		if s.id == secCustom {
			out, err = m.emitCustom(out, s)
			if err != nil {
				return nil, err
			}
			continue
		}
		injectBefore(sectionRank[s.id])
		r := m.reader(s)
		var content []byte
		switch s.id {
		case secType, secImport, secGlobal, secExport:
			content = m.sectionContent(s.id, r)
		case secStart:
			idx := r.u32()
			r.end("start")
			content = appendU32(nil, m.fn(idx))
		case secElement:
			content = m.elements(r)
		case secCode:
			content = m.code(r)
		default:
			// Table, memory, function, data count and data sections hold no
			// function or global indices the rewrite changes.
			out = append(out, m.wasm[s.hdr:s.end]...)
			continue
		}
		if r.err != nil {
			return nil, r.err
		}
		out = appendSection(out, s.id, content)
	}
	injectBefore(1 << 30)
	if m.definedFuncs > 0 && !m.has[secCode] {
		return nil, errAt(len(m.wasm), "the function section declares %d functions but there is no code section", m.definedFuncs)
	}
	return out, nil
}

// sectionContent builds the new content of the type, import, global or export
// section: the input's entries (rewritten where they hold function indices)
// followed by the injected entry. r is nil when the input lacks the section.
func (m *module) sectionContent(id byte, r *reader) []byte {
	var n int
	var body []byte
	if r != nil {
		n = int(r.u32())
		switch id {
		case secGlobal:
			body = m.globalEntries(r, n)
		case secExport:
			body = m.exportEntries(r, n)
		default:
			// Type and import entries hold no function indices: copy them.
			body = r.b[r.pos:]
		}
	}
	var c []byte
	switch id {
	case secType:
		if !m.appendType {
			return r.b
		}
		c = appendU32(c, uint32(n+1))
		c = append(c, body...)
		c = append(c, 0x60, 0x00, 0x00)
	case secImport:
		c = appendU32(c, uint32(n+1))
		c = append(c, body...)
		c = appendName(c, m.cfg.importMod)
		c = appendName(c, m.cfg.importName)
		c = append(c, 0x00)
		c = appendU32(c, m.tickType)
	case secGlobal:
		c = appendU32(c, uint32(n+1))
		c = append(c, body...)
		c = append(c, 0x7f, 0x01, 0x41) // mutable i32, i32.const
		c = appendS32(c, m.cfg.interval)
		c = append(c, 0x0b)
	case secExport:
		c = appendU32(c, uint32(n+1))
		c = append(c, body...)
		c = appendName(c, m.cfg.counterExp)
		c = append(c, 0x03)
		c = appendU32(c, m.counter)
	}
	return c
}

func (m *module) globalEntries(r *reader, n int) []byte {
	out := make([]byte, 0, len(r.b))
	for i := 0; i < n && r.err == nil; i++ {
		out = append(out, r.valType(), r.byte())
		out = m.constExpr(r, out)
	}
	r.end("global")
	return out
}

func (m *module) exportEntries(r *reader, n int) []byte {
	out := make([]byte, 0, len(r.b)+8)
	for i := 0; i < n && r.err == nil; i++ {
		name := r.name()
		kind := r.byte()
		idx := r.u32()
		out = appendU32(out, uint32(len(name)))
		out = append(out, name...)
		out = append(out, kind)
		if kind == 0x00 {
			idx = m.fn(idx)
		}
		out = appendU32(out, idx)
	}
	r.end("export")
	return out
}

// constExpr copies a constant expression, renumbering ref.func.
func (m *module) constExpr(r *reader, out []byte) []byte {
	for r.err == nil {
		at := r.pos
		op := r.byte()
		switch op {
		case 0x0b: // end
			return append(out, op)
		case 0x41: // i32.const
			r.sleb(32)
		case 0x42: // i64.const
			r.sleb(64)
		case 0x43: // f32.const
			r.bytes(4)
		case 0x44: // f64.const
			r.bytes(8)
		case 0x23: // global.get
			r.u32()
		case 0xd0: // ref.null
			r.byte()
		case 0xd2: // ref.func
			idx := r.u32()
			out = append(out, op)
			out = appendU32(out, m.fn(idx))
			continue
		case 0x6a, 0x6b, 0x6c, 0x7c, 0x7d, 0x7e: // extended-const add/sub/mul
		case 0xfd: // v128.const
			if sub := r.u32(); sub != 12 {
				r.failAt(at, "SIMD opcode %d is not allowed in a constant expression", sub)
			}
			r.bytes(16)
		default:
			r.failAt(at, "opcode %#x is not allowed in a constant expression", op)
		}
		out = append(out, r.b[at:r.pos]...)
	}
	return out
}

// elements rewrites the element section: every form that lists function
// indices or ref.func expressions is renumbered.
func (m *module) elements(r *reader) []byte {
	n := r.count(1)
	out := appendU32(make([]byte, 0, len(r.b)+len(r.b)/4), uint32(n))
	for i := 0; i < n && r.err == nil; i++ {
		at := r.pos
		flags := r.u32()
		if flags > 7 {
			r.failAt(at, "element segment %d has unknown flags %d", i, flags)
			break
		}
		out = appendU32(out, flags)
		if flags&1 == 0 { // active
			if flags&2 != 0 {
				out = appendU32(out, r.u32()) // table index
			}
			out = m.constExpr(r, out)
		}
		exprs := flags&4 != 0
		if flags&3 != 0 { // element kind (index form) or reference type (expression form)
			kindAt := r.pos
			k := r.byte()
			if !exprs && k != 0x00 {
				r.failAt(kindAt, "element segment %d has unknown element kind %#x", i, k)
			}
			if exprs && k != 0x70 && k != 0x6f {
				r.failAt(kindAt, "element segment %d has unsupported reference type %#x", i, k)
			}
			out = append(out, k)
		}
		cnt := r.count(1)
		out = appendU32(out, uint32(cnt))
		for j := 0; j < cnt && r.err == nil; j++ {
			if exprs {
				out = m.constExpr(r, out)
			} else {
				out = appendU32(out, m.fn(r.u32()))
			}
		}
	}
	r.end("element")
	return out
}

// emitCustom copies a custom section, fixing the "name" section and dropping
// DWARF sections whose code offsets the rewrite invalidates.
func (m *module) emitCustom(out []byte, s section) ([]byte, *Error) {
	r := m.reader(s)
	name := r.name()
	if r.err != nil {
		return nil, errAt(s.start, "malformed custom section name")
	}
	switch {
	case strings.HasPrefix(string(name), ".debug_"):
		return out, nil
	case string(name) == "name":
		content, ok := m.names(r.b[r.pos:])
		if !ok {
			// An unreadable name section is dropped rather than left with
			// wrong indices; it only affects stack traces.
			return out, nil
		}
		c := appendName(make([]byte, 0, len(content)+8), "name")
		c = append(c, content...)
		return appendSection(out, secCustom, c), nil
	}
	return append(out, m.wasm[s.hdr:s.end]...), nil
}

// names rewrites the content of a "name" custom section. Subsections keyed
// by function index (1 function names, 2 local names, 3 label names) are
// renumbered and the tick import gets a name; the others are copied.
func (m *module) names(b []byte) ([]byte, bool) {
	r := newReader(b, 0)
	out := make([]byte, 0, len(b)+32)
	for r.more() {
		id := r.byte()
		size := int(r.u32())
		sub := newReader(r.bytes(size), 0)
		if r.err != nil {
			return nil, false
		}
		var c []byte
		switch id {
		case 1:
			c = m.funcNames(sub)
		case 2, 3:
			c = m.indirectNames(sub)
		default:
			c = sub.b
		}
		if sub.err != nil {
			return nil, false
		}
		out = append(out, id)
		out = appendU32(out, uint32(len(c)))
		out = append(out, c...)
	}
	return out, r.err == nil
}

func (m *module) funcNames(r *reader) []byte {
	n := r.count(2)
	out := appendU32(make([]byte, 0, len(r.b)+32), uint32(n+1))
	inserted := false
	tickName := m.cfg.importMod + "." + m.cfg.importName
	prev := int64(-1)
	for i := 0; i < n && r.err == nil; i++ {
		at := r.pos
		idx := r.u32()
		name := r.name()
		if int64(idx) <= prev {
			r.failAt(at, "function names are not sorted")
		}
		prev = int64(idx)
		if !inserted && idx >= m.funcImports {
			out = appendU32(out, m.funcImports)
			out = appendName(out, tickName)
			inserted = true
		}
		out = appendU32(out, m.fn(idx))
		out = appendU32(out, uint32(len(name)))
		out = append(out, name...)
	}
	if !inserted {
		out = appendU32(out, m.funcImports)
		out = appendName(out, tickName)
	}
	r.end("name")
	return out
}

func (m *module) indirectNames(r *reader) []byte {
	n := r.count(2)
	out := appendU32(make([]byte, 0, len(r.b)), uint32(n))
	for i := 0; i < n && r.err == nil; i++ {
		out = appendU32(out, m.fn(r.u32()))
		start := r.pos
		k := r.count(2)
		for j := 0; j < k && r.err == nil; j++ {
			r.u32()
			r.name()
		}
		out = append(out, r.b[start:r.pos]...)
	}
	r.end("name")
	return out
}
