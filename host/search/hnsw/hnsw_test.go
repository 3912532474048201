package hnsw

import (
	"cmp"
	"fmt"
	"math"
	"math/rand"
	"slices"
	"testing"
)

func TestHeaps(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	var mn minHeap
	var mx maxHeap
	var rmin, rmax []float32
	for i := 0; i < 5000; i++ {
		if rng.Intn(3) > 0 {
			d := float32(rng.Intn(100))
			mn.push(cand{d, int32(i)})
			mx.push(cand{d, int32(i)})
			rmin, rmax = append(rmin, d), append(rmax, d)
		}
		if len(rmin) > 0 && rng.Intn(2) == 0 {
			slices.Sort(rmin)
			if got := mn.pop().d; got != rmin[0] {
				t.Fatalf("minHeap.pop = %v, want %v", got, rmin[0])
			}
			rmin = rmin[1:]
		}
		if len(rmax) > 0 && rng.Intn(2) == 0 {
			slices.Sort(rmax)
			if got := mx.pop().d; got != rmax[len(rmax)-1] {
				t.Fatalf("maxHeap.pop = %v, want %v", got, rmax[len(rmax)-1])
			}
			rmax = rmax[:len(rmax)-1]
		}
	}
	// pushBounded keeps the smallest limit values.
	var b maxHeap
	var all []float32
	for i := 0; i < 1000; i++ {
		d := rng.Float32()
		all = append(all, d)
		b.pushBounded(cand{d, int32(i)}, 10)
	}
	slices.Sort(all)
	got := b.drainSorted(nil)
	for i := range got {
		if got[i].d != all[i] {
			t.Fatalf("pushBounded kept %v at %d, want %v", got[i].d, i, all[i])
		}
	}
}

func TestDistances(t *testing.T) {
	rng := rand.New(rand.NewSource(2))
	for _, n := range []int{1, 3, 7, 8, 9, 16, 31, 128, 130} {
		a, b := make([]float32, n), make([]float32, n)
		var dd, ss float64
		for i := range a {
			a[i], b[i] = float32(rng.NormFloat64()), float32(rng.NormFloat64())
			dd += float64(a[i]) * float64(b[i])
			ss += float64(a[i]-b[i]) * float64(a[i]-b[i])
		}
		if got := dot(a, b); math.Abs(float64(got)-dd) > 1e-4*math.Max(1, math.Abs(dd)) {
			t.Errorf("dot n=%d = %v, want %v", n, got, dd)
		}
		if got := EuclideanDistance(a, b); math.Abs(float64(got)-math.Sqrt(ss)) > 1e-4*math.Sqrt(ss) {
			t.Errorf("EuclideanDistance n=%d = %v, want %v", n, got, math.Sqrt(ss))
		}
		na, nb := math.Sqrt(float64(dot(a, a))), math.Sqrt(float64(dot(b, b)))
		want := 1 - dd/(na*nb)
		if got := CosineDistance(a, b); math.Abs(float64(got)-want) > 1e-5 {
			t.Errorf("CosineDistance n=%d = %v, want %v", n, got, want)
		}
		// The graph's prepared form gives the same cosine distance.
		m := metric{kind: metricCosine}
		pa, pb := make([]float32, n), make([]float32, n)
		m.prepare(pa, a)
		m.prepare(pb, b)
		if got := m.dist(pa, pb); math.Abs(float64(got)-want) > 1e-5 {
			t.Errorf("prepared cosine n=%d = %v, want %v", n, got, want)
		}
	}
	if got := CosineDistance([]float32{0, 0}, []float32{1, 0}); got != 1 {
		t.Errorf("CosineDistance(zero, x) = %v, want 1", got)
	}
	if resolveMetric(nil).kind != metricCosine || resolveMetric(CosineDistance).kind != metricCosine ||
		resolveMetric(EuclideanDistance).kind != metricL2 {
		t.Error("built-in distances not recognised")
	}
	custom := func(a, b []float32) float32 { return 0 }
	if resolveMetric(custom).kind != metricCustom {
		t.Error("custom distance not recognised as custom")
	}
}

