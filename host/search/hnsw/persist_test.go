package hnsw

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"math/rand"
	"slices"
	"strconv"
	"testing"
)

func exportBytes[K cmp.Ordered](t testing.TB, g *Graph[K]) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := g.Export(&buf); err != nil {
		t.Fatalf("Export: %v", err)
	}
	return buf.Bytes()
}

func sameResults[K cmp.Ordered](t *testing.T, a, b *Graph[K], queries [][]float32, k int) {
	t.Helper()
	for _, q := range queries {
		ra, rb := a.SearchWithDistance(q, k), b.SearchWithDistance(q, k)
		if !slices.Equal(ra, rb) {
			t.Fatalf("results differ after round trip:\n%v\n%v", ra, rb)
		}
	}
}

func TestExportImportRoundTrip(t *testing.T) {
	for _, dist := range []DistanceFunc{CosineDistance, EuclideanDistance} {
		rng := rand.New(rand.NewSource(10))
		n := 3000
		if raceEnabled {
			n = 1000
		}
		g := &Graph[int]{Distance: dist, M: 8, EfSearch: 40, EfConstruction: 60}
		ds := makeDataset("clustered", n, 50, 24, 11)
		for i, v := range ds.data {
			g.Add(MakeNode(i, v))
		}
		// Free slots and updated nodes exercise the dense renumbering.
		for _, i := range rng.Perm(n)[:n/10] {
			g.Delete(i)
		}
		for _, i := range rng.Perm(n)[:n/30] {
			g.Add(MakeNode(i, randVecs(rng, 1, 24)[0]))
		}
		data := exportBytes(t, g)
		h := NewGraph[int]()
		h.Add(MakeNode(-1, Vector{1})) // replaced by Import
		if err := h.Import(bytes.NewReader(data)); err != nil {
			t.Fatalf("Import: %v", err)
		}
		checkInvariants(t, h)
		if h.Len() != g.Len() || h.Dims() != g.Dims() || h.M != 8 || h.EfSearch != 40 || h.EfConstruction != 60 {
			t.Fatalf("imported Len %d Dims %d M %d ef %d efc %d", h.Len(), h.Dims(), h.M, h.EfSearch, h.EfConstruction)
		}
		if resolveMetric(h.Distance).kind != resolveMetric(dist).kind {
			t.Fatal("distance not restored")
		}
		sameResults(t, g, h, ds.queries, 10)
		filter := func(k int) bool { return k%3 == 0 }
		for _, q := range ds.queries {
			if !slices.Equal(g.SearchFunc(q, 10, filter), h.SearchFunc(q, 10, filter)) {
				t.Fatal("filtered results differ after round trip")
			}
		}
		for i := range n {
			a, aok := g.Lookup(i)
			b, bok := h.Lookup(i)
			if aok != bok || !slices.Equal(a, b) {
				t.Fatalf("Lookup(%d) differs", i)
			}
		}
		// Export of the import is byte-identical.
		if !bytes.Equal(exportBytes(t, h), data) {
			t.Fatal("re-export differs")
		}
		// The imported graph keeps working for writes.
		h.Add(MakeNode(5000, randVecs(rng, 1, 24)[0]))
		h.Delete(7)
		checkInvariants(t, h)
	}
}

