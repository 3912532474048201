// Package hnsw implements approximate nearest-neighbour search with
// Hierarchical Navigable Small World graphs, following Malkov & Yashunin,
// "Efficient and robust approximate nearest neighbor search using
// Hierarchical Navigable Small World graphs" (IEEE TPAMI, 2018).
//
// The API mirrors github.com/coder/hnsw v0.6 (Graph, Node, MakeNode, Add,
// Delete, Lookup, Search, Export, Import) so that callers can switch between
// the two with a one-file change. Unlike that release this implementation is
// safe for concurrent use, returns results sorted nearest first, supports
// filtered search, and repairs the graph on delete.
//
// Locking: readers (Search, SearchFunc, SearchWithDistance, Lookup, Len,
// Dims, Export) hold a sync.RWMutex shared, so any number of them run in
// parallel. Writers (Add, Delete, Import) are serialised by a separate
// mutex; a writer does the expensive part of its work (the neighbour
// searches and heuristic selections of an insert, the link repairs of a
// delete) while holding only that mutex, concurrently with readers, and
// takes the RWMutex exclusively just to apply the precomputed link changes.
package hnsw

import (
	"cmp"
	"fmt"
	"math"
	"math/rand"
	"sync"
)

// Vector is a point in the search space.
type Vector = []float32

// Node is a key and its vector.
type Node[K cmp.Ordered] struct {
	Key   K
	Value Vector
}

// MakeNode returns a Node with the given key and vector.
func MakeNode[K cmp.Ordered](key K, vec Vector) Node[K] {
	return Node[K]{Key: key, Value: vec}
}

// SearchResult is a key with its distance to the query.
type SearchResult[K cmp.Ordered] struct {
	Key      K
	Distance float32
}

// Defaults for the zero values of the Graph configuration fields.
const (
	DefaultM              = 16
	DefaultEfSearch       = 100
	DefaultEfConstruction = 200
)

const (
	// maxLevelCap bounds node levels; with M >= 2 a level above it has a
	// probability below 2^-40 per node.
	maxLevelCap = 40
	// maxM bounds M. Layer-0 link lists have a fixed stride of 2*M+1 ids per
	// node, so this also bounds the memory an imported stream can claim per
	// node.
	maxM = 256
	// maxSlots bounds the number of internal ids (they are int32).
	maxSlots = math.MaxInt32 - 1
	// keepPruned fills neighbour lists up to their limit with candidates the
	// heuristic rejected (the keepPrunedConnections option of Algorithm 4).
	keepPruned = true
	// defaultSeed seeds the level generator when Graph.Rng is nil, so builds
	// from the same input are reproducible.
	defaultSeed = 0x5eed_1e7e1
)

// Graph is a hierarchical navigable small world graph over keys of type K.
//
// The zero value is ready to use with default parameters; NewGraph returns
// the same. Set the configuration fields before the first Add: M, Ml,
// EfConstruction, Distance and Rng are read once, at the first Add (or
// Import), and ignored afterwards. EfSearch is read by every search; do not
// change it while searches run.
//
// All methods are safe for concurrent use.
type Graph[K cmp.Ordered] struct {
	// M is the maximum number of neighbours of a node on layers above 0;
	// layer 0 allows 2*M. New nodes are linked to M neighbours per layer.
	// Zero means 16 (DefaultM); values below 2 are raised to 2 and values
	// above 256 lowered to 256.
	M int
	// Ml is the level generation factor: a node's level is
	// floor(-ln(U) * Ml) for U uniform in (0, 1]. Zero means 1/ln(M).
	Ml float64
	// EfSearch is the size of the dynamic candidate list of a search.
	// Zero means 100 (DefaultEfSearch); a search always uses at least k.
	EfSearch int
	// EfConstruction is the size of the dynamic candidate list used while
	// inserting. Zero means 200 (DefaultEfConstruction); it is raised to M if
	// smaller.
	EfConstruction int
	// Distance is the distance function. Zero means CosineDistance.
	// CosineDistance and EuclideanDistance are recognised and computed on
	// prepared vectors (normalised, squared); other functions are called as
	// given.
	Distance DistanceFunc
	// Rng draws node levels. Zero means a source with a fixed seed, so that
	// identical insert sequences build identical graphs. Only writers use
	// it, one at a time; do not share it with other goroutines.
	Rng *rand.Rand

	// wmu serialises writers (Add, Delete, Import). A writer holding wmu
	// may read st without mu, since only wmu holders write st; it takes mu
	// exclusively for every write to st.
	wmu sync.Mutex
	// mu guards st against concurrent reads and writes: readers hold it
	// shared, a writer (already holding wmu) exclusively while it mutates
	// st.
	mu sync.RWMutex
	st state[K]

	// pool holds *scratch values for searches. sync.Pool is itself safe for
	// concurrent use and needs no lock.
	pool sync.Pool
}

