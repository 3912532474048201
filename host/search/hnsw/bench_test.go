package hnsw

import (
	"bytes"
	"fmt"
	"math/rand"
	"slices"
	"sync"
	"testing"
	"time"
)

// Benchmarks. The 100k graphs take about a minute each to build (single
// writer); they are built once per process, on first use, and only when a
// benchmark that needs them runs (go test -bench ...), never in plain
// go test runs.
//
//	go test -run '^$' -bench 'Search|Add' ./host/search/hnsw/
//	go test -run '^$' -bench Recall -timeout 1h ./host/search/hnsw/

const benchDim = 128

type benchKey struct {
	kind string
	n    int
	l2   bool
}

type benchEntry struct {
	once  sync.Once
	g     *Graph[int]
	ex    *Exact[int]
	ds    dataset
	build time.Duration
}

var (
	benchMu    sync.Mutex
	benchCache = map[benchKey]*benchEntry{}
)

// benchGraph returns the graph and exact index for a data set, building them
// on first use.
func benchGraph(b *testing.B, k benchKey) *benchEntry {
	benchMu.Lock()
	e := benchCache[k]
	if e == nil {
		e = new(benchEntry)
		benchCache[k] = e
	}
	benchMu.Unlock()
	e.once.Do(func() {
		dist := CosineDistance
		if k.l2 {
			dist = EuclideanDistance
		}
		e.ds = makeDataset(k.kind, k.n, 500, benchDim, 40)
		e.g = &Graph[int]{Distance: dist}
		e.ex = &Exact[int]{Distance: dist}
		start := time.Now()
		for i, v := range e.ds.data {
			e.g.Add(MakeNode(i, v))
		}
		e.build = time.Since(start)
		for i, v := range e.ds.data {
			e.ex.Add(MakeNode(i, v))
		}
		b.Logf("built %s n=%d l2=%v in %v", k.kind, k.n, k.l2, e.build.Round(time.Millisecond))
	})
	return e
}

// BenchmarkAdd measures inserting into a growing graph of clustered 128-d
// vectors (cosine, default parameters); ns/op is the mean insert cost over
// graph sizes 0..b.N.
func BenchmarkAdd(b *testing.B) {
	data := makeDataset("clustered", b.N, 0, benchDim, 41).data
	g := NewGraph[int]()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		g.Add(MakeNode(i, data[i]))
	}
}

// BenchmarkBuild10k reports the time to build a 10k graph from scratch.
func BenchmarkBuild10k(b *testing.B) {
	data := makeDataset("clustered", 10000, 0, benchDim, 42).data
	for b.Loop() {
		g := NewGraph[int]()
		for i, v := range data {
			g.Add(MakeNode(i, v))
		}
	}
}

// BenchmarkSearch measures k=10 searches with default parameters on
// clustered 128-d data under cosine distance, single-threaded and with
// GOMAXPROCS goroutines, and reports the 99th percentile latency.
func BenchmarkSearch(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		name := fmt.Sprintf("%dk", n/1000)
		b.Run(name+"/serial", func(b *testing.B) {
			e := benchGraph(b, benchKey{"clustered", n, false})
			lat := make([]time.Duration, 0, 1<<16)
			i := 0
			b.ResetTimer()
			for b.Loop() {
				q := e.ds.queries[i%len(e.ds.queries)]
				i++
				t0 := time.Now()
				e.g.Search(q, 10)
				lat = append(lat, time.Since(t0))
			}
			reportP99(b, lat)
		})
		b.Run(name+"/parallel", func(b *testing.B) {
			e := benchGraph(b, benchKey{"clustered", n, false})
			var mu sync.Mutex
			var all []time.Duration
			var seed int64
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				mu.Lock()
				seed++
				rng := rand.New(rand.NewSource(seed))
				mu.Unlock()
				var lat []time.Duration
				for pb.Next() {
					q := e.ds.queries[rng.Intn(len(e.ds.queries))]
					t0 := time.Now()
					e.g.Search(q, 10)
					lat = append(lat, time.Since(t0))
				}
				mu.Lock()
				all = append(all, lat...)
				mu.Unlock()
			})
			reportP99(b, all)
		})
	}
}

