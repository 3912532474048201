package hnsw

import (
	"cmp"
	"fmt"
	"sync"
)

// Exact is a brute-force index with the same Add/Delete/Lookup/Search API as
// Graph. Every search computes the distance to every stored vector, so
// results are exact. It serves as the reference in recall tests and suits
// small collections.
//
// The zero value is ready to use. Distance is read at the first Add. All
// methods are safe for concurrent use.
type Exact[K cmp.Ordered] struct {
	// Distance is the distance function. Zero means CosineDistance.
	Distance DistanceFunc

	// mu guards every field below: readers hold it shared, Add and Delete
	// exclusively.
	mu   sync.RWMutex
	init bool
	met  metric
	dims int
	// Invariant: keys, norms and the vectors in vecs (dims floats each) are
	// parallel and dense; ids[keys[i]] == i.
	keys  []K
	ids   map[K]int
	norms []float32
	vecs  []float32
}

// NewExact returns an empty exact index with default parameters.
func NewExact[K cmp.Ordered]() *Exact[K] {
	return &Exact[K]{}
}

// Len returns the number of stored vectors.
func (e *Exact[K]) Len() int {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return len(e.keys)
}

// Dims returns the vector dimension fixed by the first Add; 0 before that.
func (e *Exact[K]) Dims() int {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.dims
}

// Add inserts nodes, replacing the vectors of keys already present. It
// panics on empty, non-finite or wrongly sized vectors, like Graph.Add.
func (e *Exact[K]) Add(nodes ...Node[K]) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, n := range nodes {
		if len(n.Value) == 0 {
			panic("hnsw: Exact.Add: empty vector")
		}
		if !finite(n.Value) {
			panic("hnsw: Exact.Add: vector contains NaN or Inf")
		}
		if !e.init {
			e.init, e.met, e.dims, e.ids = true, resolveMetric(e.Distance), len(n.Value), make(map[K]int)
		}
		if len(n.Value) != e.dims {
			panic(fmt.Sprintf("hnsw: Exact.Add: vector has %d dimensions, index has %d", len(n.Value), e.dims))
		}
		i, ok := e.ids[n.Key]
		if !ok {
			i = len(e.keys)
			e.ids[n.Key] = i
			e.keys = append(e.keys, n.Key)
			e.norms = append(e.norms, 0)
			e.vecs = append(e.vecs, make([]float32, e.dims)...)
		}
		e.norms[i] = e.met.prepare(e.vec(i), n.Value)
	}
}

func (e *Exact[K]) vec(i int) []float32 {
	return e.vecs[i*e.dims : (i+1)*e.dims : (i+1)*e.dims]
}

// Delete removes key and reports whether it was present.
func (e *Exact[K]) Delete(key K) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	i, ok := e.ids[key]
	if !ok {
		return false
	}
	last := len(e.keys) - 1
	if i != last {
		e.keys[i] = e.keys[last]
		e.norms[i] = e.norms[last]
		copy(e.vec(i), e.vec(last))
		e.ids[e.keys[i]] = i
	}
	delete(e.ids, key)
	var zero K
	e.keys[last] = zero
	e.keys = e.keys[:last]
	e.norms = e.norms[:last]
	e.vecs = e.vecs[:last*e.dims]
	return true
}

// Lookup returns a copy of the vector stored for key.
func (e *Exact[K]) Lookup(key K) (Vector, bool) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	i, ok := e.ids[key]
	if !ok {
		return nil, false
	}
	v := make(Vector, e.dims)
	e.met.restore(v, e.vec(i), e.norms[i])
	return v, true
}

// Search returns the k nearest nodes, nearest first (ties broken by key),
// with copied vectors.
func (e *Exact[K]) Search(near Vector, k int) []Node[K] {
	e.mu.RLock()
	defer e.mu.RUnlock()
	top := e.topLocked(near, k, nil)
	if len(top) == 0 {
		return nil
	}
	out := make([]Node[K], len(top))
	buf := make([]float32, len(top)*e.dims)
	for j, c := range top {
		v := buf[j*e.dims : (j+1)*e.dims : (j+1)*e.dims]
		e.met.restore(v, e.vec(int(c.id)), e.norms[c.id])
		out[j] = Node[K]{Key: e.keys[c.id], Value: v}
	}
	return out
}

// SearchWithDistance is Search returning keys with distances.
func (e *Exact[K]) SearchWithDistance(near Vector, k int) []SearchResult[K] {
	return e.SearchFunc(near, k, nil)
}

// SearchFunc returns the k nearest keys accepted by filter (nil accepts
// all), with distances, nearest first (ties broken by key). filter must not
// call methods of e.
func (e *Exact[K]) SearchFunc(near Vector, k int, filter func(K) bool) []SearchResult[K] {
	e.mu.RLock()
	defer e.mu.RUnlock()
	top := e.topLocked(near, k, filter)
	if len(top) == 0 {
		return nil
	}
	out := make([]SearchResult[K], len(top))
	for j, c := range top {
		out[j] = SearchResult[K]{Key: e.keys[c.id], Distance: e.met.external(c.d)}
	}
	return out
}

// topLocked returns the k nearest accepted entries sorted by (distance,
// key). e.mu is held.
func (e *Exact[K]) topLocked(near Vector, k int, filter func(K) bool) []cand {
	if k <= 0 || len(e.keys) == 0 || len(near) != e.dims || !finite(near) {
		return nil
	}
	q := make([]float32, e.dims)
	e.met.prepare(q, near)
	var res maxHeap
	for i, key := range e.keys {
		if filter != nil && !filter(key) {
			continue
		}
		c := cand{e.met.dist(q, e.vec(i)), int32(i)}
		// Keep ties deterministic: on equal distance prefer the smaller key.
		if len(res) == k && c.d == res[0].d && key < e.keys[res[0].id] {
			res.pop()
		}
		res.pushBounded(c, k)
	}
	top := res.drainSorted(nil)
	for i := 1; i < len(top); i++ {
		c := top[i]
		j := i
		for j > 0 && (top[j-1].d > c.d || (top[j-1].d == c.d && e.keys[top[j-1].id] > e.keys[c.id])) {
			top[j] = top[j-1]
			j--
		}
		top[j] = c
	}
	return top
}
