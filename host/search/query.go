package search

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"sync"

	"github.com/plinth-dev/plinth/abi"
	"github.com/plinth-dev/plinth/host/store"
)

// Search limits.
const (
	DefaultMaxResults = 10
	MaxResults        = 50   // per page (OpenAI's max_num_results)
	MaxDepth          = 1000 // offset + page size
	MaxQueryBytes     = 8 << 10
	MaxSearchStores   = 10
	// hybridDepth is how many candidates each side of a hybrid search contributes to the fusion at least.
	hybridDepth = 100
)

// Modes and fusions.
const (
	ModeLexical = "lexical"
	ModeVector  = "vector"
	ModeHybrid  = "hybrid"

	FusionRRF    = "rrf"
	FusionConvex = "convex"
)

// Search implements the server's Retriever: one search over vector stores of tenant. Errors the caller can
// fix are *InputError (or ErrNotFound for a store the tenant does not have).
func (s *Service) Search(ctx context.Context, tenant string, req *abi.SearchRequest) (*abi.SearchResult, error) {
	res, _, err := s.SearchPage(ctx, tenant, req, 0)
	return res, err
}

type searchParams struct {
	limit     int
	mode      string
	fusion    string
	rrfK      int
	alpha     float64
	threshold float64
	filter    *Filter
}

func parseSearch(req *abi.SearchRequest, offset int) (searchParams, error) {
	p := searchParams{limit: int(req.MaxResults), mode: req.Mode, fusion: req.Fusion, rrfK: int(req.RRFK),
		alpha: req.Alpha, threshold: req.ScoreThreshold}
	if len(req.StoreIDs) == 0 {
		return p, inputErr("missing_vector_store", "vector_store_ids", "name at least one vector store to search")
	}
	if len(req.StoreIDs) > MaxSearchStores {
		return p, inputErr("too_many_vector_stores", "vector_store_ids", "at most %d vector stores per search", MaxSearchStores)
	}
	if req.Query == "" {
		return p, inputErr("missing_query", "query", "query is empty")
	}
	if len(req.Query) > MaxQueryBytes {
		return p, inputErr("query_too_long", "query", "query is at most %d bytes", MaxQueryBytes)
	}
	if p.limit == 0 {
		p.limit = DefaultMaxResults
	}
	if p.limit < 1 || p.limit > MaxResults {
		return p, inputErr("invalid_max_num_results", "max_num_results", "max_num_results must be from 1 to %d", MaxResults)
	}
	if offset < 0 || offset+p.limit > MaxDepth {
		return p, inputErr("invalid_page", "page", "results are paged up to a depth of %d", MaxDepth)
	}
	switch p.mode {
	case "", ModeLexical, ModeVector, ModeHybrid:
	default:
		return p, inputErr("invalid_mode", "ranking_options.mode", "mode %q: want lexical, vector or hybrid", p.mode)
	}
	switch p.fusion {
	case "":
		p.fusion = FusionRRF
	case FusionRRF, FusionConvex:
	default:
		return p, inputErr("invalid_fusion", "ranking_options.fusion", "fusion %q: want rrf or convex", p.fusion)
	}
	if p.rrfK == 0 {
		p.rrfK = DefaultRRFK
	}
	if p.alpha < 0 {
		p.alpha = DefaultAlpha
	}
	if p.alpha > 1 {
		return p, inputErr("invalid_alpha", "ranking_options.alpha", "alpha must be from 0 to 1 (the weight of the vector side)")
	}
	f, err := ParseFilter(req.Filters)
	if err != nil {
		return p, inputErr("invalid_filters", "filters", "%v", err)
	}
	p.filter = f
	return p, nil
}

