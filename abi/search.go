package abi

import "fmt"

// SearchRequest is the request of the search host call: one hybrid search over vector stores of the
// plugin's tenant, with the semantics of POST /v1/vector_stores/{id}/search.
type SearchRequest struct {
	StoreIDs   []string // 1: vector stores to search (at least one)
	Query      string   // 2
	MaxResults uint32   // 3: 0 means 10; at most 50
	// Mode is "lexical", "vector" or "hybrid"; "" picks hybrid when the store has an embedder and
	// lexical otherwise.
	Mode string // 4
	// Fusion is "rrf" or "convex" (hybrid mode); "" means the server default.
	Fusion string // 5
	// RRFK is the k of reciprocal rank fusion; 0 means 60.
	RRFK uint32 // 6
	// Alpha weighs the vector side in convex fusion (0..1); negative means the server default.
	Alpha float64 // 7
	// ScoreThreshold drops results scoring below it (after fusion).
	ScoreThreshold float64 // 8
	// Filters is an attribute filter in the OpenAI vector-store JSON form, e.g.
	// {"type":"and","filters":[{"type":"eq","key":"lang","value":"en"},{"type":"gte","key":"year","value":2020}]}.
	Filters []byte // 9
}

// SearchHit is one result: a chunk of a document.
type SearchHit struct {
	StoreID    string  // 1
	DocumentID string  // 2
	Filename   string  // 3
	ChunkIndex uint32  // 4
	Score      float64 // 5
	Text       string  // 6
	Attributes []byte  // 7: the document's attributes as a JSON object
}

// SearchResult is the result of the search host call.
type SearchResult struct {
	Hits  []SearchHit // 1: best first
	Mode  string      // 2: the mode actually used
	Error string      // 15
}

// AppendTo appends the encoding of r to b.
func (r *SearchRequest) AppendTo(b []byte) []byte {
	e := Encoder{B: b}
	for _, id := range r.StoreIDs {
		e.String(1, id)
	}
	e.String(2, r.Query)
	e.Uint(3, uint64(r.MaxResults))
	e.String(4, r.Mode)
	e.String(5, r.Fusion)
	e.Uint(6, uint64(r.RRFK))
	e.Float(7, r.Alpha)
	e.Float(8, r.ScoreThreshold)
	e.Bytes(9, r.Filters)
	return e.B
}

// Decode replaces r with the decoding of b. Byte slices alias b.
func (r *SearchRequest) Decode(b []byte) error {
	*r = SearchRequest{}
	d := Decoder{B: b}
	for d.Next() {
		switch d.Field() {
		case 1:
			r.StoreIDs = append(r.StoreIDs, d.String())
		case 2:
			r.Query = d.String()
		case 3:
			v := d.Uint()
			if v > 1<<20 {
				return fmt.Errorf("%w: max_results %d", ErrMalformed, v)
			}
			r.MaxResults = uint32(v)
		case 4:
			r.Mode = d.String()
		case 5:
			r.Fusion = d.String()
		case 6:
			v := d.Uint()
			if v > 1<<20 {
				return fmt.Errorf("%w: rrf k %d", ErrMalformed, v)
			}
			r.RRFK = uint32(v)
		case 7:
			r.Alpha = d.Float()
		case 8:
			r.ScoreThreshold = d.Float()
		case 9:
			r.Filters = d.Bytes()
		}
	}
	return malformed("search request", &d)
}

func (h *SearchHit) appendTo(e *Encoder) {
	e.String(1, h.StoreID)
	e.String(2, h.DocumentID)
	e.String(3, h.Filename)
	e.Uint(4, uint64(h.ChunkIndex))
	e.Float(5, h.Score)
	e.String(6, h.Text)
	e.Bytes(7, h.Attributes)
}

func (h *SearchHit) decode(d *Decoder) {
	for d.Next() {
		switch d.Field() {
		case 1:
			h.StoreID = d.String()
		case 2:
			h.DocumentID = d.String()
		case 3:
			h.Filename = d.String()
		case 4:
			h.ChunkIndex = uint32(d.Uint())
		case 5:
			h.Score = d.Float()
		case 6:
			h.Text = d.String()
		case 7:
			h.Attributes = d.Bytes()
		}
	}
}

// AppendTo appends the encoding of r to b.
func (r *SearchResult) AppendTo(b []byte) []byte {
	e := Encoder{B: b}
	for i := range r.Hits {
		m := e.Begin(1)
		r.Hits[i].appendTo(&e)
		e.End(m)
	}
	e.String(2, r.Mode)
	e.String(15, r.Error)
	return e.B
}

// Decode replaces r with the decoding of b. Byte slices alias b.
func (r *SearchResult) Decode(b []byte) error {
	*r = SearchResult{}
	d := Decoder{B: b}
	for d.Next() {
		switch d.Field() {
		case 1:
			var h SearchHit
			s := d.Message()
			h.decode(&s)
			d.Merge(&s)
			r.Hits = append(r.Hits, h)
		case 2:
			r.Mode = d.String()
		case 15:
			r.Error = d.String()
		}
	}
	return malformed("search result", &d)
}
