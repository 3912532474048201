package hnsw

import (
	"math"
	"reflect"
)

// DistanceFunc computes a distance between two vectors of equal length.
// Smaller means nearer. A custom DistanceFunc must be symmetric, must return
// a finite value for finite inputs and must be safe for concurrent use; the
// graph calls it while holding its lock, so it must not call back into the
// graph.
type DistanceFunc func(a, b []float32) float32

// CosineDistance returns 1 - cos(a, b), in [0, 2]. If either vector is the
// zero vector the cosine is taken to be 0, so the distance is 1. It panics if
// the vectors have different lengths.
//
// A Graph whose Distance is CosineDistance (or nil) does not call this
// function: it normalises every vector once at insert and computes 1 - a·b.
func CosineDistance(a, b []float32) float32 {
	mustSameLen(a, b)
	ab, aa, bb := dot(a, b), dot(a, a), dot(b, b)
	if aa == 0 || bb == 0 {
		return 1
	}
	return 1 - float32(float64(ab)/math.Sqrt(float64(aa)*float64(bb)))
}

// EuclideanDistance returns the L2 distance between a and b. It panics if the
// vectors have different lengths.
//
// A Graph whose Distance is EuclideanDistance ranks by the squared distance
// internally and takes the square root only for reported distances.
func EuclideanDistance(a, b []float32) float32 {
	mustSameLen(a, b)
	return float32(math.Sqrt(float64(sqL2(a, b))))
}

func mustSameLen(a, b []float32) {
	if len(a) != len(b) {
		panic("hnsw: vectors have different lengths")
	}
}

// dot returns a·b over len(a) elements; b must be at least as long as a.
// The loop is unrolled by eight with four independent accumulators so that
// the additions do not form one serial dependency chain.
func dot(a, b []float32) float32 {
	b = b[:len(a)]
	var s0, s1, s2, s3 float32
	for len(a) >= 8 {
		x := (*[8]float32)(a)
		y := (*[8]float32)(b)
		s0 += x[0]*y[0] + x[4]*y[4]
		s1 += x[1]*y[1] + x[5]*y[5]
		s2 += x[2]*y[2] + x[6]*y[6]
		s3 += x[3]*y[3] + x[7]*y[7]
		a, b = a[8:], b[8:]
	}
	for i := range a {
		s0 += a[i] * b[i]
	}
	return (s0 + s1) + (s2 + s3)
}

// sqL2 returns the squared Euclidean distance over len(a) elements; b must be
// at least as long as a. Unrolled like dot.
func sqL2(a, b []float32) float32 {
	b = b[:len(a)]
	var s0, s1, s2, s3 float32
	for len(a) >= 8 {
		x := (*[8]float32)(a)
		y := (*[8]float32)(b)
		d0, d1, d2, d3 := x[0]-y[0], x[1]-y[1], x[2]-y[2], x[3]-y[3]
		d4, d5, d6, d7 := x[4]-y[4], x[5]-y[5], x[6]-y[6], x[7]-y[7]
		s0 += d0*d0 + d4*d4
		s1 += d1*d1 + d5*d5
		s2 += d2*d2 + d6*d6
		s3 += d3*d3 + d7*d7
		a, b = a[8:], b[8:]
	}
	for i := range a {
		d := a[i] - b[i]
		s0 += d * d
	}
	return (s0 + s1) + (s2 + s3)
}

// metricKind selects how a graph stores vectors and computes distances.
type metricKind uint8

const (
	// metricCosine: vectors are stored unit-normalised (with their original
	// norm kept aside) and the internal distance is 1 - a·b.
	metricCosine metricKind = 1
	// metricL2: vectors are stored as given; the internal distance is the
	// squared L2 distance, which orders points exactly like the L2 distance.
	metricL2 metricKind = 2
	// metricCustom: vectors are stored as given; the internal distance is the
	// caller's DistanceFunc.
	metricCustom metricKind = 3
)

// metric is the resolved distance configuration of a graph or exact index.
type metric struct {
	kind metricKind
	user DistanceFunc // only for metricCustom
}

// resolveMetric maps a configured DistanceFunc to a metric. nil and
// CosineDistance select the normalised cosine path, EuclideanDistance the
// squared-L2 path; anything else is called as given.
func resolveMetric(f DistanceFunc) metric {
	if f == nil {
		return metric{kind: metricCosine}
	}
	p := reflect.ValueOf(f).Pointer()
	switch p {
	case reflect.ValueOf(CosineDistance).Pointer():
		return metric{kind: metricCosine}
	case reflect.ValueOf(EuclideanDistance).Pointer():
		return metric{kind: metricL2}
	}
	return metric{kind: metricCustom, user: f}
}

// dist is the internal distance between a stored (prepared) vector and a
// prepared query. Smaller is nearer; it is monotone in the external distance.
func (m *metric) dist(a, b []float32) float32 {
	switch m.kind {
	case metricCosine:
		return 1 - dot(a, b)
	case metricL2:
		return sqL2(a, b)
	}
	return m.user(a, b)
}

// external converts an internal distance to the value reported to callers.
func (m *metric) external(d float32) float32 {
	if m.kind == metricL2 {
		return float32(math.Sqrt(float64(d)))
	}
	return d
}

// prepare writes the stored form of v into dst (len(dst) == len(v)) and
// returns the norm to keep aside (1 for metrics that store vectors as given).
func (m *metric) prepare(dst, v []float32) float32 {
	if m.kind != metricCosine {
		copy(dst, v)
		return 1
	}
	var ss float64
	for _, x := range v {
		ss += float64(x) * float64(x)
	}
	n := math.Sqrt(ss)
	if n == 0 {
		clear(dst)
		return 0
	}
	inv := 1 / n
	for i, x := range v {
		dst[i] = float32(float64(x) * inv)
	}
	return float32(n)
}

// restore writes the caller-visible form of a stored vector into dst.
func (m *metric) restore(dst, stored []float32, norm float32) {
	if m.kind != metricCosine {
		copy(dst, stored)
		return
	}
	for i, x := range stored {
		dst[i] = x * norm
	}
}

// finite reports whether every component of v is a finite number.
func finite(v []float32) bool {
	for _, x := range v {
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			return false
		}
	}
	return true
}
