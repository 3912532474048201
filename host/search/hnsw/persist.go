package hnsw

import (
	"bufio"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"math"
	"math/rand"
	"reflect"
)

// Binary format, version 1. All integers are little-endian.
//
//	magic      [8]byte  "plnHNSW\x00"
//	version    uint32   1
//	keyKind    uint8    1 string, 2 signed integer, 3 unsigned integer
//	metric     uint8    1 cosine, 2 euclidean, 3 custom
//	reserved   uint16   0
//	M          uint32   resolved M (layer 0 allows 2*M links)
//	efConstr   uint32   resolved EfConstruction
//	efSearch   uint32   Graph.EfSearch as set (0 = default)
//	Ml         float64  resolved level factor
//	dims       uint32   0 only if the graph was never initialised
//	count      uint32   number of nodes
//	entry      uint32   index of the entry point, 0xFFFFFFFF if count == 0
//	maxLevel   int32    level of the entry point, -1 if count == 0
//	count times:
//	  key      string: uint32 length + bytes; integers: 8 bytes
//	  level    uint8
//	  norm     float32  original norm (cosine), else 1
//	  vector   dims × float32 (the stored form: unit length for cosine)
//	  level+1 times (layer 0 first):
//	    n      uint16   number of links, at most 2*M on layer 0, M above
//	    links  n × uint32 node indexes
//	crc        uint32   CRC-32C (Castagnoli) of every preceding byte
//
// Nodes are numbered by their position in the stream.

const (
	formatMagic   = "plnHNSW\x00"
	formatVersion = 1

	keyKindString   = 1
	keyKindSigned   = 2
	keyKindUnsigned = 3

	// Limits enforced on Import, so a corrupt header cannot make it allocate
	// unbounded memory before the checksum is verified.
	maxDims   = 1 << 16
	maxKeyLen = 1 << 20
	maxEf     = 1 << 24
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrFormat is wrapped by Import errors that report a malformed stream.
var ErrFormat = errors.New("hnsw: invalid graph stream")

func formatErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrFormat, fmt.Sprintf(format, args...))
}

// keyKind returns the stream key kind for K, or an error if K is not a
// string or integer type.
func keyKind[K any]() (uint8, error) {
	switch reflect.TypeFor[K]().Kind() {
	case reflect.String:
		return keyKindString, nil
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return keyKindSigned, nil
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return keyKindUnsigned, nil
	}
	var zero K
	return 0, fmt.Errorf("hnsw: key type %T cannot be exported (want a string or integer type)", zero)
}

// Export writes the graph in the versioned binary format described above.
// Keys must be strings (at most 1 MiB) or integers. Export holds the read
// lock, so it sees a consistent snapshot while searches continue.
func (g *Graph[K]) Export(w io.Writer) error {
	kk, err := keyKind[K]()
	if err != nil {
		return err
	}
	g.mu.RLock()
	defer g.mu.RUnlock()
	s := &g.st

	var c resolvedConfig
	if s.init {
		c = resolvedConfig{m: s.m, ml: s.ml, efc: s.efc, met: s.met}
	} else {
		// Not initialised: resolveConfig only reads the exported fields.
		c = g.resolveConfig()
	}
	if c.met.kind == metricCustom && c.met.user == nil {
		return errors.New("hnsw: custom distance without a function")
	}

	bw := bufio.NewWriterSize(w, 1<<16)
	e := encoder{w: bw, crc: crc32.New(castagnoli)}
	e.bytes([]byte(formatMagic))
	e.u32(formatVersion)
	e.u8(kk)
	e.u8(uint8(c.met.kind))
	e.u16(0)
	e.u32(uint32(c.m))
	e.u32(uint32(c.efc))
	e.u32(uint32(min(max(g.EfSearch, 0), maxEf)))
	e.f64(c.ml)
	e.u32(uint32(s.dims))
	e.u32(uint32(s.live))

	// Dense renumbering of live slots, in slot order.
	index := make([]uint32, len(s.levels))
	n := uint32(0)
	for id, lv := range s.levels {
		if lv >= 0 {
			index[id] = n
			n++
		}
	}
	if s.live == 0 {
		e.u32(math.MaxUint32)
		e.u32(uint32(0xFFFFFFFF)) // maxLevel -1
	} else {
		e.u32(index[s.entry])
		e.u32(uint32(int32(s.maxLvl)))
	}
	var chunk []byte
	for id, lv := range s.levels {
		if lv < 0 {
			continue
		}
		if err := e.key(s.keys[id]); err != nil {
			return err
		}
		e.u8(uint8(lv))
		e.f32(s.norms[id])
		chunk = chunk[:0]
		for _, x := range s.vec(int32(id)) {
			chunk = binary.LittleEndian.AppendUint32(chunk, math.Float32bits(x))
		}
		e.bytes(chunk)
		for l := 0; l <= int(lv); l++ {
			links := s.links(int32(id), l)
			chunk = binary.LittleEndian.AppendUint16(chunk[:0], uint16(len(links)))
			for _, t := range links {
				chunk = binary.LittleEndian.AppendUint32(chunk, index[t])
			}
			e.bytes(chunk)
		}
	}
	if e.err != nil {
		return e.err
	}
	var tail [4]byte
	binary.LittleEndian.PutUint32(tail[:], e.crc.Sum32())
	if _, err := bw.Write(tail[:]); err != nil {
		return err
	}
	return bw.Flush()
}

