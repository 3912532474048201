package hnsw

// The search keeps two heaps of candidates, nearest-first and farthest-first. They are written out as two
// types rather than one heap with a comparison function because they run in the innermost loop of every
// search, where an indirect call per comparison costs more than the duplicated lines.

// cand is a node id with its internal distance to the current query.
type cand struct {
	d  float32
	id int32
}

// minHeap is a binary heap of candidates with the nearest at index 0.
// Invariant: h[i].d <= h[2i+1].d and h[i].d <= h[2i+2].d.
type minHeap []cand

func (h *minHeap) push(c cand) {
	a := append(*h, c)
	i := len(a) - 1
	for i > 0 {
		p := (i - 1) / 2
		if a[p].d <= c.d {
			break
		}
		a[i] = a[p]
		i = p
	}
	a[i] = c
	*h = a
}

// pop removes and returns the nearest candidate. The heap must not be empty.
func (h *minHeap) pop() cand {
	a := *h
	top := a[0]
	n := len(a) - 1
	last := a[n]
	a = a[:n]
	if n > 0 {
		i := 0
		for {
			l := 2*i + 1
			if l >= n {
				break
			}
			if r := l + 1; r < n && a[r].d < a[l].d {
				l = r
			}
			if last.d <= a[l].d {
				break
			}
			a[i] = a[l]
			i = l
		}
		a[i] = last
	}
	*h = a
	return top
}

// maxHeap is a binary heap of candidates with the farthest at index 0.
// Invariant: h[i].d >= h[2i+1].d and h[i].d >= h[2i+2].d.
type maxHeap []cand

func (h *maxHeap) push(c cand) {
	a := append(*h, c)
	i := len(a) - 1
	for i > 0 {
		p := (i - 1) / 2
		if a[p].d >= c.d {
			break
		}
		a[i] = a[p]
		i = p
	}
	a[i] = c
	*h = a
}

// pop removes and returns the farthest candidate. The heap must not be empty.
func (h *maxHeap) pop() cand {
	a := *h
	top := a[0]
	n := len(a) - 1
	last := a[n]
	a = a[:n]
	if n > 0 {
		i := 0
		for {
			l := 2*i + 1
			if l >= n {
				break
			}
			if r := l + 1; r < n && a[r].d > a[l].d {
				l = r
			}
			if last.d >= a[l].d {
				break
			}
			a[i] = a[l]
			i = l
		}
		a[i] = last
	}
	*h = a
	return top
}

// pushBounded adds c, keeping at most limit entries by dropping the farthest.
func (h *maxHeap) pushBounded(c cand, limit int) {
	if len(*h) < limit {
		h.push(c)
		return
	}
	if limit == 0 || c.d >= (*h)[0].d {
		return
	}
	// Replace the root and sift down.
	a := *h
	n := len(a)
	i := 0
	for {
		l := 2*i + 1
		if l >= n {
			break
		}
		if r := l + 1; r < n && a[r].d > a[l].d {
			l = r
		}
		if c.d >= a[l].d {
			break
		}
		a[i] = a[l]
		i = l
	}
	a[i] = c
}

// drainSorted empties h into dst (reused) nearest first.
func (h *maxHeap) drainSorted(dst []cand) []cand {
	n := len(*h)
	if cap(dst) < n {
		dst = make([]cand, n)
	}
	dst = dst[:n]
	for i := n - 1; i >= 0; i-- {
		dst[i] = h.pop()
	}
	return dst
}

// scratch holds per-operation buffers so that searches do not allocate per
// visited node. A scratch is owned by one goroutine at a time: searches take
// one from Graph.pool, the writer holding Graph.wmu uses state.w.
type scratch struct {
	// marks[id] == gen means id was visited in the current traversal.
	// Invariant: every entry is <= gen.
	marks []uint32
	gen   uint32

	cands  minHeap
	res    maxHeap
	found  []cand    // output of searchLayer, nearest first
	eps    []cand    // entry points for the next layer
	sel    []cand    // neighbour selection output
	pruned []cand    // candidates rejected by the heuristic
	cl     []cand    // candidate list for connect/repair
	sel2   []cand    // selection output for connect/repair
	q      []float32 // prepared query
	work   int       // distances computed by the last searchLayer (for tests)
}

// begin starts a new traversal over n slots.
func (s *scratch) begin(n int) {
	if len(s.marks) < n {
		s.marks = make([]uint32, n+n/4+64)
		s.gen = 0
	}
	s.gen++
	if s.gen == 0 {
		clear(s.marks)
		s.gen = 1
	}
}

// visit marks id visited and reports whether it was not visited before.
func (s *scratch) visit(id int32) bool {
	if s.marks[id] == s.gen {
		return false
	}
	s.marks[id] = s.gen
	return true
}