// BenchmarkSearchDuringWrites measures searches on the 10k graph while one
// goroutine keeps updating vectors (each update is a delete and insert under
// the write lock).
func BenchmarkSearchDuringWrites(b *testing.B) {
	e := benchGraph(b, benchKey{"clustered", 10_000, false})
	var buf bytes.Buffer
	if err := e.g.Export(&buf); err != nil {
		b.Fatal(err)
	}
	g := NewGraph[int]()
	if err := g.Import(&buf); err != nil {
		b.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	var writes int
	go func() {
		defer wg.Done()
		rng := rand.New(rand.NewSource(43))
		for {
			select {
			case <-stop:
				return
			default:
			}
			k := rng.Intn(len(e.ds.data))
			g.Add(MakeNode(k, e.ds.data[rng.Intn(len(e.ds.data))]))
			writes++
		}
	}()
	lat := make([]time.Duration, 0, 1<<16)
	i := 0
	b.ResetTimer()
	for b.Loop() {
		q := e.ds.queries[i%len(e.ds.queries)]
		i++
		t0 := time.Now()
		g.Search(q, 10)
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	close(stop)
	wg.Wait()
	reportP99(b, lat)
	b.ReportMetric(float64(writes)/b.Elapsed().Seconds(), "writes/s")
}

func reportP99(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
}

// BenchmarkRecall reports recall@10 against exact search at 100k (and 10k)
// 128-d vectors with default parameters, for clustered and uniform data,
// cosine and Euclidean distance, as built and after deleting 10% and
// updating 5% of the nodes (on a copy made with Export/Import). The timed
// work is one k=10 search per op over the query set. Also reported: the
// build time (build-s), recall with EfSearch 200/400/800, and the mean
// delete time (delete-µs).
func BenchmarkRecall(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		for _, kind := range []string{"clustered", "uniform"} {
			for _, l2 := range []bool{false, true} {
				dist := "cosine"
				if l2 {
					dist = "l2"
				}
				key := benchKey{kind, n, l2}
				b.Run(fmt.Sprintf("%dk/%s/%s/built", n/1000, kind, dist), func(b *testing.B) {
					e := benchGraph(b, key)
					// Recall with larger EfSearch, for data where the
					// default is not enough.
					var wider []float64
					for _, ef := range []int{200, 400, 800} {
						e.g.EfSearch = ef
						wider = append(wider, recallAt(b, e.g, e.ex, e.ds.queries, 10, nil))
					}
					e.g.EfSearch = 0
					benchRecall(b, e.g, e.ex, e.ds.queries)
					b.ReportMetric(e.build.Seconds(), "build-s")
					for i, ef := range []int{200, 400, 800} {
						b.ReportMetric(wider[i], fmt.Sprintf("recall@10-ef%d", ef))
					}
				})
				b.Run(fmt.Sprintf("%dk/%s/%s/deleted", n/1000, kind, dist), func(b *testing.B) {
					e := benchGraph(b, key)
					g, ex, del := churn(b, e, kind)
					benchRecall(b, g, ex, e.ds.queries)
					b.ReportMetric(float64(del.Microseconds())/float64(len(e.ds.data)/10), "delete-µs")
				})
			}
		}
	}
}

func benchRecall(b *testing.B, g *Graph[int], ex *Exact[int], queries [][]float32) {
	b.StopTimer()
	r := recallAt(b, g, ex, queries, 10, nil)
	b.StartTimer()
	i := 0
	for b.Loop() {
		g.Search(queries[i%len(queries)], 10)
		i++
	}
	b.ReportMetric(r, "recall@10")
}

// churn copies e's graph and exact index, deletes 10% and updates 5% of the
// keys in both, and returns the copies and the time the deletes took.
func churn(b *testing.B, e *benchEntry, kind string) (*Graph[int], *Exact[int], time.Duration) {
	b.StopTimer()
	defer b.StartTimer()
	var buf bytes.Buffer
	if err := e.g.Export(&buf); err != nil {
		b.Fatal(err)
	}
	g := NewGraph[int]()
	if err := g.Import(&buf); err != nil {
		b.Fatal(err)
	}
	ex := &Exact[int]{Distance: g.Distance}
	n := len(e.ds.data)
	for i, v := range e.ds.data {
		ex.Add(MakeNode(i, v))
	}
	rng := rand.New(rand.NewSource(44))
	perm := rng.Perm(n)
	fresh := makeDataset(kind, n/20, 0, benchDim, 45).data
	start := time.Now()
	for _, i := range perm[:n/10] {
		g.Delete(i)
		ex.Delete(i)
	}
	del := time.Since(start)
	for j, i := range perm[n/10 : n/10+n/20] {
		g.Add(MakeNode(i, fresh[j]))
		ex.Add(MakeNode(i, fresh[j]))
	}
	return g, ex, del
}

// BenchmarkExport and BenchmarkImport measure persistence of the 10k graph.
func BenchmarkExport(b *testing.B) {
	e := benchGraph(b, benchKey{"clustered", 10_000, false})
	var buf bytes.Buffer
	for b.Loop() {
		buf.Reset()
		if err := e.g.Export(&buf); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(int64(buf.Len()))
}

func BenchmarkImport(b *testing.B) {
	e := benchGraph(b, benchKey{"clustered", 10_000, false})
	var buf bytes.Buffer
	if err := e.g.Export(&buf); err != nil {
		b.Fatal(err)
	}
	data := buf.Bytes()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if err := NewGraph[int]().Import(bytes.NewReader(data)); err != nil {
			b.Fatal(err)
		}
	}
}