func randVecs(rng *rand.Rand, n, dim int) [][]float32 {
	return uniform(rng, n, dim)
}

func TestEmptyAndZeroValue(t *testing.T) {
	var g Graph[string]
	if g.Len() != 0 || g.Dims() != 0 {
		t.Fatal("zero graph not empty")
	}
	if r := g.Search([]float32{1, 2}, 3); r != nil {
		t.Fatalf("search on empty graph = %v", r)
	}
	if g.Delete("x") {
		t.Fatal("Delete on empty graph reported true")
	}
	if _, ok := g.Lookup("x"); ok {
		t.Fatal("Lookup on empty graph found a key")
	}
	g.Add(MakeNode("a", Vector{1, 0}))
	if g.Len() != 1 || g.Dims() != 2 {
		t.Fatalf("Len %d Dims %d", g.Len(), g.Dims())
	}
	r := g.Search(Vector{1, 0.1}, 5)
	if len(r) != 1 || r[0].Key != "a" || r[0].Value[0] != 1 {
		t.Fatalf("Search = %v", r)
	}
	if r := g.Search(Vector{1, 0, 0}, 5); r != nil {
		t.Fatalf("search with wrong dims = %v", r)
	}
	if r := g.Search(Vector{1, 0}, 0); r != nil {
		t.Fatalf("search with k=0 = %v", r)
	}
	if r := g.Search(Vector{float32(math.NaN()), 0}, 1); r != nil {
		t.Fatalf("search with NaN = %v", r)
	}
	if !g.Delete("a") || g.Len() != 0 {
		t.Fatal("Delete failed")
	}
	if r := g.Search(Vector{1, 0}, 5); r != nil {
		t.Fatalf("search after deleting all = %v", r)
	}
	g.Add(MakeNode("b", Vector{0, 1}))
	if r := g.Search(Vector{0, 1}, 5); len(r) != 1 || r[0].Key != "b" {
		t.Fatalf("search after re-add = %v", r)
	}
	checkInvariants(t, &g)
}

func TestAddPanics(t *testing.T) {
	for name, v := range map[string]Vector{
		"empty": {},
		"nan":   {1, float32(math.NaN())},
		"inf":   {float32(math.Inf(1)), 1},
		"dims":  {1, 2, 3},
	} {
		t.Run(name, func(t *testing.T) {
			g := NewGraph[int]()
			g.Add(MakeNode(0, Vector{1, 1}))
			defer func() {
				if recover() == nil {
					t.Fatal("Add did not panic")
				}
				// The graph is still usable (the lock was released).
				if g.Len() != 1 {
					t.Fatalf("Len = %d", g.Len())
				}
			}()
			g.Add(MakeNode(1, v))
		})
	}
}

func TestLookupUpdateDelete(t *testing.T) {
	for _, dist := range []DistanceFunc{CosineDistance, EuclideanDistance} {
		rng := rand.New(rand.NewSource(3))
		g := &Graph[int]{Distance: dist, M: 4}
		ex := &Exact[int]{Distance: dist}
		vecs := randVecs(rng, 600, 8)
		for i, v := range vecs {
			g.Add(MakeNode(i, v))
			ex.Add(MakeNode(i, v))
		}
		for i := 0; i < 600; i += 7 {
			got, ok := g.Lookup(i)
			if !ok {
				t.Fatalf("Lookup(%d) missing", i)
			}
			for j := range got {
				if math.Abs(float64(got[j]-vecs[i][j])) > 1e-6 {
					t.Fatalf("Lookup(%d) = %v, want %v", i, got, vecs[i])
				}
			}
		}
		// Update a third, delete a third, in interleaved random order.
		for _, i := range rng.Perm(600)[:400] {
			if i%2 == 0 {
				v := randVecs(rng, 1, 8)[0]
				g.Add(MakeNode(i, v))
				ex.Add(MakeNode(i, v))
			} else {
				if !g.Delete(i) || !ex.Delete(i) {
					t.Fatalf("Delete(%d) = false", i)
				}
				if g.Delete(i) {
					t.Fatalf("second Delete(%d) = true", i)
				}
			}
		}
		checkInvariants(t, g)
		if g.Len() != ex.Len() {
			t.Fatalf("Len = %d, want %d", g.Len(), ex.Len())
		}
		for i := range 600 {
			gv, gok := g.Lookup(i)
			ev, eok := ex.Lookup(i)
			if gok != eok || (gok && math.Abs(float64(gv[0]-ev[0])) > 1e-6) {
				t.Fatalf("Lookup(%d) = %v %v, exact %v %v", i, gv, gok, ev, eok)
			}
		}
		qs := randVecs(rng, 50, 8)
		if r := recallAt(t, g, ex, qs, 10, nil); r < 0.99 {
			t.Errorf("%v: recall after updates and deletes = %v", resolveMetric(dist).kind, r)
		}
		// Re-adding an identical vector is a no-op.
		before := g.st.live
		v, _ := ex.Lookup(0)
		g.Add(MakeNode(0, v))
		if g.st.live != before {
			t.Fatal("re-add changed Len")
		}
		checkInvariants(t, g)
	}
}