// state is the mutable content of a Graph. Every field except w is read
// under Graph.mu (shared) or by the writer holding Graph.wmu, and written
// only by that writer while it also holds Graph.mu exclusively. w belongs to
// the wmu holder alone.
//
// Nodes have dense internal ids (slots) 0..len(levels)-1. A slot is live
// when levels[id] >= 0 and free otherwise; free slots are listed in free
// and reused by later inserts.
//
// Invariants, holding whenever Graph.mu is not held exclusively:
//   - ids[keys[id]] == id for every live id, and ids has exactly live entries.
//   - A live node of level L has link lists on layers 0..L; every link points
//     to a live node, other than itself, whose level is >= the layer; there
//     are no duplicate links in a list; a list on layer 0 holds at most m0
//     links and a list on a higher layer at most m.
//   - rev[b][l] lists exactly the nodes a with b in links(a, l) (once each).
//   - entry is -1 iff live == 0; otherwise entry is a live node whose level
//     is maxLvl, the highest level of any live node.
type state[K cmp.Ordered] struct {
	init bool
	// Resolved configuration, fixed at init.
	m, m0 int
	ml    float64
	efc   int
	met   metric
	rng   *rand.Rand // used by the wmu holder only
	dims  int

	keys   []K         // keys[id]; zero value for free slots
	ids    map[K]int32 // key -> id of live nodes
	levels []int8      // levels[id]: node level, -1 for a free slot
	norms  []float32   // norms[id]: original norm (cosine), else 1
	vecs   []float32   // vecs[id*dims:(id+1)*dims]: prepared vector
	l0     []int32     // layer-0 links: l0[id*(m0+1)] = count, then links
	up     [][][]int32 // up[id][l-1]: links on layer l >= 1
	rev    [][][]int32 // rev[id][l]: nodes that link to id on layer l
	free   []int32     // free slots
	live   int         // number of live nodes
	entry  int32       // entry point, -1 when empty
	maxLvl int         // level of entry; -1 when empty

	w writer // plan buffers of the wmu holder
}

// writer holds the buffers of the writer that holds Graph.wmu. A write is
// planned into it without Graph.mu, then applied under Graph.mu.
type writer struct {
	scratch
	// pendID is the slot an insert being planned will occupy and pendVec its
	// prepared vector; pendID is -1 outside insert planning.
	pendID  int32
	pendVec []float32
	// updates are planned link-list replacements; the new list of update u
	// is lists[u.off : u.off+u.n].
	updates []linkUpdate
	lists   []int32
}

// linkUpdate replaces the links of node id on layer l.
type linkUpdate struct {
	id     int32
	l      int
	off, n int
}

// NewGraph returns an empty graph with default parameters.
func NewGraph[K cmp.Ordered]() *Graph[K] {
	return &Graph[K]{}
}

// Len returns the number of nodes in the graph.
func (g *Graph[K]) Len() int {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return g.st.live
}

// Dims returns the vector dimension, fixed by the first Add (or Import);
// 0 before that.
func (g *Graph[K]) Dims() int {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return g.st.dims
}

// Lookup returns a copy of the vector stored for key. For cosine distance
// the vector is kept normalised with its norm aside, so the returned vector
// may differ from the inserted one in the last bits.
func (g *Graph[K]) Lookup(key K) (Vector, bool) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	s := &g.st
	id, ok := s.ids[key]
	if !ok {
		return nil, false
	}
	v := make(Vector, s.dims)
	s.met.restore(v, s.vec(id), s.norms[id])
	return v, true
}

