package hnsw

import "math"

// Search returns up to k nodes nearest to near, nearest first. The returned
// vectors are copies. It returns nil if k <= 0, the graph is empty, or near
// does not have Dims components or is not finite.
func (g *Graph[K]) Search(near Vector, k int) []Node[K] {
	g.mu.RLock()
	defer g.mu.RUnlock()
	sc := g.getScratch()
	defer g.pool.Put(sc)
	s := &g.st
	found := g.knnLocked(sc, near, k, nil)
	if len(found) == 0 {
		return nil
	}
	out := make([]Node[K], len(found))
	buf := make([]float32, len(found)*s.dims)
	for i, c := range found {
		v := buf[i*s.dims : (i+1)*s.dims : (i+1)*s.dims]
		s.met.restore(v, s.vec(c.id), s.norms[c.id])
		out[i] = Node[K]{Key: s.keys[c.id], Value: v}
	}
	return out
}

// SearchWithDistance is Search returning keys with their distances to near
// instead of nodes.
func (g *Graph[K]) SearchWithDistance(near Vector, k int) []SearchResult[K] {
	return g.SearchFunc(near, k, nil)
}

// SearchFunc returns up to k keys nearest to near for which filter returns
// true, with their distances, nearest first (ties broken by key). A nil
// filter accepts every key.
//
// The graph is traversed through rejected nodes as well, so a filtered
// search returns k results whenever k accepted keys exist. When the filter
// looks very selective (estimated from a sample of keys), or the traversal
// exceeds a work budget before finding k accepted keys, the search falls
// back to an exact scan over the accepted keys.
//
// filter is called with the graph's read lock held, possibly more than
// once per key: it must be a pure function of the key, must not call
// methods of the graph (a pending writer would deadlock it) and must be
// safe for concurrent use if searches run in parallel.
func (g *Graph[K]) SearchFunc(near Vector, k int, filter func(K) bool) []SearchResult[K] {
	g.mu.RLock()
	defer g.mu.RUnlock()
	sc := g.getScratch()
	defer g.pool.Put(sc)
	s := &g.st
	found := g.knnLocked(sc, near, k, filter)
	if len(found) == 0 {
		return nil
	}
	out := make([]SearchResult[K], len(found))
	for i, c := range found {
		out[i] = SearchResult[K]{Key: s.keys[c.id], Distance: s.met.external(c.d)}
	}
	return out
}

func (g *Graph[K]) getScratch() *scratch {
	if v := g.pool.Get(); v != nil {
		return v.(*scratch)
	}
	return new(scratch)
}

const (
	// filterSamples is the number of keys sampled to estimate how many keys a
	// filter accepts.
	filterSamples = 256
)

// preferScan reports whether an exact scan is expected to be cheaper than a
// filtered graph search that accepts about est of live keys. Costs are in
// units of one 128-d distance computation as done by the scan (~45 ns):
//   - an unfiltered layer-0 search computes about 3*ef distances, a filtered
//     one about 3*ef*live/est since rejected nodes do not fill the result
//     list, and a graph step costs about twice a scan step (visited checks,
//     heap operations, scattered memory);
//   - a scan calls the filter on every key (~1/8 of a distance) and
//     computes est distances.
func preferScan(live, est, ef int) bool {
	if est <= 0 {
		return true
	}
	graph := 6 * float64(ef) * float64(live) / float64(est)
	scan := float64(live)/8 + float64(est)
	return graph > scan
}