// encoder writes little-endian values and checksums them; the first write
// error sticks.
type encoder struct {
	w   *bufio.Writer
	crc hash.Hash32
	buf [8]byte
	err error
}

func (e *encoder) bytes(p []byte) {
	if e.err != nil {
		return
	}
	_, e.err = e.w.Write(p)
	e.crc.Write(p)
}

func (e *encoder) u8(v uint8) { e.buf[0] = v; e.bytes(e.buf[:1]) }
func (e *encoder) u16(v uint16) {
	binary.LittleEndian.PutUint16(e.buf[:], v)
	e.bytes(e.buf[:2])
}
func (e *encoder) u32(v uint32) {
	binary.LittleEndian.PutUint32(e.buf[:], v)
	e.bytes(e.buf[:4])
}
func (e *encoder) u64(v uint64) {
	binary.LittleEndian.PutUint64(e.buf[:], v)
	e.bytes(e.buf[:8])
}
func (e *encoder) f32(v float32) { e.u32(math.Float32bits(v)) }
func (e *encoder) f64(v float64) { e.u64(math.Float64bits(v)) }

func (e *encoder) key(k any) error {
	switch v := k.(type) {
	case string:
		return e.str(v)
	case int:
		e.u64(uint64(int64(v)))
	case int64:
		e.u64(uint64(v))
	case uint64:
		e.u64(v)
	default:
		rv := reflect.ValueOf(k)
		switch {
		case rv.Kind() == reflect.String:
			return e.str(rv.String())
		case rv.CanInt():
			e.u64(uint64(rv.Int()))
		case rv.CanUint():
			e.u64(rv.Uint())
		default:
			return fmt.Errorf("hnsw: key type %T cannot be exported", k)
		}
	}
	return nil
}

func (e *encoder) str(s string) error {
	if len(s) > maxKeyLen {
		return fmt.Errorf("hnsw: key of %d bytes exceeds the %d-byte export limit", len(s), maxKeyLen)
	}
	e.u32(uint32(len(s)))
	if e.err == nil {
		_, e.err = io.WriteString(e.w, s)
		io.WriteString(e.crc, s)
	}
	return nil
}

// decoder reads little-endian values and checksums them. It reads exactly
// the bytes it needs, never more, so a stream can be followed by other data.
type decoder struct {
	r   io.Reader
	crc hash.Hash32
	buf []byte
}

// read returns the next n bytes (valid until the next call).
func (d *decoder) read(n int) ([]byte, error) {
	if cap(d.buf) < n {
		d.buf = make([]byte, n)
	}
	p := d.buf[:n]
	if _, err := io.ReadFull(d.r, p); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("%w: %w", ErrFormat, err)
	}
	d.crc.Write(p)
	return p, nil
}

func (d *decoder) u8() (uint8, error) {
	p, err := d.read(1)
	if err != nil {
		return 0, err
	}
	return p[0], nil
}

func (d *decoder) u16() (uint16, error) {
	p, err := d.read(2)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint16(p), nil
}

func (d *decoder) u32() (uint32, error) {
	p, err := d.read(4)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(p), nil
}

func (d *decoder) u64() (uint64, error) {
	p, err := d.read(8)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(p), nil
}