// Add inserts nodes. A node whose key is already present replaces it (its
// vector is updated, as a delete followed by an insert). Nodes are inserted
// one at a time and each becomes visible to searches as a whole; a batch is
// not atomic, and during an update a concurrent search may briefly miss the
// key.
//
// Add panics if a vector is empty, contains NaN or ±Inf, or has a length
// different from Dims (the first Add fixes Dims).
func (g *Graph[K]) Add(nodes ...Node[K]) {
	for _, n := range nodes {
		if len(n.Value) == 0 {
			panic("hnsw: Add: empty vector")
		}
		if !finite(n.Value) {
			panic("hnsw: Add: vector contains NaN or Inf")
		}
		g.add(n.Key, n.Value)
	}
}

func (g *Graph[K]) add(key K, vec []float32) {
	g.wmu.Lock()
	defer g.wmu.Unlock()
	if !g.st.init {
		g.mu.Lock()
		g.initLocked(len(vec))
		g.mu.Unlock()
	}
	if len(vec) != g.st.dims {
		panic(fmt.Sprintf("hnsw: Add: vector has %d dimensions, graph has %d", len(vec), g.st.dims))
	}
	g.insert(key, vec)
}

// Delete removes key and reports whether it was present. The nodes that
// linked to the deleted node are reconnected, so the graph stays navigable.
func (g *Graph[K]) Delete(key K) bool {
	g.wmu.Lock()
	defer g.wmu.Unlock()
	id, ok := g.st.ids[key]
	if !ok {
		return false
	}
	g.remove(id)
	return true
}

// resolvedConfig is the configuration derived from the exported fields.
type resolvedConfig struct {
	m   int
	ml  float64
	efc int
	met metric
	rng *rand.Rand
}

// resolveConfig applies the documented defaults to the exported fields.
// It reads only the exported fields.
func (g *Graph[K]) resolveConfig() resolvedConfig {
	m := g.M
	switch {
	case m == 0:
		m = DefaultM
	case m < 2:
		m = 2
	case m > maxM:
		m = maxM
	}
	ml := g.Ml
	if ml <= 0 || math.IsNaN(ml) || math.IsInf(ml, 0) {
		ml = 1 / math.Log(float64(m))
	}
	efc := g.EfConstruction
	if efc <= 0 {
		efc = DefaultEfConstruction
	}
	efc = max(efc, m)
	rng := g.Rng
	if rng == nil {
		rng = rand.New(rand.NewSource(defaultSeed))
	}
	return resolvedConfig{m: m, ml: ml, efc: efc, met: resolveMetric(g.Distance), rng: rng}
}

// initLocked fixes the configuration and dimension. g.mu is held exclusively.
func (g *Graph[K]) initLocked(dims int) {
	c := g.resolveConfig()
	g.st.setup(c, dims)
}

func (s *state[K]) setup(c resolvedConfig, dims int) {
	*s = state[K]{
		init:   true,
		m:      c.m,
		m0:     2 * c.m,
		ml:     c.ml,
		efc:    c.efc,
		met:    c.met,
		rng:    c.rng,
		dims:   dims,
		ids:    make(map[K]int32),
		entry:  -1,
		maxLvl: -1,
		w:      writer{pendID: -1},
	}
}

// vec returns the prepared vector of slot id (a view into vecs).
func (s *state[K]) vec(id int32) []float32 {
	b := int(id) * s.dims
	return s.vecs[b : b+s.dims : b+s.dims]
}

// mmax returns the link limit on layer l.
func (s *state[K]) mmax(l int) int {
	if l == 0 {
		return s.m0
	}
	return s.m
}

// links returns the links of id on layer l (a view; do not retain across
// writes).
func (s *state[K]) links(id int32, l int) []int32 {
	if l == 0 {
		b := int(id) * (s.m0 + 1)
		return s.l0[b+1 : b+1+int(s.l0[b])]
	}
	return s.up[id][l-1]
}