// knnLocked finds the k nearest accepted nodes, leaving them in sc.found
// (nearest first, ties broken by key) and returning that slice. g.mu is held
// (shared or exclusive).
func (g *Graph[K]) knnLocked(sc *scratch, near Vector, k int, filter func(K) bool) []cand {
	s := &g.st
	if k <= 0 || s.live == 0 || len(near) != s.dims || !finite(near) {
		return nil
	}
	if cap(sc.q) < s.dims {
		sc.q = make([]float32, s.dims)
	}
	q := sc.q[:s.dims]
	s.met.prepare(q, near)

	ef := g.EfSearch
	if ef <= 0 {
		ef = DefaultEfSearch
	}
	ef = max(ef, k)

	exact := s.live <= ef
	budget := math.MaxInt
	if filter != nil && !exact {
		exact = s.live <= 4*ef || preferScan(s.live, s.estimateMatches(filter), ef)
		budget = s.live / 4
	}
	if !exact {
		ep := cand{s.met.dist(q, s.vec(s.entry)), s.entry}
		for l := s.maxLvl; l > 0; l-- {
			ep = s.greedy(q, ep, l)
		}
		sc.eps = append(sc.eps[:0], ep)
		// Fall back to a scan if the budget ran out or the traversal found
		// fewer than k nodes (possible only if part of the graph is
		// unreachable, or fewer than k keys pass the filter).
		exact = !s.searchLayer(sc, q, sc.eps, ef, 0, filter, budget) || len(sc.found) < k
	}
	if exact {
		s.scan(sc, q, k, filter)
	}
	found := sc.found[:min(k, len(sc.found))]
	s.sortByDistanceKey(found)
	return found
}

// searchLayer is Algorithm 2 of the paper: a best-first search of layer l
// from eps keeping the ef nearest nodes found. Nodes rejected by filter are
// traversed but not kept. The kept nodes are left in sc.found, nearest
// first. It returns false, leaving sc.found unspecified, if more than budget
// distances were computed.
func (s *state[K]) searchLayer(sc *scratch, q []float32, eps []cand, ef, l int, filter func(K) bool, budget int) bool {
	sc.begin(len(s.levels))
	cands, res := &sc.cands, &sc.res
	*cands, *res = (*cands)[:0], (*res)[:0]
	for _, e := range eps {
		if !sc.visit(e.id) {
			continue
		}
		cands.push(e)
		if filter == nil || filter(s.keys[e.id]) {
			res.pushBounded(e, ef)
		}
	}
	work := 0
	for len(*cands) > 0 {
		c := cands.pop()
		if len(*res) >= ef && c.d > (*res)[0].d {
			break
		}
		for _, n := range s.links(c.id, l) {
			if !sc.visit(n) {
				continue
			}
			d := s.met.dist(q, s.vec(n))
			work++
			if len(*res) < ef || d < (*res)[0].d {
				cands.push(cand{d, n})
				if filter == nil || filter(s.keys[n]) {
					res.pushBounded(cand{d, n}, ef)
				}
			}
		}
		if work > budget {
			sc.work = work
			return false
		}
	}
	sc.work = work
	sc.found = res.drainSorted(sc.found)
	return true
}

// scan computes the k nearest accepted nodes exactly into sc.found.
func (s *state[K]) scan(sc *scratch, q []float32, k int, filter func(K) bool) {
	res := &sc.res
	*res = (*res)[:0]
	for i, lv := range s.levels {
		if lv < 0 || (filter != nil && !filter(s.keys[i])) {
			continue
		}
		res.pushBounded(cand{s.met.dist(q, s.vec(int32(i))), int32(i)}, k)
	}
	sc.found = res.drainSorted(sc.found)
}

// estimateMatches estimates how many live keys filter accepts from a
// sample of slots. The sample walks the slots with a stride coprime to
// their number, scattered by a multiplicative hash, so that filters on key
// ranges or residues are not aliased by a regular stride.
func (s *state[K]) estimateMatches(filter func(K) bool) int {
	n := uint64(len(s.levels))
	if n == 0 {
		return 0
	}
	tried, hits := 0, 0
	for i := uint64(0); i < filterSamples; i++ {
		id := (i*0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) % n
		if s.levels[id] < 0 {
			continue
		}
		tried++
		if filter(s.keys[id]) {
			hits++
		}
	}
	if tried == 0 {
		return 0
	}
	return int(int64(hits) * int64(s.live) / int64(tried))
}

// sortByDistanceKey orders a (already sorted by distance) by distance, then
// key, so that equal distances come back in a deterministic order.
func (s *state[K]) sortByDistanceKey(a []cand) {
	for i := 1; i < len(a); i++ {
		c := a[i]
		j := i
		for j > 0 && (a[j-1].d > c.d || (a[j-1].d == c.d && s.keys[a[j-1].id] > s.keys[c.id])) {
			a[j] = a[j-1]
			j--
		}
		a[j] = c
	}
}
