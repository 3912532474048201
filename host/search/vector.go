package search

import (
	"io"

	"github.com/plinth-dev/plinth/host/search/hnsw"
)

// The vector index, behind a small interface so the implementation is a one-file choice. This file adapts
// the project's own HNSW (host/search/hnsw, whose API follows github.com/coder/hnsw v0.6): switching to a
// fixed coder/hnsw release means changing the import and newVectorIndex below (coder/hnsw's Graph has the
// same Add/Delete/Len/Search/Export/Import; it would need SearchFunc's filter emulated by over-fetching).
//
// docs/search.md records the choice and the recall measured by TestVectorRecall and BenchmarkVectorRecall.

// VectorIndex is an approximate nearest-neighbour index of chunk vectors by cosine similarity. It is safe
// for concurrent use: searches run in parallel with each other and with writes.
type VectorIndex interface {
	// Add inserts or replaces a vector (which must be finite and of the index's dimension).
	Add(key string, vec []float32)
	// Delete removes a key and reports whether it was present.
	Delete(key string) bool
	Len() int
	// Dims returns the vectors' dimension (0 while empty).
	Dims() int
	// Search returns up to k keys nearest to q whose accept returns true (nil accepts all), nearest first.
	Search(q []float32, k int, accept func(key string) bool) []VectorHit
	// Export writes the index; Import replaces it with what Export wrote.
	Export(w io.Writer) error
	Import(r io.Reader) error
}

// VectorHit is a key with its cosine similarity to the query.
type VectorHit struct {
	Key        string
	Similarity float32
}

// HNSW parameters: M 16 and efConstruction 200 (the library's defaults), efSearch 128. At 100k vectors
// these give recall@10 above 0.95 against exact search (docs/search.md has the measurement).
const (
	hnswM              = 16
	hnswEfConstruction = 200
	hnswEfSearch       = 128
)

// newVectorIndex returns an empty approximate index.
func newVectorIndex() VectorIndex {
	g := hnsw.NewGraph[string]()
	g.M, g.EfConstruction, g.EfSearch = hnswM, hnswEfConstruction, hnswEfSearch
	g.Distance = hnsw.CosineDistance
	return &hnswIndex{g: g}
}

// newExactIndex returns a brute-force index (the reference of the recall test).
func newExactIndex() VectorIndex {
	e := hnsw.NewExact[string]()
	e.Distance = hnsw.CosineDistance
	return &exactIndex{e: e}
}

type hnswIndex struct{ g *hnsw.Graph[string] }

func (h *hnswIndex) Add(key string, vec []float32) { h.g.Add(hnsw.MakeNode(key, vec)) }
func (h *hnswIndex) Delete(key string) bool        { return h.g.Delete(key) }
func (h *hnswIndex) Len() int                      { return h.g.Len() }
func (h *hnswIndex) Dims() int                     { return h.g.Dims() }
func (h *hnswIndex) Export(w io.Writer) error      { return h.g.Export(w) }
func (h *hnswIndex) Import(r io.Reader) error      { return h.g.Import(r) }

func (h *hnswIndex) Search(q []float32, k int, accept func(string) bool) []VectorHit {
	return toHits(h.g.SearchFunc(q, k, accept))
}

type exactIndex struct{ e *hnsw.Exact[string] }

func (x *exactIndex) Add(key string, vec []float32) { x.e.Add(hnsw.MakeNode(key, vec)) }
func (x *exactIndex) Delete(key string) bool        { return x.e.Delete(key) }
func (x *exactIndex) Len() int                      { return x.e.Len() }
func (x *exactIndex) Dims() int                     { return x.e.Dims() }
func (x *exactIndex) Export(io.Writer) error        { return errNoPersist }
func (x *exactIndex) Import(io.Reader) error        { return errNoPersist }

func (x *exactIndex) Search(q []float32, k int, accept func(string) bool) []VectorHit {
	return toHits(x.e.SearchFunc(q, k, accept))
}

func toHits(rs []hnsw.SearchResult[string]) []VectorHit {
	out := make([]VectorHit, len(rs))
	for i, r := range rs {
		out[i] = VectorHit{Key: r.Key, Similarity: 1 - r.Distance}
	}
	return out
}

var errNoPersist = errorString("search: the exact index is not persisted")

type errorString string

func (e errorString) Error() string { return string(e) }