// setLinks replaces the links of id on layer l with ids (len(ids) <=
// mmax(l)). It does not touch rev.
func (s *state[K]) setLinks(id int32, l int, ids []int32) {
	if l == 0 {
		b := int(id) * (s.m0 + 1)
		s.l0[b] = int32(copy(s.l0[b+1:b+1+s.m0], ids))
		return
	}
	dst := s.up[id][l-1]
	if cap(dst) < len(ids) {
		dst = make([]int32, 0, s.m)
	}
	s.up[id][l-1] = append(dst[:0], ids...)
}

// dropRev removes from from rev[id][l].
func (s *state[K]) dropRev(id int32, l int, from int32) {
	r := s.rev[id][l]
	for i, x := range r {
		if x == from {
			last := len(r) - 1
			r[i] = r[last]
			s.rev[id][l] = r[:last]
			return
		}
	}
}

// replaceLinks sets the links of id on layer l to list, updating rev for
// the links removed and added. list must not contain duplicates or id.
func (s *state[K]) replaceLinks(id int32, l int, list []int32) {
	old := s.links(id, l)
	for _, o := range old {
		if !containsID(list, o) {
			s.dropRev(o, l, id)
		}
	}
	for _, n := range list {
		if !containsID(old, n) {
			s.rev[n][l] = append(s.rev[n][l], id)
		}
	}
	s.setLinks(id, l, list)
}

// randomLevel draws a node level: floor(-ln(U) * ml), U uniform in (0, 1].
func (s *state[K]) randomLevel() int {
	u := 1 - s.rng.Float64()
	l := int(-math.Log(u) * s.ml)
	return min(l, maxLevelCap)
}

// nextSlot returns the slot the next alloc will return.
func (s *state[K]) nextSlot() int32 {
	if n := len(s.free); n > 0 {
		return s.free[n-1]
	}
	if len(s.levels) >= maxSlots {
		panic("hnsw: too many nodes")
	}
	return int32(len(s.levels))
}

// alloc returns a free slot set up for a node of the given level, with no
// links. Caller holds Graph.mu exclusively.
func (s *state[K]) alloc(level int) int32 {
	id := s.nextSlot()
	if int(id) == len(s.levels) {
		var zero K
		s.keys = append(s.keys, zero)
		s.levels = append(s.levels, -1)
		s.norms = append(s.norms, 0)
		s.vecs = append(s.vecs, make([]float32, s.dims)...)
		s.l0 = append(s.l0, make([]int32, s.m0+1)...)
		s.up = append(s.up, nil)
		s.rev = append(s.rev, nil)
	} else {
		s.free = s.free[:len(s.free)-1]
	}
	s.levels[id] = int8(level)
	s.l0[int(id)*(s.m0+1)] = 0
	// Reuse the inner slices of a previous occupant of the slot.
	up := s.up[id]
	if cap(up) >= level {
		up = up[:level]
	} else {
		up = append(up[:cap(up)], make([][]int32, level-cap(up))...)
	}
	for i := range up {
		up[i] = up[i][:0] // allocated by setLinks on first use
	}
	s.up[id] = up
	rev := s.rev[id]
	if cap(rev) >= level+1 {
		rev = rev[:level+1]
	} else {
		rev = append(rev[:cap(rev)], make([][]int32, level+1-cap(rev))...)
	}
	for i := range rev {
		rev[i] = rev[i][:0]
	}
	s.rev[id] = rev
	return id
}

// wvec returns the prepared vector of id for the writer: the pending
// vector of the node being inserted, or the stored one.
func (s *state[K]) wvec(id int32) []float32 {
	if id == s.w.pendID {
		return s.w.pendVec
	}
	return s.vec(id)
}

// plan records that the links of id on layer l become list.
func (w *writer) plan(id int32, l int, list []int32) {
	w.updates = append(w.updates, linkUpdate{id: id, l: l, off: len(w.lists), n: len(list)})
	w.lists = append(w.lists, list...)
}

// planCands is plan for a candidate list.
func (w *writer) planCands(id int32, l int, cs []cand) {
	w.updates = append(w.updates, linkUpdate{id: id, l: l, off: len(w.lists), n: len(cs)})
	for _, c := range cs {
		w.lists = append(w.lists, c.id)
	}
}

// applyPlan performs the planned link replacements. Caller holds Graph.mu
// exclusively.
func (s *state[K]) applyPlan() {
	w := &s.w
	for _, u := range w.updates {
		s.replaceLinks(u.id, u.l, w.lists[u.off:u.off+u.n])
	}
	w.updates, w.lists = w.updates[:0], w.lists[:0]
}

