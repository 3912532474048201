// Package stats holds the lock-free counters and histograms behind Plinth's metrics. The runtime records
// per-plugin call statistics with them and the host renders them (and its own) in the Prometheus text
// format; it is a leaf package so both can use it.
package stats

import (
	"math"
	"sync/atomic"
	"time"
)

// LatencyBuckets are the upper bounds, in seconds, of the latency histograms: 10 µs to 10 s.
var LatencyBuckets = []float64{
	0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
	0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
}

// Histogram counts observations into fixed buckets. The zero value is not usable; use NewHistogram.
// Observe is safe for concurrent use and does not allocate.
type Histogram struct {
	bounds []float64
	counts []atomic.Uint64 // len(bounds)+1; the last is +Inf
	sum    atomic.Uint64   // float64 bits
	count  atomic.Uint64
}

// NewHistogram returns a histogram with the given ascending upper bounds.
func NewHistogram(bounds []float64) *Histogram {
	return &Histogram{bounds: bounds, counts: make([]atomic.Uint64, len(bounds)+1)}
}

// Observe records v.
func (h *Histogram) Observe(v float64) {
	i := 0
	for i < len(h.bounds) && v > h.bounds[i] {
		i++
	}
	h.counts[i].Add(1)
	h.count.Add(1)
	for {
		old := h.sum.Load()
		if h.sum.CompareAndSwap(old, math.Float64bits(math.Float64frombits(old)+v)) {
			return
		}
	}
}

// ObserveDuration records d in seconds.
func (h *Histogram) ObserveDuration(d time.Duration) { h.Observe(d.Seconds()) }

// Snapshot is a histogram's state at one instant, with cumulative bucket counts as Prometheus wants them.
type Snapshot struct {
	Bounds     []float64
	Cumulative []uint64 // per bound, then +Inf
	Sum        float64
	Count      uint64
}

// Snapshot returns the histogram's current state.
func (h *Histogram) Snapshot() Snapshot {
	s := Snapshot{Bounds: h.bounds, Cumulative: make([]uint64, len(h.counts))}
	var c uint64
	for i := range h.counts {
		c += h.counts[i].Load()
		s.Cumulative[i] = c
	}
	s.Sum = math.Float64frombits(h.sum.Load())
	s.Count = c
	return s
}

// Quantile estimates the q-quantile (0 < q < 1) from the buckets, by linear interpolation inside the
// bucket that holds it. It returns 0 for an empty histogram.
func (s Snapshot) Quantile(q float64) float64 {
	if s.Count == 0 {
		return 0
	}
	rank := q * float64(s.Count)
	lower := 0.0
	var prev uint64
	for i, c := range s.Cumulative {
		if float64(c) >= rank {
			if i == len(s.Bounds) {
				return lower
			}
			upper := s.Bounds[i]
			inBucket := float64(c - prev)
			if inBucket == 0 {
				return upper
			}
			return lower + (upper-lower)*(rank-float64(prev))/inBucket
		}
		prev = c
		if i < len(s.Bounds) {
			lower = s.Bounds[i]
		}
	}
	return lower
}

// Counter is a monotonically increasing count. The zero value is ready to use.
type Counter struct{ v atomic.Int64 }

// Add adds n (n >= 0).
func (c *Counter) Add(n int64) { c.v.Add(n) }

// Load returns the count.
func (c *Counter) Load() int64 { return c.v.Load() }

// Gauge is a value that goes up and down. The zero value is ready to use.
type Gauge struct{ v atomic.Int64 }

// Add adds n, which may be negative.
func (g *Gauge) Add(n int64) { g.v.Add(n) }

// Set sets the value.
func (g *Gauge) Set(n int64) { g.v.Store(n) }

// Load returns the value.
func (g *Gauge) Load() int64 { return g.v.Load() }