func TestDeleteEverything(t *testing.T) {
	rng := rand.New(rand.NewSource(4))
	g := &Graph[int]{M: 3}
	vecs := randVecs(rng, 300, 4)
	for i, v := range vecs {
		g.Add(MakeNode(i, v))
	}
	for n, i := range rng.Perm(300) {
		if !g.Delete(i) {
			t.Fatalf("Delete(%d) = false", i)
		}
		if n%37 == 0 {
			checkInvariants(t, g)
			// Every remaining node is still found by its own vector.
			for _, j := range rng.Perm(300)[:20] {
				if _, ok := g.Lookup(j); !ok {
					continue
				}
				r := g.SearchWithDistance(vecs[j], 1)
				if len(r) != 1 || r[0].Distance > 1e-6 {
					t.Fatalf("after %d deletes: search for %d = %v", n+1, j, r)
				}
			}
		}
	}
	checkInvariants(t, g)
	if g.Len() != 0 {
		t.Fatalf("Len = %d", g.Len())
	}
	// Slots are reused.
	for i, v := range vecs {
		g.Add(MakeNode(i, v))
	}
	if len(g.st.levels) != 300 {
		t.Fatalf("%d slots after refill, want 300", len(g.st.levels))
	}
	checkInvariants(t, g)
}

func TestSearchSortedAndK(t *testing.T) {
	rng := rand.New(rand.NewSource(5))
	g := &Graph[int]{Distance: EuclideanDistance}
	ex := &Exact[int]{Distance: EuclideanDistance}
	for i, v := range randVecs(rng, 1000, 16) {
		g.Add(MakeNode(i, v))
		ex.Add(MakeNode(i, v))
	}
	q := randVecs(rng, 1, 16)[0]
	for _, k := range []int{1, 10, 100, 500, 1000, 2000} {
		r := g.SearchWithDistance(q, k)
		if len(r) != min(k, 1000) {
			t.Fatalf("k=%d: %d results", k, len(r))
		}
		if !slices.IsSortedFunc(r, func(a, b SearchResult[int]) int { return cmpF(a.Distance, b.Distance) }) {
			t.Fatalf("k=%d: results not sorted", k)
		}
		nodes := g.Search(q, k)
		for i := range nodes {
			if nodes[i].Key != r[i].Key {
				t.Fatalf("Search and SearchWithDistance differ at %d", i)
			}
			if d := EuclideanDistance(q, nodes[i].Value); math.Abs(float64(d-r[i].Distance)) > 1e-4 {
				t.Fatalf("reported distance %v, recomputed %v", r[i].Distance, d)
			}
		}
	}
	// k >= ef uses an ef of at least k: asking for everything returns it
	// exactly.
	all := g.SearchWithDistance(q, 1000)
	want := ex.SearchWithDistance(q, 1000)
	for i := range want {
		if all[i].Key != want[i].Key {
			t.Fatalf("full search differs from exact at %d", i)
		}
	}
}