// key decodes a key of kind kk into a K.
func decodeKey[K any](d *decoder, kk uint8) (K, error) {
	var k K
	if kk == keyKindString {
		n, err := d.u32()
		if err != nil {
			return k, err
		}
		if n > maxKeyLen {
			return k, formatErr("key length %d exceeds %d", n, maxKeyLen)
		}
		p, err := d.read(int(n))
		if err != nil {
			return k, err
		}
		switch kp := any(&k).(type) {
		case *string:
			*kp = string(p)
		default:
			reflect.ValueOf(&k).Elem().SetString(string(p))
		}
		return k, nil
	}
	u, err := d.u64()
	if err != nil {
		return k, err
	}
	switch kp := any(&k).(type) {
	case *int64:
		*kp = int64(u)
		return k, nil
	case *uint64:
		*kp = u
		return k, nil
	}
	rv := reflect.ValueOf(&k).Elem()
	if kk == keyKindSigned {
		if rv.OverflowInt(int64(u)) {
			return k, formatErr("key %d overflows %s", int64(u), rv.Type())
		}
		rv.SetInt(int64(u))
	} else {
		if rv.OverflowUint(u) {
			return k, formatErr("key %d overflows %s", u, rv.Type())
		}
		rv.SetUint(u)
	}
	return k, nil
}