// insert adds or replaces key (Algorithm 1 of the paper). Caller holds
// g.wmu; vec has st.dims finite components.
//
// Everything that reads the graph — the descent, the layer searches, the
// heuristic selection of the new node's neighbours and the re-selection of
// each neighbour's list that overflows — is planned without g.mu, since no
// other writer can run; only the resulting link changes are applied under
// g.mu. The plan equals the serial algorithm's result: the searches on
// layer l-1 do not read the links changed on layer l, and the neighbours'
// lists are independent of each other.
func (g *Graph[K]) insert(key K, vec []float32) {
	s := &g.st
	if old, ok := s.ids[key]; ok {
		if s.sameVector(old, vec) {
			return
		}
		g.remove(old)
	}
	w := &s.w
	// A panic in a custom distance may have left a partial plan behind.
	w.updates, w.lists = w.updates[:0], w.lists[:0]
	level := s.randomLevel()
	id := s.nextSlot()
	if cap(w.pendVec) < s.dims {
		w.pendVec = make([]float32, s.dims)
	}
	q := w.pendVec[:s.dims]
	norm := s.met.prepare(q, vec)
	w.pendID, w.pendVec = id, q
	defer func() { w.pendID = -1 }()

	if s.entry >= 0 {
		ep := cand{s.met.dist(q, s.vec(s.entry)), s.entry}
		for l := s.maxLvl; l > level; l-- {
			ep = s.greedy(q, ep, l)
		}
		w.eps = append(w.eps[:0], ep)
		for l := min(level, s.maxLvl); l >= 0; l-- {
			s.searchLayer(&w.scratch, q, w.eps, s.efc, l, nil, math.MaxInt)
			// The new node is not linked from anywhere, so it is not among
			// the results.
			w.sel, w.pruned = s.selectNeighbours(w.found, s.m, w.sel, w.pruned)
			w.planCands(id, l, w.sel)
			for _, c := range w.sel {
				s.planConnect(c.id, id, c.d, l)
			}
			w.eps = append(w.eps[:0], w.found...)
		}
	}

	g.mu.Lock()
	defer g.mu.Unlock()
	if got := s.alloc(level); got != id {
		panic("hnsw: internal error: slot prediction")
	}
	copy(s.vec(id), q)
	s.norms[id] = norm
	s.keys[id] = key
	s.ids[key] = id
	s.live++
	s.applyPlan()
	if level > s.maxLvl {
		s.entry, s.maxLvl = id, level
	}
}

// sameVector reports whether vec prepares to exactly the stored vector of id.
func (s *state[K]) sameVector(id int32, vec []float32) bool {
	w := &s.w
	if cap(w.q) < s.dims {
		w.q = make([]float32, s.dims)
	}
	q := w.q[:s.dims]
	norm := s.met.prepare(q, vec)
	if norm != s.norms[id] {
		return false
	}
	for i, x := range s.vec(id) {
		if q[i] != x {
			return false
		}
	}
	return true
}

// planConnect plans the link from -> to on layer l (d is their distance).
// If the list of from would overflow, the planned list is the heuristic
// selection among its links and to.
func (s *state[K]) planConnect(from, to int32, d float32, l int) {
	w := &s.w
	cur := s.links(from, l)
	mm := s.mmax(l)
	if len(cur) < mm {
		w.updates = append(w.updates, linkUpdate{id: from, l: l, off: len(w.lists), n: len(cur) + 1})
		w.lists = append(w.lists, cur...)
		w.lists = append(w.lists, to)
		return
	}
	fv := s.vec(from)
	w.cl = w.cl[:0]
	for _, n := range cur {
		w.cl = append(w.cl, cand{s.met.dist(fv, s.vec(n)), n})
	}
	w.cl = append(w.cl, cand{d, to})
	sortCands(w.cl)
	w.sel2, w.pruned = s.selectNeighbours(w.cl, mm, w.sel2, w.pruned)
	w.planCands(from, l, w.sel2)
}

