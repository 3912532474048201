package hnsw

import (
	"math/rand"
	"testing"
	"time"
)

// TestRecall checks recall@10 against exact search on 10k 128-d vectors
// (2k under -short, 1k under -race), for cosine and Euclidean distance, after the
// build and again after deleting 10% and updating 5% of the nodes.
//
// On clustered data (100 gaussian clusters) the default parameters must
// reach 0.95. Uniform random 128-d data has no low-dimensional structure
// and is the worst case for any graph index; it runs at half the size, the
// defaults are only guarded against regressions and EfSearch 400 must
// reach 0.95.
func TestRecall(t *testing.T) {
	n, nq := 10000, 200
	switch {
	case raceEnabled:
		// The race detector slows the build ~10x and this test is
		// single-goroutine; keep a small smoke run.
		n, nq = 1000, 30
	case testing.Short():
		n, nq = 2000, 50
	}
	type tc struct {
		kind     string
		n        int
		dist     DistanceFunc
		ef       int     // 0 = default
		min      float64 // recall@10 lower bound
		minDefEf float64 // lower bound with the default EfSearch, if ef != 0
	}
	cases := []tc{
		{"clustered", n, CosineDistance, 0, 0.95, 0},
		{"clustered", n, EuclideanDistance, 0, 0.95, 0},
		{"uniform", n / 2, CosineDistance, 400, 0.95, 0.70},
		{"uniform", n / 2, EuclideanDistance, 400, 0.95, 0.70},
	}
	for _, c := range cases {
		name := c.kind + "/" + map[metricKind]string{metricCosine: "cosine", metricL2: "l2"}[resolveMetric(c.dist).kind]
		t.Run(name, func(t *testing.T) {
			if raceEnabled && c.kind == "uniform" {
				t.Skip("skipped under the race detector")
			}
			t.Parallel()
			n := c.n
			ds := makeDataset(c.kind, n, nq, 128, 30)
			g := &Graph[int]{Distance: c.dist}
			ex := &Exact[int]{Distance: c.dist}
			start := time.Now()
			for i, v := range ds.data {
				g.Add(MakeNode(i, v))
			}
			build := time.Since(start)
			for i, v := range ds.data {
				ex.Add(MakeNode(i, v))
			}
			measure := func(phase string) {
				g.EfSearch = 0
				r := recallAt(t, g, ex, ds.queries, 10, nil)
				if c.ef != 0 {
					if r < c.minDefEf {
						t.Errorf("%s: recall@10 %.4f with default EfSearch, want >= %.2f", phase, r, c.minDefEf)
					}
					t.Logf("%s: recall@10 %.4f (default EfSearch)", phase, r)
					g.EfSearch = c.ef
					r = recallAt(t, g, ex, ds.queries, 10, nil)
				}
				if r < c.min {
					t.Errorf("%s: recall@10 %.4f with EfSearch %d, want >= %.2f", phase, r, c.ef, c.min)
				}
				t.Logf("%s: recall@10 %.4f (EfSearch %d), n=%d, build %v", phase, r, c.ef, g.Len(), build.Round(time.Millisecond))
			}
			measure("built")

			rng := rand.New(rand.NewSource(31))
			perm := rng.Perm(n)
			fresh := makeDataset(c.kind, n/20, 0, 128, 32).data
			for _, i := range perm[:n/10] {
				g.Delete(i)
				ex.Delete(i)
			}
			for j, i := range perm[n/10 : n/10+n/20] {
				g.Add(MakeNode(i, fresh[j]))
				ex.Add(MakeNode(i, fresh[j]))
			}
			measure("after 10% deletes, 5% updates")
			checkInvariants(t, g)
		})
	}
}
