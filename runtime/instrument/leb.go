package instrument

import "fmt"

// reader decodes one region of the input module. Errors are sticky: the first
// failure is kept in err and moves pos to the end, so loops driven by
// r.more() stop and callers check err once after a batch of reads.
type reader struct {
	b   []byte
	pos int
	off int // offset of b[0] in the input module, for error messages
	fn  int // function index being decoded, or -1
	err *Error
}

func newReader(b []byte, off int) *reader {
	return &reader{b: b, off: off, fn: -1}
}

// failAt records an error at position pos of r.b (if none is recorded yet).
func (r *reader) failAt(pos int, format string, args ...any) {
	if r.err == nil {
		r.err = &Error{Offset: r.off + pos, Func: r.fn, Reason: fmt.Sprintf(format, args...)}
	}
	r.pos = len(r.b)
}

func (r *reader) more() bool { return r.err == nil && r.pos < len(r.b) }

func (r *reader) byte() byte {
	if r.pos >= len(r.b) {
		r.failAt(r.pos, "unexpected end of data")
		return 0
	}
	c := r.b[r.pos]
	r.pos++
	return c
}

// bytes returns the next n bytes (aliasing the input).
func (r *reader) bytes(n int) []byte {
	if n < 0 || n > len(r.b)-r.pos {
		r.failAt(r.pos, "unexpected end of data: need %d bytes, have %d", n, len(r.b)-r.pos)
		return nil
	}
	s := r.b[r.pos : r.pos+n]
	r.pos += n
	return s
}

// u32 decodes an unsigned LEB128 value of at most 32 bits (5 bytes).
func (r *reader) u32() uint32 {
	start := r.pos
	var v uint32
	for shift := uint(0); ; shift += 7 {
		if r.pos >= len(r.b) {
			r.failAt(start, "unexpected end of data in LEB128 integer")
			return 0
		}
		c := r.b[r.pos]
		r.pos++
		if shift == 28 && c > 0x0f {
			r.failAt(start, "malformed or too large u32 LEB128 integer")
			return 0
		}
		v |= uint32(c&0x7f) << shift
		if c&0x80 == 0 {
			return v
		}
	}
}

// sleb decodes a signed LEB128 value of the given width (32, 33 or 64 bits),
// rejecting encodings that are too long or whose unused bits of the last
// byte are not a sign extension.
func (r *reader) sleb(bits uint) int64 {
	start := r.pos
	var v int64
	for shift := uint(0); ; shift += 7 {
		if r.pos >= len(r.b) {
			r.failAt(start, "unexpected end of data in LEB128 integer")
			return 0
		}
		c := r.b[r.pos]
		r.pos++
		if shift+7 >= bits {
			// Last allowed byte: no continuation, and the bits above the
			// value's width must all equal its sign bit.
			k := bits - shift // significant bits in this byte, 1..7
			mask := byte(0x7f>>(k-1)) << (k - 1)
			if c&0x80 != 0 || (c&mask != 0 && c&mask != mask) {
				r.failAt(start, "malformed or too large s%d LEB128 integer", bits)
				return 0
			}
		}
		v |= int64(c&0x7f) << shift
		if c&0x80 == 0 {
			if shift+7 < 64 && c&0x40 != 0 {
				v |= -1 << (shift + 7)
			}
			return v
		}
	}
}

// name decodes a length-prefixed byte string (not checked for UTF-8: names
// the rewrite only copies are left to the runtime's validation).
func (r *reader) name() []byte {
	n := r.u32()
	return r.bytes(int(n))
}

// count decodes a vector length and rejects lengths that cannot fit in the
// remaining bytes given that every element takes at least minSize bytes.
// This keeps hostile lengths from causing huge allocations.
func (r *reader) count(minSize int) int {
	start := r.pos
	n := int(r.u32())
	if r.err == nil && n > (len(r.b)-r.pos)/minSize {
		r.failAt(start, "vector length %d exceeds the remaining %d bytes", n, len(r.b)-r.pos)
		return 0
	}
	return n
}

func appendU32(b []byte, v uint32) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

func appendS32(b []byte, v int32) []byte {
	x := int64(v)
	for {
		c := byte(x & 0x7f)
		x >>= 7
		if (x == 0 && c&0x40 == 0) || (x == -1 && c&0x40 != 0) {
			return append(b, c)
		}
		b = append(b, c|0x80)
	}
}

func appendName(b []byte, s string) []byte {
	b = appendU32(b, uint32(len(s)))
	return append(b, s...)
}

// appendSection appends a section with the given id and content.
func appendSection(b []byte, id byte, content []byte) []byte {
	b = append(b, id)
	b = appendU32(b, uint32(len(content)))
	return append(b, content...)
}
