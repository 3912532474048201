package abi

import (
	"encoding/binary"
	"errors"
	"math"
	"unsafe"
)

// Messages are encoded in the Protocol Buffers wire format, restricted to three wire types: varint (0),
// fixed64 (1) and length-delimited (2). Every field is optional; a decoder skips fields it does not know, so
// fields can be added without a new ABI version. Unsigned integers are varints (protobuf uint64), signed
// ones zigzag varints (sint64), booleans varints 0/1, floats fixed64 IEEE-754 (double), strings and bytes
// length-delimited, nested messages length-delimited, and repeated fields repeat their tag. Any
// protobuf library can therefore read and write these messages given the schema in docs/abi.md.
//
// The encoders append to a caller's slice and the decoders walk the input without reflection; both are on
// the per-request path.

const (
	wireVarint  = 0
	wireFixed64 = 1
	wireBytes   = 2
)

// ErrMalformed is returned (wrapped) by every decoder for input that is not a valid message.
var ErrMalformed = errors.New("abi: malformed message")

// Encoder appends fields to a byte slice. The zero value is ready to use; B holds the encoding.
type Encoder struct {
	B []byte
}

func (e *Encoder) tag(field int, wire int) {
	e.B = binary.AppendUvarint(e.B, uint64(field)<<3|uint64(wire))
}

// Uint writes a varint field; zero values are omitted.
func (e *Encoder) Uint(field int, v uint64) {
	if v == 0 {
		return
	}
	e.tag(field, wireVarint)
	e.B = binary.AppendUvarint(e.B, v)
}

// Int writes a zigzag varint field; zero values are omitted.
func (e *Encoder) Int(field int, v int64) {
	e.Uint(field, uint64(v<<1)^uint64(v>>63))
}

// Bool writes a boolean field; false is omitted.
func (e *Encoder) Bool(field int, v bool) {
	if v {
		e.Uint(field, 1)
	}
}

// Float writes a float64 field (fixed64, protobuf double); zero is omitted.
func (e *Encoder) Float(field int, v float64) {
	if v != 0 {
		e.FloatAlways(field, v)
	}
}

// FloatAlways writes a float64 field even when it is zero, for optional fields where zero is a value.
func (e *Encoder) FloatAlways(field int, v float64) {
	e.tag(field, wireFixed64)
	e.B = binary.LittleEndian.AppendUint64(e.B, math.Float64bits(v))
}

// String writes a length-delimited field; empty strings are omitted.
func (e *Encoder) String(field int, s string) {
	if s == "" {
		return
	}
	e.tag(field, wireBytes)
	e.B = binary.AppendUvarint(e.B, uint64(len(s)))
	e.B = append(e.B, s...)
}

// Bytes writes a length-delimited field; empty slices are omitted.
func (e *Encoder) Bytes(field int, b []byte) {
	if len(b) == 0 {
		return
	}
	e.tag(field, wireBytes)
	e.B = binary.AppendUvarint(e.B, uint64(len(b)))
	e.B = append(e.B, b...)
}

// Pair writes a nested {1: key, 2: value} message, the encoding of headers, tags and parameters. It is
// written even when both are empty, so that repeated pairs keep their count.
func (e *Encoder) Pair(field int, key, value string) {
	e.tag(field, wireBytes)
	e.B = binary.AppendUvarint(e.B, uint64(fieldLen(len(key))+fieldLen(len(value))))
	e.String(1, key)
	e.String(2, value)
}

// fieldLen is the encoded size of a length-delimited field 1 or 2 holding n bytes (0 when omitted).
func fieldLen(n int) int {
	if n == 0 {
		return 0
	}
	return 1 + uvarintLen(uint64(n)) + n
}

func uvarintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}

// PairBytes is Pair for byte slices; it returns the offset of the key's bytes in B, so a caller can
// rewrite them in place (the host lower-cases header names that way without a copy).
func (e *Encoder) PairBytes(field int, key, value []byte) int {
	e.tag(field, wireBytes)
	e.B = binary.AppendUvarint(e.B, uint64(fieldLen(len(key))+fieldLen(len(value))))
	if len(key) > 0 {
		e.tag(1, wireBytes)
		e.B = binary.AppendUvarint(e.B, uint64(len(key)))
	}
	keyAt := len(e.B)
	e.B = append(e.B, key...)
	e.Bytes(2, value)
	return keyAt
}

// Begin starts a nested message in field and returns a mark for End. The length is back-patched by End,
// so nested messages are encoded in one pass.
func (e *Encoder) Begin(field int) int {
	e.tag(field, wireBytes)
	// Reserve the maximum varint length for a 32-bit size; End compacts it.
	e.B = append(e.B, 0, 0, 0, 0, 0)
	return len(e.B)
}

// End finishes the nested message started by Begin.
func (e *Encoder) End(mark int) {
	n := len(e.B) - mark
	var tmp [binary.MaxVarintLen64]byte
	w := binary.PutUvarint(tmp[:], uint64(n))
	start := mark - 5
	copy(e.B[start:], tmp[:w])
	if w < 5 {
		copy(e.B[start+w:], e.B[mark:])
		e.B = e.B[:len(e.B)-(5-w)]
	}
}