func TestExportImportKeys(t *testing.T) {
	type tenantID string
	t.Run("string", func(t *testing.T) {
		g := NewGraph[string]()
		g.Add(MakeNode("", Vector{1, 2}), MakeNode("ключ", Vector{2, 1}), MakeNode(string(make([]byte, 1000)), Vector{1, 1}))
		h := NewGraph[string]()
		if err := h.Import(bytes.NewReader(exportBytes(t, g))); err != nil {
			t.Fatal(err)
		}
		sameResults(t, g, h, [][]float32{{1, 2}, {3, 1}}, 3)
		if _, ok := h.Lookup("ключ"); !ok {
			t.Fatal("key lost")
		}
	})
	t.Run("named", func(t *testing.T) {
		g := NewGraph[tenantID]()
		g.Add(MakeNode(tenantID("a"), Vector{1, 2}))
		h := NewGraph[tenantID]()
		if err := h.Import(bytes.NewReader(exportBytes(t, g))); err != nil {
			t.Fatal(err)
		}
		if _, ok := h.Lookup("a"); !ok {
			t.Fatal("key lost")
		}
		// A string stream cannot be read into integer keys.
		if err := NewGraph[int]().Import(bytes.NewReader(exportBytes(t, g))); !errors.Is(err, ErrFormat) {
			t.Fatalf("kind mismatch: %v", err)
		}
	})
	t.Run("integers", func(t *testing.T) {
		gi := NewGraph[int64]()
		gi.Add(MakeNode(int64(-1<<62), Vector{1}), MakeNode(int64(5), Vector{2}))
		hi := NewGraph[int64]()
		if err := hi.Import(bytes.NewReader(exportBytes(t, gi))); err != nil {
			t.Fatal(err)
		}
		if _, ok := hi.Lookup(-1 << 62); !ok {
			t.Fatal("int64 key lost")
		}
		gu := NewGraph[uint64]()
		gu.Add(MakeNode(uint64(1<<63+5), Vector{1}))
		hu := NewGraph[uint64]()
		if err := hu.Import(bytes.NewReader(exportBytes(t, gu))); err != nil {
			t.Fatal(err)
		}
		if _, ok := hu.Lookup(1<<63 + 5); !ok {
			t.Fatal("uint64 key lost")
		}
		// An int8 graph rejects a stream whose keys overflow int8.
		if err := NewGraph[int8]().Import(bytes.NewReader(exportBytes(t, gi))); !errors.Is(err, ErrFormat) {
			t.Fatalf("overflow: %v", err)
		}
	})
	t.Run("float keys", func(t *testing.T) {
		g := NewGraph[float64]()
		g.Add(MakeNode(1.5, Vector{1}))
		if err := g.Export(io.Discard); err == nil {
			t.Fatal("Export with float keys succeeded")
		}
		if err := g.Import(bytes.NewReader(nil)); err == nil {
			t.Fatal("Import with float keys succeeded")
		}
	})
}

func TestExportImportEmpty(t *testing.T) {
	// Never initialised: the configuration survives, the dimension is open.
	g := &Graph[int]{M: 5, EfSearch: 7, Distance: EuclideanDistance}
	h := NewGraph[int]()
	if err := h.Import(bytes.NewReader(exportBytes(t, g))); err != nil {
		t.Fatal(err)
	}
	if h.M != 5 || h.EfSearch != 7 || h.Len() != 0 || h.Dims() != 0 || resolveMetric(h.Distance).kind != metricL2 {
		t.Fatalf("imported empty graph: M %d ef %d len %d dims %d", h.M, h.EfSearch, h.Len(), h.Dims())
	}
	h.Add(MakeNode(1, Vector{1, 2, 3}))
	if h.Dims() != 3 || h.st.m != 5 {
		t.Fatalf("after Add: dims %d m %d", h.Dims(), h.st.m)
	}
	// Initialised but emptied: the dimension is kept.
	h.Delete(1)
	k := NewGraph[int]()
	if err := k.Import(bytes.NewReader(exportBytes(t, h))); err != nil {
		t.Fatal(err)
	}
	if k.Dims() != 3 || k.Len() != 0 {
		t.Fatalf("dims %d len %d", k.Dims(), k.Len())
	}
	checkInvariants(t, k)
}

