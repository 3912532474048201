package search

import (
	"fmt"
	"math/rand"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"
)

// clustered returns n unit-ish vectors of dims dimensions drawn around 100 random centres (closer to real
// embeddings than uniform noise, and harder for a graph than one blob).
func clustered(r *rand.Rand, n, dims int) [][]float32 {
	centres := make([][]float32, 100)
	for i := range centres {
		centres[i] = make([]float32, dims)
		for j := range centres[i] {
			centres[i][j] = float32(r.NormFloat64())
		}
	}
	out := make([][]float32, n)
	for i := range out {
		c := centres[r.Intn(len(centres))]
		v := make([]float32, dims)
		for j := range v {
			v[j] = c[j] + float32(r.NormFloat64())*0.8
		}
		out[i] = v
	}
	return out
}

// recallAt10 builds idx and an exact index over the same vectors (added by workers in parallel, as
// ingest does) and returns the mean recall@10 of queries against exact search.
func recallAt10(t testing.TB, idx VectorIndex, n, dims, queries int) (float64, time.Duration) {
	r := rand.New(rand.NewSource(1))
	vecs := clustered(r, n+queries, dims)
	exact := newExactIndex()
	start := time.Now()
	var wg sync.WaitGroup
	workers := runtime.GOMAXPROCS(0)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := w; i < n; i += workers {
				idx.Add(fmt.Sprint(i), vecs[i])
			}
		}(w)
	}
	wg.Wait()
	build := time.Since(start)
	for i := 0; i < n; i++ {
		exact.Add(fmt.Sprint(i), vecs[i])
	}
	var sum float64
	for q := 0; q < queries; q++ {
		want := map[string]bool{}
		for _, h := range exact.Search(vecs[n+q], 10, nil) {
			want[h.Key] = true
		}
		got := idx.Search(vecs[n+q], 10, nil)
		hit := 0
		for _, h := range got {
			if want[h.Key] {
				hit++
			}
		}
		sum += float64(hit) / 10
	}
	return sum / float64(queries), build
}

// TestVectorRecall checks the vector index against exact search: recall@10 ≥ 0.95 on 10k clustered
// 64-dimensional vectors (BenchmarkVectorRecall measures 100k 384-dimensional ones).
func TestVectorRecall(t *testing.T) {
	n := 10000
	if testing.Short() {
		n = 3000
	}
	recall, build := recallAt10(t, newVectorIndex(), n, 64, 200)
	t.Logf("recall@10 %.4f at %d vectors (built in %v)", recall, n, build.Round(time.Millisecond))
	if recall < 0.95 {
		t.Fatalf("recall@10 %.4f < 0.95", recall)
	}
}

// BenchmarkVectorRecall reports recall@10 against exact search and search latency at PLINTH_RECALL_N
// vectors (default 100000) of 384 dimensions:
//
//	go test -run=^$ -bench=VectorRecall -benchtime=1x ./host/search/
func BenchmarkVectorRecall(b *testing.B) {
	n := 100000
	if v := os.Getenv("PLINTH_RECALL_N"); v != "" {
		fmt.Sscan(v, &n)
	}
	for i := 0; i < b.N; i++ {
		idx := newVectorIndex()
		recall, build := recallAt10(b, idx, n, 384, 500)
		b.ReportMetric(recall, "recall@10")
		b.ReportMetric(build.Seconds(), "build-s")
		r := rand.New(rand.NewSource(2))
		qs := clustered(r, 1000, 384)
		lat := make([]time.Duration, len(qs))
		for j, q := range qs {
			s := time.Now()
			idx.Search(q, 10, nil)
			lat[j] = time.Since(s)
		}
		p50, p99 := percentiles(lat)
		b.ReportMetric(float64(p50.Microseconds()), "p50-µs")
		b.ReportMetric(float64(p99.Microseconds()), "p99-µs")
	}
}
