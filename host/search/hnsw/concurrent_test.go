package hnsw

import (
	"math/rand"
	"sync"
	"sync/atomic"
	"testing"
)

// TestConcurrentSearchDuringWrites runs searches (plain and filtered),
// lookups and exports while writers insert, update and delete. Run with
// -race. Every search must return sorted, distinct, live-looking results.
func TestConcurrentSearchDuringWrites(t *testing.T) {
	n, ops := 3000, 3000
	if testing.Short() || raceEnabled {
		n, ops = 1000, 300
	}
	const dim = 16
	ds := makeDataset("clustered", n, 64, dim, 20)
	g := &Graph[int]{M: 8, EfConstruction: 64}
	for i, v := range ds.data[:n/2] {
		g.Add(MakeNode(i, v))
	}

	var done atomic.Bool
	var wg sync.WaitGroup
	var searches atomic.Int64
	errc := make(chan string, 16)
	fail := func(msg string) {
		select {
		case errc <- msg:
		default:
		}
	}
	for r := 0; r < 4; r++ {
		wg.Add(1)
		go func(r int) {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(r)))
			for !done.Load() {
				q := ds.queries[rng.Intn(len(ds.queries))]
				k := 1 + rng.Intn(20)
				var filter func(int) bool
				if r%2 == 1 {
					mod := 1 + rng.Intn(50)
					filter = func(key int) bool { return key%mod == 0 }
				}
				res := g.SearchFunc(q, k, filter)
				if len(res) > k {
					fail("too many results")
				}
				seen := map[int]bool{}
				for i, x := range res {
					if i > 0 && res[i-1].Distance > x.Distance {
						fail("unsorted results")
					}
					if seen[x.Key] {
						fail("duplicate result")
					}
					seen[x.Key] = true
					if filter != nil && !filter(x.Key) {
						fail("filter violated")
					}
				}
				if r == 0 {
					for _, x := range g.Search(q, k) {
						if len(x.Value) != dim {
							fail("bad vector")
						}
					}
					g.Lookup(rng.Intn(n))
					g.Len()
				}
				searches.Add(1)
			}
		}(r)
	}
	var wwg sync.WaitGroup
	for w := 0; w < 2; w++ {
		wwg.Add(1)
		go func(w int) {
			defer wwg.Done()
			rng := rand.New(rand.NewSource(int64(100 + w)))
			for i := 0; i < ops; i++ {
				key := rng.Intn(n)
				switch rng.Intn(3) {
				case 0:
					g.Delete(key)
				case 1:
					g.Add(MakeNode(key, ds.data[key]))
				default:
					g.Add(MakeNode(key, ds.data[rng.Intn(n)])) // update
				}
			}
		}(w)
	}
	wwg.Wait()
	done.Store(true)
	wg.Wait()
	close(errc)
	for msg := range errc {
		t.Error(msg)
	}
	checkInvariants(t, g)
	if searches.Load() == 0 {
		t.Fatal("no searches ran")
	}
	t.Logf("%d searches during %d writes", searches.Load(), 2*ops)
}