func TestImportCustomDistance(t *testing.T) {
	l1 := func(a, b []float32) float32 {
		var s float32
		for i := range a {
			s += max(a[i]-b[i], b[i]-a[i])
		}
		return s
	}
	g := &Graph[int]{Distance: l1}
	rng := rand.New(rand.NewSource(12))
	for i, v := range randVecs(rng, 200, 4) {
		g.Add(MakeNode(i, v))
	}
	data := exportBytes(t, g)
	if err := NewGraph[int]().Import(bytes.NewReader(data)); err == nil {
		t.Fatal("custom-distance stream imported without a distance")
	}
	h := &Graph[int]{Distance: l1}
	if err := h.Import(bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	sameResults(t, g, h, randVecs(rng, 20, 4), 5)
}

func smallExport(t testing.TB) []byte {
	g := &Graph[int]{M: 3}
	rng := rand.New(rand.NewSource(13))
	for i, v := range randVecs(rng, 60, 3) {
		g.Add(MakeNode(i, v))
	}
	g.Delete(4)
	return exportBytes(t, g)
}

func TestImportCorrupt(t *testing.T) {
	data := smallExport(t)
	orig := NewGraph[int]()
	orig.Add(MakeNode(1, Vector{1, 2}))
	check := func(what string, b []byte) {
		t.Helper()
		err := orig.Import(bytes.NewReader(b))
		if err == nil {
			t.Fatalf("%s: Import succeeded", what)
		}
		if !errors.Is(err, ErrFormat) {
			t.Fatalf("%s: error %v does not wrap ErrFormat", what, err)
		}
	}
	step := 1
	if raceEnabled {
		step = 7
	}
	for n := 0; n < len(data); n += step {
		check("truncated to "+strconv.Itoa(n), data[:n])
	}
	for i := 0; i < len(data); i += step {
		for _, bit := range []byte{1, 0x80} {
			b := slices.Clone(data)
			b[i] ^= bit
			check("bit flip at "+strconv.Itoa(i), b)
		}
	}
	// The failed imports left the graph unchanged.
	if orig.Len() != 1 || orig.Dims() != 2 {
		t.Fatalf("graph changed by failed imports: len %d dims %d", orig.Len(), orig.Dims())
	}
	// Trailing data after a valid stream is not consumed.
	r := bytes.NewReader(append(slices.Clone(data), "tail"...))
	if err := orig.Import(r); err != nil {
		t.Fatal(err)
	}
	if rest, _ := io.ReadAll(r); string(rest) != "tail" {
		t.Fatalf("Import consumed trailing data, left %q", rest)
	}
}

// fixChecksum returns b with its trailing CRC recomputed, so that the fuzzer
// reaches the structural validation behind the checksum.
func fixChecksum(b []byte) []byte {
	if len(b) < 4 {
		return b
	}
	b = slices.Clone(b)
	binary.LittleEndian.PutUint32(b[len(b)-4:], crc32.Checksum(b[:len(b)-4], castagnoli))
	return b
}

func TestImportStructuralErrors(t *testing.T) {
	data := smallExport(t)
	// Header field offsets: magic 8, version 4, keyKind 1, metric 1,
	// reserved 2, M 4, efc 4, efs 4, Ml 8, dims 4, count 4, entry 4, maxLevel 4.
	const (
		offVersion = 8
		offKind    = 12
		offMetric  = 13
		offM       = 16
		offEfc     = 20
		offDims    = 36
		offCount   = 40
		offEntry   = 44
	)
	set32 := func(off int, v uint32) []byte {
		b := slices.Clone(data)
		binary.LittleEndian.PutUint32(b[off:], v)
		return fixChecksum(b)
	}
	set8 := func(off int, v byte) []byte {
		b := slices.Clone(data)
		b[off] = v
		return fixChecksum(b)
	}
	cases := map[string][]byte{
		"version":  set32(offVersion, 2),
		"kind":     set8(offKind, keyKindString),
		"metric":   set8(offMetric, 9),
		"M":        set32(offM, 1),
		"efc":      set32(offEfc, 0),
		"dims":     set32(offDims, maxDims+1),
		"count":    set32(offCount, 1<<30),
		"countLow": set32(offCount, 3),
		"entry":    set32(offEntry, 1000),
	}
	for name, b := range cases {
		if err := NewGraph[int]().Import(bytes.NewReader(b)); err == nil {
			t.Errorf("%s: Import succeeded", name)
		}
	}
	if err := NewGraph[int]().Import(bytes.NewReader(fixChecksum(data))); err != nil {
		t.Fatalf("fixChecksum broke a valid stream: %v", err)
	}
}

func FuzzImport(f *testing.F) {
	f.Add(smallExport(f))
	g := &Graph[int]{M: 2, Distance: EuclideanDistance}
	g.Add(MakeNode(1, Vector{1, 2}), MakeNode(2, Vector{2, 1}), MakeNode(3, Vector{0, 0}))
	f.Add(exportBytes(f, g))
	f.Add(exportBytes(f, NewGraph[int]()))
	f.Add([]byte(formatMagic))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, b := range [][]byte{data, fixChecksum(data)} {
			h := NewGraph[int]()
			if err := h.Import(bytes.NewReader(b)); err != nil {
				continue
			}
			// Whatever was accepted is a consistent graph that can be
			// searched, modified and exported again.
			checkInvariants(t, h)
			if d := h.Dims(); d > 0 {
				q := make(Vector, d)
				q[0] = 1
				r := h.SearchWithDistance(q, 5)
				if len(r) != min(5, h.Len()) {
					t.Fatalf("%d results from %d nodes", len(r), h.Len())
				}
				h.Add(MakeNode(1<<40, q))
				h.Delete(1 << 40)
				checkInvariants(t, h)
			}
			if err := h.Export(io.Discard); err != nil {
				t.Fatalf("re-export: %v", err)
			}
		}
	})
}
