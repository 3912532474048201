package stats

import (
	"math"
	"sync"
	"testing"
)

func TestHistogramCumulativeCounts(t *testing.T) {
	h := NewHistogram([]float64{1, 2, 4})
	for _, v := range []float64{0.5, 1, 1.5, 3, 10, 10} {
		h.Observe(v)
	}
	s := h.Snapshot()
	want := []uint64{2, 3, 4, 6}
	for i := range want {
		if s.Cumulative[i] != want[i] {
			t.Fatalf("cumulative %v, want %v", s.Cumulative, want)
		}
	}
	if s.Count != 6 || s.Sum != 26 {
		t.Fatalf("count %d sum %v", s.Count, s.Sum)
	}
	if q := s.Quantile(0.5); q < 1 || q > 2 {
		t.Fatalf("median estimate %v outside the (1,2] bucket", q)
	}
}

func TestHistogramConcurrentObserve(t *testing.T) {
	h := NewHistogram(LatencyBuckets)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 1000; i++ {
				h.Observe(0.001)
			}
		}()
	}
	wg.Wait()
	s := h.Snapshot()
	if s.Count != 8000 || math.Abs(s.Sum-8) > 1e-9 {
		t.Fatalf("count %d sum %v, want 8000 and 8", s.Count, s.Sum)
	}
}