// Decoder reads the fields of one message. Use it as
//
//	d := abi.Decoder{B: msg}
//	for d.Next() {
//		switch d.Field() { case 1: x = d.String() ... }
//	}
//	if err := d.Err(); err != nil { ... }
//
// Reading a field with an accessor of the wrong wire type records an error; unread fields are skipped.
type Decoder struct {
	B     []byte
	field int
	wire  int
	val   uint64 // varint value of the current field
	data  []byte // payload of the current length-delimited field
	err   error

	// With a string decoder (NewStringDecoder), s mirrors B and sdata mirrors data, so String returns
	// substrings of the input instead of copies: decoding a message costs one allocation, the string.
	mirror bool
	s      string
	sdata  string
}

// NewStringDecoder returns a decoder over an immutable string: String returns substrings of s and
// Bytes returns views of s's memory, which callers must not modify.
func NewStringDecoder(s string) Decoder {
	return Decoder{B: unsafe.Slice(unsafe.StringData(s), len(s)), mirror: true, s: s}
}

// Next advances to the next field; it returns false at the end of the input or on an error.
func (d *Decoder) Next() bool {
	b := d.B
	if d.err != nil || len(b) == 0 {
		return false
	}
	// One-byte varints (field numbers below 16, lengths below 128) are the common case: decode them
	// inline. Guest code runs this, where every function call is expensive.
	key, n := uvarint(b)
	if n <= 0 || key>>3 == 0 || key>>3 > math.MaxInt32 {
		return d.fail()
	}
	b = b[n:]
	d.field, d.wire = int(key>>3), int(key&7)
	switch d.wire {
	case wireVarint:
		v, m := uvarint(b)
		if m <= 0 {
			return d.fail()
		}
		d.val, d.data = v, nil
		n += m
	case wireFixed64:
		if len(b) < 8 {
			return d.fail()
		}
		d.val, d.data = binary.LittleEndian.Uint64(b), nil
		n += 8
	case wireBytes:
		l, m := uvarint(b)
		if m <= 0 || l > uint64(len(b)-m) {
			return d.fail()
		}
		d.data = b[m : m+int(l)]
		if d.mirror {
			d.sdata = d.s[n+m : n+m+int(l)]
		}
		n += m + int(l)
	default:
		return d.fail()
	}
	d.B = d.B[n:]
	if d.mirror {
		d.s = d.s[n:]
	}
	return true
}

// uvarint is binary.Uvarint with the one-byte case inline (small enough for the compiler to inline).
func uvarint(b []byte) (uint64, int) {
	if len(b) > 0 && b[0] < 0x80 {
		return uint64(b[0]), 1
	}
	return binary.Uvarint(b)
}

func (d *Decoder) fail() bool {
	d.err = ErrMalformed
	return false
}

// Err returns the first error met, or nil.
func (d *Decoder) Err() error { return d.err }

// Field returns the current field number.
func (d *Decoder) Field() int { return d.field }

// Uint returns the current varint field.
func (d *Decoder) Uint() uint64 {
	if d.wire != wireVarint {
		d.fail()
		return 0
	}
	return d.val
}

// Int returns the current zigzag varint field.
func (d *Decoder) Int() int64 {
	u := d.Uint()
	return int64(u>>1) ^ -int64(u&1)
}

// Bool returns the current boolean field.
func (d *Decoder) Bool() bool { return d.Uint() != 0 }

// Float returns the current float64 field.
func (d *Decoder) Float() float64 {
	if d.wire != wireFixed64 {
		d.fail()
		return 0
	}
	return math.Float64frombits(d.val)
}

// Bytes returns the current length-delimited field. The slice aliases the input.
func (d *Decoder) Bytes() []byte {
	if d.wire != wireBytes {
		d.fail()
		return nil
	}
	return d.data
}

// String returns the current length-delimited field as a string (a copy, or a substring of the input
// for a string decoder).
func (d *Decoder) String() string {
	b := d.Bytes()
	if d.mirror {
		return d.sdata
	}
	return string(b)
}

// Pair decodes the current field as a {1: key, 2: value} message.
func (d *Decoder) Pair() (key, value string) {
	b := d.Bytes()
	// Fast path for the canonical encoding with short fields (all headers in practice): tag 1, length,
	// key, tag 2, length, value. Anything else takes the general path.
	if n := len(b); n >= 2 && b[0] == 0x0a && b[1] < 0x80 && int(b[1])+2 <= n {
		k := int(b[1]) + 2
		if k == n {
			return d.sub(2, k), ""
		}
		if b[k] == 0x12 && k+1 < n && b[k+1] < 0x80 && k+2+int(b[k+1]) == n {
			return d.sub(2, k), d.sub(k+2, n)
		}
	}
	sub := d.Message()
	for sub.Next() {
		switch sub.Field() {
		case 1:
			key = sub.String()
		case 2:
			value = sub.String()
		}
	}
	if sub.err != nil {
		d.err = sub.err
	}
	return key, value
}

// sub returns bytes [i, j) of the current length-delimited field as a string.
func (d *Decoder) sub(i, j int) string {
	if d.mirror {
		return d.sdata[i:j]
	}
	return string(d.data[i:j])
}

// Message returns a decoder for the current field's nested message.
func (d *Decoder) Message() Decoder {
	b := d.Bytes()
	if d.mirror {
		return Decoder{B: b, mirror: true, s: d.sdata}
	}
	return Decoder{B: b}
}

// Merge records a nested decoder's error in d, so a caller checks only the outer Err.
func (d *Decoder) Merge(sub *Decoder) {
	if d.err == nil && sub.err != nil {
		d.err = sub.err
	}
}