// Import replaces the graph's content with a graph read from r, written by
// Export. It reads exactly the exported bytes (wrap r in a bufio.Reader for
// speed). On success it also sets M, Ml, EfConstruction and EfSearch from
// the stream, and Distance for the built-in distances; a stream built with
// a custom distance requires Distance to be set to that function first.
//
// A corrupt, truncated or inconsistent stream yields an error wrapping
// ErrFormat and leaves the graph unchanged; Import never panics on bad
// input, and the memory it allocates is proportional to the stream's length
// (link arrays are sized by M, so the factor is bounded by M). It is meant
// for streams written by Export: the checksum detects accidental
// corruption, not tampering. Rng, if set, is kept for later inserts.
func (g *Graph[K]) Import(r io.Reader) error {
	kk, err := keyKind[K]()
	if err != nil {
		return err
	}
	// Parse holding only the writer mutex: searches keep running on the
	// old content until the swap.
	g.wmu.Lock()
	defer g.wmu.Unlock()
	st, efSearch, err := decodeState[K](r, kk, g.Distance, g.Rng)
	if err != nil {
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.st = *st
	g.M, g.Ml, g.EfConstruction, g.EfSearch = st.m, st.ml, st.efc, efSearch
	switch st.met.kind {
	case metricCosine:
		g.Distance = CosineDistance
	case metricL2:
		g.Distance = EuclideanDistance
	}
	return nil
}

// decodeState parses and validates a stream into a fresh state. It returns
// the state and the stream's EfSearch.
func decodeState[K cmp.Ordered](r io.Reader, kk uint8, userDist DistanceFunc, rng *rand.Rand) (*state[K], int, error) {
	d := &decoder{r: r, crc: crc32.New(castagnoli)}
	p, err := d.read(len(formatMagic))
	if err != nil {
		return nil, 0, err
	}
	if string(p) != formatMagic {
		return nil, 0, formatErr("bad magic")
	}
	var h struct {
		version, m, efc, efs, dims, count, entry, maxLevel uint32
		keyKind, metric                                    uint8
		reserved                                           uint16
		ml                                                 uint64
	}
	fields := []any{&h.version, &h.keyKind, &h.metric, &h.reserved, &h.m, &h.efc, &h.efs, &h.ml, &h.dims, &h.count, &h.entry, &h.maxLevel}
	for _, f := range fields {
		switch f := f.(type) {
		case *uint8:
			*f, err = d.u8()
		case *uint16:
			*f, err = d.u16()
		case *uint32:
			*f, err = d.u32()
		case *uint64:
			*f, err = d.u64()
		}
		if err != nil {
			return nil, 0, err
		}
	}
	ml := math.Float64frombits(h.ml)
	switch {
	case h.version != formatVersion:
		return nil, 0, formatErr("unsupported version %d", h.version)
	case h.keyKind != kk:
		return nil, 0, formatErr("stream key kind %d does not match the graph's key kind %d", h.keyKind, kk)
	case h.reserved != 0:
		return nil, 0, formatErr("reserved header field is %d", h.reserved)
	case h.m < 2 || h.m > maxM:
		return nil, 0, formatErr("M = %d out of range", h.m)
	case h.efc < h.m || h.efc > maxEf:
		return nil, 0, formatErr("EfConstruction = %d out of range", h.efc)
	case h.efs > maxEf:
		return nil, 0, formatErr("EfSearch = %d out of range", h.efs)
	case !(ml > 0) || math.IsInf(ml, 0):
		return nil, 0, formatErr("Ml = %v out of range", ml)
	case h.dims > maxDims:
		return nil, 0, formatErr("dims = %d out of range", h.dims)
	case h.count > maxSlots:
		return nil, 0, formatErr("count = %d out of range", h.count)
	case h.count > 0 && h.dims == 0:
		return nil, 0, formatErr("nodes without dimensions")
	}
	var met metric
	switch metricKind(h.metric) {
	case metricCosine, metricL2:
		met = metric{kind: metricKind(h.metric)}
	case metricCustom:
		if userDist == nil || resolveMetric(userDist).kind != metricCustom {
			return nil, 0, errors.New("hnsw: stream uses a custom distance; set Graph.Distance to it before Import")
		}
		met = metric{kind: metricCustom, user: userDist}
	default:
		return nil, 0, formatErr("unknown metric %d", h.metric)
	}
	if rng == nil {
		rng = rand.New(rand.NewSource(defaultSeed))
	}
	st := new(state[K])
	st.setup(resolvedConfig{m: int(h.m), ml: ml, efc: int(h.efc), met: met, rng: rng}, int(h.dims))
	st.init = h.dims > 0
	dims := int(h.dims)
	count := int(h.count)
	var links []int32
	for i := 0; i < count; i++ {
		key, err := decodeKey[K](d, kk)
		if err != nil {
			return nil, 0, err
		}
		if _, dup := st.ids[key]; dup {
			return nil, 0, formatErr("duplicate key %v", key)
		}
		lv, err := d.u8()
		if err != nil {
			return nil, 0, err
		}
		if lv > maxLevelCap {
			return nil, 0, formatErr("node %d has level %d", i, lv)
		}
		nb, err := d.u32()
		if err != nil {
			return nil, 0, err
		}
		norm := math.Float32frombits(nb)
		if !(norm >= 0) || math.IsInf(float64(norm), 0) {
			return nil, 0, formatErr("node %d has norm %v", i, norm)
		}
		p, err := d.read(4 * dims)
		if err != nil {
			return nil, 0, err
		}
		id := st.alloc(int(lv))
		v := st.vec(id)
		for j := range v {
			v[j] = math.Float32frombits(binary.LittleEndian.Uint32(p[4*j:]))
		}
		if !finite(v) {
			return nil, 0, formatErr("node %d has a non-finite vector", i)
		}
		st.norms[id] = norm
		st.keys[id] = key
		st.ids[key] = id
		st.live++
		for l := 0; l <= int(lv); l++ {
			n, err := d.u16()
			if err != nil {
				return nil, 0, err
			}
			if int(n) > st.mmax(l) {
				return nil, 0, formatErr("node %d has %d links on layer %d", i, n, l)
			}
			p, err := d.read(4 * int(n))
			if err != nil {
				return nil, 0, err
			}
			links = links[:0]
			for j := 0; j < int(n); j++ {
				t := binary.LittleEndian.Uint32(p[4*j:])
				if t >= h.count || int(t) == i {
					return nil, 0, formatErr("node %d has link %d on layer %d", i, t, l)
				}
				links = append(links, int32(t))
			}
			st.setLinks(id, l, links)
		}
	}
	// Links may point forward, so check targets once all nodes are known,
	// and build the reverse lists.
	marks := make([]int32, count)
	for i := range marks {
		marks[i] = -1
	}
	stamp := int32(0)
	for a := 0; a < count; a++ {
		for l := 0; l <= int(st.levels[a]); l++ {
			stamp++
			for _, t := range st.links(int32(a), l) {
				if int(st.levels[t]) < l {
					return nil, 0, formatErr("node %d links on layer %d to node %d of level %d", a, l, t, st.levels[t])
				}
				if marks[t] == stamp {
					return nil, 0, formatErr("node %d links twice to node %d on layer %d", a, t, l)
				}
				marks[t] = stamp
				st.rev[t][l] = append(st.rev[t][l], int32(a))
			}
		}
	}
	maxLevel := int32(h.maxLevel)
	if count == 0 {
		if h.entry != math.MaxUint32 || maxLevel != -1 {
			return nil, 0, formatErr("empty graph with an entry point")
		}
	} else {
		if h.entry >= h.count {
			return nil, 0, formatErr("entry point %d out of range", h.entry)
		}
		top := int32(-1)
		for _, lv := range st.levels {
			top = max(top, int32(lv))
		}
		if maxLevel != top || int32(st.levels[h.entry]) != top {
			return nil, 0, formatErr("entry point %d of level %d is not on the top level %d", h.entry, st.levels[h.entry], top)
		}
		st.entry, st.maxLvl = int32(h.entry), int(top)
	}
	sum := d.crc.Sum32()
	var tail [4]byte
	if _, err := io.ReadFull(r, tail[:]); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, 0, fmt.Errorf("%w: %w", ErrFormat, err)
	}
	if got := binary.LittleEndian.Uint32(tail[:]); got != sum {
		return nil, 0, formatErr("checksum mismatch (stream %08x, computed %08x)", got, sum)
	}
	return st, int(h.efs), nil
}
