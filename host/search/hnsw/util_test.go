package hnsw

import (
	"cmp"
	"math/rand"
	"testing"
)

// clustered returns n vectors of dim components drawn from nc gaussian
// clusters: centres are N(0, 1) per component, points are centre + N(0,
// sigma^2) per component.
func clustered(rng *rand.Rand, n, dim, nc int, sigma float64) [][]float32 {
	centres := make([][]float64, nc)
	for i := range centres {
		c := make([]float64, dim)
		for j := range c {
			c[j] = rng.NormFloat64()
		}
		centres[i] = c
	}
	out := make([][]float32, n)
	for i := range out {
		c := centres[rng.Intn(nc)]
		v := make([]float32, dim)
		for j := range v {
			v[j] = float32(c[j] + sigma*rng.NormFloat64())
		}
		out[i] = v
	}
	return out
}

// uniform returns n vectors with components uniform in [-1, 1).
func uniform(rng *rand.Rand, n, dim int) [][]float32 {
	out := make([][]float32, n)
	for i := range out {
		v := make([]float32, dim)
		for j := range v {
			v[j] = float32(2*rng.Float64() - 1)
		}
		out[i] = v
	}
	return out
}

type dataset struct {
	name    string
	data    [][]float32
	queries [][]float32
}

// makeDataset draws n data vectors and nq queries from the same
// distribution ("clustered": 100 gaussian clusters, "uniform").
func makeDataset(kind string, n, nq, dim int, seed int64) dataset {
	rng := rand.New(rand.NewSource(seed))
	var all [][]float32
	switch kind {
	case "clustered":
		all = clustered(rng, n+nq, dim, 100, 0.25)
	case "uniform":
		all = uniform(rng, n+nq, dim)
	default:
		panic(kind)
	}
	return dataset{name: kind, data: all[:n], queries: all[n:]}
}

type index interface {
	SearchFunc(near Vector, k int, filter func(int) bool) []SearchResult[int]
}

// recallAt returns the mean fraction of the exact k nearest (by key) that
// the graph returns, over the queries.
func recallAt(t testing.TB, g index, ex *Exact[int], queries [][]float32, k int, filter func(int) bool) float64 {
	t.Helper()
	hit, total := 0, 0
	for _, q := range queries {
		want := ex.SearchFunc(q, k, filter)
		got := g.SearchFunc(q, k, filter)
		set := make(map[int]bool, len(got))
		for i, r := range got {
			set[r.Key] = true
			if i > 0 && got[i-1].Distance > r.Distance {
				t.Fatalf("results not sorted: %v", got)
			}
		}
		for _, r := range want {
			if set[r.Key] {
				hit++
			}
		}
		total += len(want)
	}
	if total == 0 {
		return 1
	}
	return float64(hit) / float64(total)
}

// checkInvariants verifies the documented invariants of g's state.
func checkInvariants[K cmp.Ordered](t testing.TB, g *Graph[K]) {
	t.Helper()
	g.mu.RLock()
	defer g.mu.RUnlock()
	s := &g.st
	live := 0
	maxLvl := -1
	for id, lv := range s.levels {
		if lv < 0 {
			continue
		}
		live++
		maxLvl = max(maxLvl, int(lv))
		if got, ok := s.ids[s.keys[id]]; !ok || got != int32(id) {
			t.Fatalf("ids[keys[%d]] = %d, %v", id, got, ok)
		}
		if len(s.rev[id]) != int(lv)+1 || len(s.up[id]) != int(lv) {
			t.Fatalf("node %d level %d has %d rev and %d upper lists", id, lv, len(s.rev[id]), len(s.up[id]))
		}
		for l := 0; l <= int(lv); l++ {
			links := s.links(int32(id), l)
			if len(links) > s.mmax(l) {
				t.Fatalf("node %d layer %d has %d links", id, l, len(links))
			}
			seen := map[int32]bool{}
			for _, x := range links {
				if x == int32(id) || seen[x] || s.levels[x] < int8(l) {
					t.Fatalf("node %d layer %d bad link %d (level %d, dup %v)", id, l, x, s.levels[x], seen[x])
				}
				seen[x] = true
				if n := countID(s.rev[x][l], int32(id)); n != 1 {
					t.Fatalf("rev[%d][%d] holds %d %d times", x, l, id, n)
				}
			}
			for _, x := range s.rev[id][l] {
				if s.levels[x] < int8(l) || countID(s.links(x, l), int32(id)) != 1 {
					t.Fatalf("rev[%d][%d] lists %d which does not link to it", id, l, x)
				}
			}
		}
	}
	free := 0
	for _, id := range s.free {
		if s.levels[id] >= 0 {
			t.Fatalf("free slot %d is live", id)
		}
		free++
	}
	if live != s.live || len(s.ids) != live || live+free != len(s.levels) {
		t.Fatalf("live %d, s.live %d, ids %d, free %d, slots %d", live, s.live, len(s.ids), free, len(s.levels))
	}
	if live == 0 {
		if s.entry != -1 || s.maxLvl != -1 {
			t.Fatalf("empty graph has entry %d level %d", s.entry, s.maxLvl)
		}
		return
	}
	if s.entry < 0 || int(s.levels[s.entry]) != maxLvl || s.maxLvl != maxLvl {
		t.Fatalf("entry %d (level %d), maxLvl %d, want level %d", s.entry, s.levels[s.entry], s.maxLvl, maxLvl)
	}
}

func countID(a []int32, x int32) int {
	n := 0
	for _, y := range a {
		if y == x {
			n++
		}
	}
	return n
}