// SearchPage runs a search and returns the page of results starting at offset, and whether more follow.
func (s *Service) SearchPage(ctx context.Context, tenant string, req *abi.SearchRequest, offset int) (*abi.SearchResult, bool, error) {
	p, err := parseSearch(req, offset)
	if err != nil {
		return nil, false, err
	}
	var stores []*storeIndex
	seen := map[string]bool{}
	for _, id := range req.StoreIDs {
		if seen[id] {
			continue
		}
		seen[id] = true
		si, release, err := s.acquire(tenant, id)
		if errors.Is(err, store.ErrNotFound) {
			return nil, false, &InputError{Code: "vector_store_not_found", Param: "vector_store_id", Msg: "vector store " + id + " not found"}
		}
		if err != nil {
			return nil, false, err
		}
		defer release()
		stores = append(stores, si)
	}
	mode := p.mode
	allVec := true
	for _, si := range stores {
		if si.emb == nil {
			allVec = false
			if mode == ModeVector || mode == ModeHybrid {
				return nil, false, &InputError{Code: "embedder_required", Param: "ranking_options.mode",
					Msg: "mode " + mode + " needs an embedder, and vector store " + si.id + " has none: it was created without one " +
						"and the server has no default embedder. Use mode lexical, or create the store with an embedder."}
			}
		}
	}
	if mode == "" {
		mode = ModeLexical
		if allVec {
			mode = ModeHybrid
		}
	}
	// One more than the page needs tells whether more follow.
	depth := offset + p.limit + 1
	if mode == ModeHybrid {
		depth = max(depth, hybridDepth)
	}

	var lex, vec []ranked
	if mode == ModeLexical || mode == ModeHybrid {
		if lex, err = s.searchLexical(ctx, stores, req.Query, depth, p.filter); err != nil {
			return nil, false, err
		}
	}
	if mode == ModeVector || mode == ModeHybrid {
		if vec, err = s.searchVectors(ctx, stores, req.Query, depth, p.filter); err != nil {
			return nil, false, err
		}
	}
	var hits []ranked
	switch {
	case mode == ModeLexical:
		hits = lex
	case mode == ModeVector:
		hits = vec
	case p.fusion == FusionConvex:
		hits = fuseConvex(p.alpha, lex, vec)
	default:
		hits = fuseRRF(p.rrfK, lex, vec)
	}
	if p.threshold != 0 {
		hits = slices.DeleteFunc(hits, func(r ranked) bool { return r.score < p.threshold })
	}
	more := len(hits) > offset+p.limit
	if offset >= len(hits) {
		hits = nil
	} else {
		hits = hits[offset:min(len(hits), offset+p.limit)]
	}
	res := &abi.SearchResult{Mode: mode, Hits: make([]abi.SearchHit, 0, len(hits))}
	byID := map[string]*storeIndex{}
	for _, si := range stores {
		byID[si.id] = si
	}
	for _, h := range hits {
		si := byID[h.key.store]
		docID, idx, ok := splitChunkID(h.key.chunk)
		if !ok {
			continue
		}
		m := si.doc(docID)
		c, err := s.st.Chunk(tenant, si.id, docID, idx)
		if m == nil || errors.Is(err, store.ErrNotFound) {
			continue // deleted since it was found
		}
		if err != nil {
			return nil, false, err
		}
		attrs := []byte(m.attrsRaw)
		if len(attrs) == 0 {
			attrs = []byte("{}")
		}
		res.Hits = append(res.Hits, abi.SearchHit{StoreID: si.id, DocumentID: docID, Filename: m.filename,
			ChunkIndex: uint32(idx), Score: h.score, Text: c.Text, Attributes: attrs})
	}
	return res, more, nil
}

// acceptor returns the filter of a store's chunks (nil when there is no filter). It memoises per
// document, and only reads the document table (so it is safe inside the vector index's read lock).
func (si *storeIndex) acceptor(f *Filter) func(key string) bool {
	if f == nil {
		return func(key string) bool {
			id, _, _ := splitChunkID(key)
			return si.doc(id) != nil
		}
	}
	var mu sync.Mutex
	memo := map[string]bool{}
	return func(key string) bool {
		id, _, _ := splitChunkID(key)
		mu.Lock()
		ok, seen := memo[id]
		mu.Unlock()
		if seen {
			return ok
		}
		m := si.doc(id)
		ok = m != nil && f.Match(m.attrs)
		mu.Lock()
		memo[id] = ok
		mu.Unlock()
		return ok
	}
}

func (s *Service) searchLexical(ctx context.Context, stores []*storeIndex, query string, k int, f *Filter) ([]ranked, error) {
	terms, counts := stores[0].lex.queryTerms(query)
	lists := make([][]ranked, 0, len(stores))
	for _, si := range stores {
		hits, err := si.lex.search(ctx, terms, counts, k, si.avgLen(), si.acceptor(f))
		if err != nil {
			return nil, err
		}
		l := make([]ranked, len(hits))
		for i, h := range hits {
			l[i] = ranked{key: hitKey{store: si.id, chunk: h.key}, score: h.score}
		}
		lists = append(lists, l)
	}
	return mergeLists(lists...), nil
}

func (s *Service) searchVectors(ctx context.Context, stores []*storeIndex, query string, k int, f *Filter) ([]ranked, error) {
	// Stores with the same embedder share one query embedding.
	qv := map[string][]float32{}
	lists := make([][]ranked, 0, len(stores))
	for _, si := range stores {
		key, _ := json.Marshal(si.cfg.Embedder)
		v, ok := qv[string(key)]
		if !ok {
			vs, err := si.emb.Embed(ctx, []string{query})
			if err != nil {
				return nil, err
			}
			v = vs[0]
			qv[string(key)] = v
		}
		if d := si.vec.Dims(); d != 0 && d != len(v) {
			return nil, &EmbedderError{Msg: "the embedder returned a query vector of a different dimension than vector store " + si.id + "'s"}
		}
		hits := si.vec.Search(v, k, si.acceptor(f))
		l := make([]ranked, len(hits))
		for i, h := range hits {
			l[i] = ranked{key: hitKey{store: si.id, chunk: h.Key}, score: float64(h.Similarity)}
		}
		lists = append(lists, l)
	}
	return mergeLists(lists...), nil
}