// selectNeighbours implements the neighbour selection heuristic (Algorithm
// 4 without extending candidates): walking cands nearest first, a candidate
// is kept if it is nearer to the base point than to every node kept so far.
// With keepPruned, rejected candidates then fill the remaining room, nearest
// first. cands must be sorted nearest first; out and pruned are reused.
// Writer only (it may read the pending vector).
func (s *state[K]) selectNeighbours(cands []cand, m int, out, pruned []cand) ([]cand, []cand) {
	out, pruned = out[:0], pruned[:0]
	for _, c := range cands {
		if len(out) >= m {
			break
		}
		cv := s.wvec(c.id)
		good := true
		for _, r := range out {
			if s.met.dist(cv, s.wvec(r.id)) < c.d {
				good = false
				break
			}
		}
		if good {
			out = append(out, c)
		} else {
			pruned = append(pruned, c)
		}
	}
	if keepPruned {
		for _, c := range pruned {
			if len(out) >= m {
				break
			}
			out = append(out, c)
		}
	}
	return out, pruned
}

// remove deletes live slot id. Caller holds g.wmu.
//
// Every node x that links to the deleted node d on layer l re-selects its
// neighbours with the heuristic among its other links and d's links (the
// repairs are planned without g.mu; each depends only on the current graph).
// If d was the entry point, the live node of highest level replaces it.
func (g *Graph[K]) remove(id int32) {
	s := &g.st
	s.w.updates, s.w.lists = s.w.updates[:0], s.w.lists[:0]
	level := int(s.levels[id])
	for l := level; l >= 0; l-- {
		dOut := s.links(id, l)
		for _, x := range s.rev[id][l] {
			s.planRepair(x, l, id, dOut)
		}
	}

	g.mu.Lock()
	defer g.mu.Unlock()
	s.applyPlan()
	for l := level; l >= 0; l-- {
		for _, y := range s.links(id, l) {
			s.dropRev(y, l, id)
		}
		s.setLinks(id, l, nil)
		s.rev[id][l] = s.rev[id][l][:0]
	}
	var zero K
	delete(s.ids, s.keys[id])
	s.keys[id] = zero
	s.levels[id] = -1
	s.free = append(s.free, id)
	s.live--
	if s.entry == id {
		s.entry, s.maxLvl = -1, -1
		for i, lv := range s.levels {
			if int(lv) > s.maxLvl {
				s.entry, s.maxLvl = int32(i), int(lv)
			}
		}
	}
}

// planRepair plans x's links on layer l without d: the heuristic selection
// among x's other links and dOut, the links of d.
func (s *state[K]) planRepair(x int32, l int, d int32, dOut []int32) {
	w := &s.w
	xv := s.vec(x)
	cur := s.links(x, l)
	w.cl = w.cl[:0]
	for _, n := range cur {
		if n != d {
			w.cl = append(w.cl, cand{s.met.dist(xv, s.vec(n)), n})
		}
	}
	for _, n := range dOut {
		if n != x && !containsID(cur, n) {
			w.cl = append(w.cl, cand{s.met.dist(xv, s.vec(n)), n})
		}
	}
	sortCands(w.cl)
	w.sel2, w.pruned = s.selectNeighbours(w.cl, s.mmax(l), w.sel2, w.pruned)
	w.planCands(x, l, w.sel2)
}

// greedy walks layer l from ep towards q, moving to the nearest neighbour
// while that improves the distance (search with ef = 1).
func (s *state[K]) greedy(q []float32, ep cand, l int) cand {
	for changed := true; changed; {
		changed = false
		for _, n := range s.links(ep.id, l) {
			if d := s.met.dist(q, s.vec(n)); d < ep.d {
				ep = cand{d, n}
				changed = true
			}
		}
	}
	return ep
}

func containsID(a []int32, x int32) bool {
	for _, y := range a {
		if y == x {
			return true
		}
	}
	return false
}

// sortCands sorts by distance, nearest first (insertion sort: the lists are
// short, at most 2*M+1 or ef entries, and often nearly sorted).
func sortCands(a []cand) {
	for i := 1; i < len(a); i++ {
		c := a[i]
		j := i
		for j > 0 && a[j-1].d > c.d {
			a[j] = a[j-1]
			j--
		}
		a[j] = c
	}
}