func cmpF(a, b float32) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func TestFilteredSearch(t *testing.T) {
	n := 5000
	switch {
	case raceEnabled:
		n = 1000
	case testing.Short():
		n = 2000
	}
	ds := makeDataset("clustered", n, 40, 32, 6)
	g := &Graph[int]{}
	ex := &Exact[int]{}
	for i, v := range ds.data {
		g.Add(MakeNode(i, v))
		ex.Add(MakeNode(i, v))
	}
	for _, mod := range []int{2, 10, 50, 400, 2000, n + 1} {
		filter := func(k int) bool { return k%mod == 0 }
		matching := (n + mod - 1) / mod
		r := recallAt(t, g, ex, ds.queries, 10, filter)
		if r < 0.95 {
			t.Errorf("filter 1/%d: recall %v", mod, r)
		}
		for _, q := range ds.queries[:5] {
			got := g.SearchFunc(q, 10, filter)
			if len(got) != min(10, matching) {
				t.Fatalf("filter 1/%d: %d results, %d match", mod, len(got), matching)
			}
			for _, x := range got {
				if !filter(x.Key) {
					t.Fatalf("filter 1/%d: returned rejected key %d", mod, x.Key)
				}
			}
		}
	}
	// A filter correlated with position (a "tenant" of contiguous keys).
	tenant := func(k int) bool { return k >= n/3 && k < n/3+n/20 }
	if r := recallAt(t, g, ex, ds.queries, 10, tenant); r < 0.95 {
		t.Errorf("tenant filter: recall %v", r)
	}
	if got := g.SearchFunc(ds.queries[0], 10, func(int) bool { return false }); got != nil {
		t.Fatalf("reject-all filter returned %v", got)
	}
}

func TestStringKeysAndCustomDistance(t *testing.T) {
	manhattan := func(a, b []float32) float32 {
		var s float32
		for i := range a {
			s += float32(math.Abs(float64(a[i] - b[i])))
		}
		return s
	}
	rng := rand.New(rand.NewSource(7))
	g := &Graph[string]{Distance: manhattan, M: 8, EfSearch: 64}
	ex := &Exact[string]{Distance: manhattan}
	for i, v := range randVecs(rng, 2000, 6) {
		k := fmt.Sprintf("doc-%04d", i)
		g.Add(MakeNode(k, v))
		ex.Add(MakeNode(k, v))
	}
	hit, total := 0, 0
	for _, q := range randVecs(rng, 50, 6) {
		want := ex.SearchWithDistance(q, 10)
		got := g.SearchWithDistance(q, 10)
		for i := range want {
			total++
			if slices.ContainsFunc(got, func(r SearchResult[string]) bool { return r.Key == want[i].Key }) {
				hit++
			}
		}
		if got[0].Distance != manhattan(q, mustLookup(t, g, got[0].Key)) {
			t.Fatalf("custom distance not used for results")
		}
	}
	if r := float64(hit) / float64(total); r < 0.95 {
		t.Errorf("custom distance recall %v", r)
	}
	checkInvariants(t, g)
}

func mustLookup[K cmp.Ordered](t *testing.T, g *Graph[K], k K) Vector {
	v, ok := g.Lookup(k)
	if !ok {
		t.Fatalf("Lookup(%v) failed", k)
	}
	return v
}

func TestExactIndex(t *testing.T) {
	e := NewExact[int]()
	e.Add(MakeNode(1, Vector{0, 1}), MakeNode(2, Vector{1, 0}), MakeNode(3, Vector{1, 1}))
	r := e.SearchWithDistance(Vector{1, 0.1}, 2)
	if len(r) != 2 || r[0].Key != 2 || r[1].Key != 3 {
		t.Fatalf("Exact search = %v", r)
	}
	if !e.Delete(2) || e.Delete(2) || e.Len() != 2 || e.Dims() != 2 {
		t.Fatal("Exact delete")
	}
	if r := e.Search(Vector{1, 0}, 5); len(r) != 2 || r[0].Key != 3 {
		t.Fatalf("Exact search after delete = %v", r)
	}
	if v, ok := e.Lookup(1); !ok || v[1] != 1 {
		t.Fatalf("Exact lookup = %v %v", v, ok)
	}
}

func TestLevelsDeterministic(t *testing.T) {
	build := func() []int8 {
		g := NewGraph[int]()
		rng := rand.New(rand.NewSource(8))
		for i, v := range randVecs(rng, 500, 4) {
			g.Add(MakeNode(i, v))
		}
		return slices.Clone(g.st.levels)
	}
	a, b := build(), build()
	if !slices.Equal(a, b) {
		t.Fatal("builds with the default Rng differ")
	}
	hist := map[int8]int{}
	for _, l := range a {
		hist[l]++
	}
	// With M = 16, P(level >= 1) = 1/16.
	if hist[0] < 400 || hist[1] == 0 {
		t.Fatalf("level histogram %v", hist)
	}
}

// TestFilterEstimateFooled accepts exactly the keys the selectivity sample
// looks at (plus a few others), so the estimate says "everything matches"
// while almost nothing does: the graph search must run out of budget and
// fall back to the scan, still returning the k nearest accepted keys.
func TestFilterEstimateFooled(t *testing.T) {
	n := 3000
	if raceEnabled {
		n = 1000
	}
	ds := makeDataset("clustered", n, 10, 16, 14)
	g := &Graph[int]{}
	ex := &Exact[int]{}
	for i, v := range ds.data {
		g.Add(MakeNode(i, v))
		ex.Add(MakeNode(i, v))
	}
	accept := map[int]bool{}
	for i := uint64(0); i < filterSamples; i++ {
		accept[g.st.keys[(i*0x9E3779B97F4A7C15+0x632BE59BD9B4E019)%uint64(n)]] = true
	}
	for i := 0; i < n; i += 97 {
		accept[i] = true
	}
	filter := func(k int) bool { return accept[k] }
	if est := g.st.estimateMatches(filter); est != n {
		t.Fatalf("estimate %d, want the fooled %d", est, n)
	}
	// The graph search alone gives up.
	sc := g.getScratch()
	sc.q = make([]float32, 16)
	g.st.met.prepare(sc.q, ds.queries[0])
	eps := []cand{{g.st.met.dist(sc.q, g.st.vec(g.st.entry)), g.st.entry}}
	if g.st.searchLayer(sc, sc.q, eps, 100, 0, filter, n/4) {
		t.Fatal("graph search finished within budget; the fallback is not exercised")
	}
	if r := recallAt(t, g, ex, ds.queries, 10, filter); r != 1 {
		t.Fatalf("recall %v, want 1 (exact fallback)", r)
	}
}

// TestPanickingDistance checks that a custom distance panicking in the
// middle of an insert or delete leaves the graph consistent and usable
// (the failed operation is not applied).
func TestPanickingDistance(t *testing.T) {
	var explode bool
	calls := 0
	dist := func(a, b []float32) float32 {
		calls++
		if explode && calls%50 == 0 {
			panic("boom")
		}
		return sqL2(a, b)
	}
	g := &Graph[int]{Distance: dist, M: 4}
	rng := rand.New(rand.NewSource(15))
	vecs := randVecs(rng, 400, 6)
	for i, v := range vecs[:300] {
		g.Add(MakeNode(i, v))
	}
	try := func(f func()) {
		defer func() { _ = recover() }()
		f()
	}
	explode = true
	for i := 300; i < 400; i++ {
		try(func() { g.Add(MakeNode(i, vecs[i])) })
		try(func() { g.Delete(i - 300) })
	}
	explode = false
	checkInvariants(t, g)
	for i, v := range vecs {
		g.Add(MakeNode(i, v))
	}
	checkInvariants(t, g)
	if g.Len() != 400 {
		t.Fatalf("Len = %d", g.Len())
	}
}
