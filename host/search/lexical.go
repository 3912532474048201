package search

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/blevesearch/bleve/v2"
	"github.com/blevesearch/bleve/v2/analysis"
	"github.com/blevesearch/bleve/v2/analysis/lang/en"
	"github.com/blevesearch/bleve/v2/document"
	"github.com/blevesearch/bleve/v2/mapping"
	index "github.com/blevesearch/bleve_index_api"
)

// The lexical index: one bleve index per vector store (scorch, on disk), with one bleve document per
// chunk (id "docID#index") and one field, "text", analysed with bleve's English analyzer (unicode
// tokenizer, possessive filter, lower case, English stop words, Porter stemmer) and indexed without term
// vectors or stored text: Pebble holds the text.
//
// Ranking is Okapi BM25 exactly as Lucene computes it (idf = ln(1 + (N − df + 0.5)/(df + 0.5)), term
// frequency saturation with k1 and length normalisation with b against the true average chunk length),
// computed here from bleve's postings, norms and document count. bleve's own BM25 scorer (ScoringModel
// "bm25", which the mapping still declares) departs from it in ways that cost ranking quality: it takes
// the square root of term frequencies, multiplies each term's score by its idf again through the query
// norm, multiplies by a coordination factor, and derives the "average document length" from the size of
// the field's term dictionary instead of token counts. docs/search.md has the measurements.

// BM25 parameters: Lucene's defaults, which were also the best of those tried on SciFact (docs/search.md).
const (
	bm25K1 = 1.2
	bm25B  = 0.75
)

const (
	textField = "text"
	// watermarkKey is the bleve internal key holding the applied sequence watermark (8 bytes BE), written
	// in the same bleve batch as the changes it covers, so a persisted snapshot's watermark always matches
	// its contents.
	watermarkKey = "plinth.applied"
)

// lexIndex is a vector store's bleve index.
type lexIndex struct {
	idx      bleve.Index
	adv      index.Index
	analyzer analysis.Analyzer
	// persisted is the highest watermark of a batch bleve has persisted to disk (see Batch's persisted
	// callback); log entries up to it may be trimmed as far as this index is concerned.
	persisted atomic.Uint64
}

func lexMapping() *mapping.IndexMappingImpl {
	im := bleve.NewIndexMapping()
	im.DefaultAnalyzer = en.AnalyzerName
	im.ScoringModel = index.BM25Scoring
	dm := bleve.NewDocumentStaticMapping()
	fm := bleve.NewTextFieldMapping()
	fm.Analyzer, fm.Store, fm.IncludeTermVectors, fm.IncludeInAll = en.AnalyzerName, false, false, false
	dm.AddFieldMappingsAt(textField, fm)
	im.DefaultMapping = dm
	return im
}

// openLexical opens (or creates) the index in dir. A corrupt index is moved aside and recreated empty (its
// watermark is then 0 and the store's documents are indexed again).
func openLexical(dir string) (*lexIndex, error) {
	idx, err := bleve.OpenUsing(dir, scorchConfig())
	if errors.Is(err, bleve.ErrorIndexPathDoesNotExist) || (err != nil && isMissingMeta(dir)) {
		os.RemoveAll(dir)
		idx, err = bleve.NewUsing(dir, lexMapping(), "scorch", "scorch", scorchConfig())
	} else if err != nil {
		aside := dir + ".corrupt-" + strconv.FormatInt(int64(os.Getpid()), 10)
		os.RemoveAll(aside)
		if rerr := os.Rename(dir, aside); rerr != nil {
			return nil, fmt.Errorf("lexical index %s: %v (and moving it aside: %v)", dir, err, rerr)
		}
		idx, err = bleve.NewUsing(dir, lexMapping(), "scorch", "scorch", scorchConfig())
	}
	if err != nil {
		return nil, fmt.Errorf("lexical index %s: %w", dir, err)
	}
	adv, err := idx.Advanced()
	if err != nil {
		idx.Close()
		return nil, err
	}
	an := idx.Mapping().AnalyzerNamed(en.AnalyzerName)
	if an == nil {
		idx.Close()
		return nil, errors.New("lexical index: the English analyzer is not registered")
	}
	l := &lexIndex{idx: idx, adv: adv, analyzer: an}
	w, err := l.watermark()
	if err != nil {
		idx.Close()
		return nil, err
	}
	l.persisted.Store(w)
	return l, nil
}

// scorchConfig makes batches return once they are searchable instead of once they are on disk
// ("unsafe_batch"): durability comes from Pebble and the watermark, and waiting for scorch's own fsync of
// every batch would cut ingest throughput several times over.
func scorchConfig() map[string]interface{} {
	return map[string]interface{}{"unsafe_batch": true}
}

func isMissingMeta(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "index_meta.json"))
	return errors.Is(err, os.ErrNotExist)
}

func (l *lexIndex) close() error { return l.idx.Close() }

// watermark returns the applied sequence watermark (0 for a new index).
func (l *lexIndex) watermark() (uint64, error) {
	v, err := l.idx.GetInternal([]byte(watermarkKey))
	if err != nil || len(v) != 8 {
		return 0, err
	}
	return binary.BigEndian.Uint64(v), nil
}

// analyzedField is a text field analysed before it reaches bleve (to learn its length when the document
// is written to the store), so bleve's own analysis pass does nothing.
type analyzedField struct{ *document.TextField }

func (analyzedField) Analyze() {}

// analyze prepares a chunk for the index and returns it with its number of indexed terms.
func (l *lexIndex) analyze(text string) (*document.TextField, int) {
	f := document.NewTextFieldCustom(textField, nil, []byte(text), index.IndexField, l.analyzer)
	f.Analyze()
	return f, f.AnalyzedLength()
}

// lexBatch collects changes to apply atomically with a new watermark.
type lexBatch struct {
	b *index.Batch
	n int
}

func newLexBatch() *lexBatch { return &lexBatch{b: index.NewBatch()} }

func (b *lexBatch) put(key string, f *document.TextField) {
	d := document.NewDocument(key)
	d.AddField(analyzedField{f})
	b.b.Update(d)
	b.n++
}

func (b *lexBatch) del(key string) { b.b.Delete(key); b.n++ }

// apply commits b with watermark w.
func (l *lexIndex) apply(b *lexBatch, w uint64) error {
	b.b.SetInternal([]byte(watermarkKey), binary.BigEndian.AppendUint64(nil, w))
	b.b.SetPersistedCallback(func(err error) {
		if err != nil {
			return
		}
		for {
			cur := l.persisted.Load()
			if w <= cur || l.persisted.CompareAndSwap(cur, w) {
				return
			}
		}
	})
	return l.adv.Batch(b.b)
}

// queryTerms analyses a query into its distinct terms with their counts (a repeated term weighs more, as
// in Lucene's BooleanQuery of term clauses).
func (l *lexIndex) queryTerms(q string) ([]string, []float64) {
	var terms []string
	var counts []float64
	for _, t := range l.analyzer.Analyze([]byte(q)) {
		s := string(t.Term)
		if i := slices.Index(terms, s); i >= 0 {
			counts[i]++
			continue
		}
		terms = append(terms, s)
		counts = append(counts, 1)
	}
	return terms, counts
}

// lexHit is a chunk with its BM25 score.
type lexHit struct {
	key   string
	score float64
}

// search returns the k best chunks for the query terms by BM25, among those accept admits (nil: all).
// avgLen is the average number of indexed terms per chunk.
func (l *lexIndex) search(ctx context.Context, terms []string, counts []float64, k int, avgLen float64, accept func(key string) bool) ([]lexHit, error) {
	if len(terms) == 0 || k <= 0 {
		return nil, nil
	}
	r, err := l.adv.Reader()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	n, err := r.DocCount()
	if err != nil || n == 0 {
		return nil, err
	}
	if avgLen <= 0 {
		avgLen = 1
	}
	// Term at a time into an accumulator indexed by bleve's internal document number (dense: numbers run
	// up to the documents of the index snapshot, deleted ones included).
	acc := accPool.Get().(*accumulator)
	defer accPool.Put(acc)
	acc.reset()
	var tfd index.TermFieldDoc
	for i, t := range terms {
		tr, err := r.TermFieldReader(ctx, []byte(t), textField, true, true, false)
		if err != nil {
			return nil, err
		}
		df := float64(tr.Count())
		if df == 0 {
			tr.Close()
			continue
		}
		idf := math.Log(1 + (float64(n)-df+0.5)/(df+0.5))
		w := idf * counts[i]
		for {
			d, err := tr.Next(&tfd)
			if err != nil {
				tr.Close()
				return nil, err
			}
			if d == nil {
				break
			}
			tf := float64(d.Freq)
			dl := 1.0
			if d.Norm > 0 {
				dl = 1 / (d.Norm * d.Norm)
			}
			acc.add(binary.BigEndian.Uint64(d.ID), w*tf/(tf+bm25K1*(1-bm25B+bm25B*dl/avgLen)))
		}
		tr.Close()
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
	// Select the k best, checking accept only for chunks that would enter the top k (so a filter costs a
	// few id lookups, not one per match). Ties are broken by bleve's internal number, which is stable
	// while the index does not change, so consecutive pages of a search agree.
	cands := acc.candidates()
	cands.init()
	out := make([]lexHit, 0, min(k, len(cands)))
	var iid [8]byte
	for len(cands) > 0 {
		c := cands.pop()
		binary.BigEndian.PutUint64(iid[:], c.id)
		key, err := r.ExternalID(iid[:])
		if err != nil {
			return nil, err
		}
		if accept != nil && !accept(key) {
			continue
		}
		out = append(out, lexHit{key: key, score: c.score})
		if len(out) == k {
			break
		}
	}
	return out, nil
}

// cand is a scored chunk by bleve's internal number.
type cand struct {
	id    uint64
	score float64
}

// candHeap is a binary max-heap of candidates (best first: higher score, then lower id). Heapifying is
// linear and each pop logarithmic, so taking the best k of n matches costs O(n + k log n), and a filter
// that rejects candidates only makes it pop more.
type candHeap []cand

func (h candHeap) better(i, j int) bool {
	if h[i].score != h[j].score {
		return h[i].score > h[j].score
	}
	return h[i].id < h[j].id
}

func (h candHeap) down(i int) {
	for {
		l := 2*i + 1
		if l >= len(h) {
			return
		}
		best := l
		if r := l + 1; r < len(h) && h.better(r, l) {
			best = r
		}
		if !h.better(best, i) {
			return
		}
		h[i], h[best] = h[best], h[i]
		i = best
	}
}

func (h candHeap) init() {
	for i := len(h)/2 - 1; i >= 0; i-- {
		h.down(i)
	}
}

func (h *candHeap) pop() cand {
	old := *h
	c := old[0]
	n := len(old) - 1
	old[0] = old[n]
	*h = old[:n]
	h.down(0)
	return c
}

// accumulator sums scores per internal document number.
type accumulator struct {
	dense   []float64 // by number, for numbers below maxDense
	touched []uint64  // numbers with a score, in first-touch order
	sparse  map[uint64]float64
	cands   candHeap
}

const maxDense = 1 << 23

var accPool = sync.Pool{New: func() any { return &accumulator{sparse: map[uint64]float64{}} }}

func (a *accumulator) reset() {
	for _, id := range a.touched {
		if id < maxDense {
			a.dense[id] = 0
		}
	}
	a.touched = a.touched[:0]
	clear(a.sparse)
	a.cands = a.cands[:0]
}

func (a *accumulator) add(id uint64, s float64) {
	if id >= maxDense {
		if _, ok := a.sparse[id]; !ok {
			a.touched = append(a.touched, id)
		}
		a.sparse[id] += s
		return
	}
	if id >= uint64(len(a.dense)) {
		a.dense = append(a.dense, make([]float64, int(id)+1-len(a.dense)+len(a.dense)/2)...)
	}
	if a.dense[id] == 0 {
		a.touched = append(a.touched, id)
	}
	a.dense[id] += s
}

// candidates returns the scored documents (valid until the next reset).
func (a *accumulator) candidates() candHeap {
	for _, id := range a.touched {
		var s float64
		if id < maxDense {
			s = a.dense[id]
		} else {
			s = a.sparse[id]
		}
		a.cands = append(a.cands, cand{id: id, score: s})
	}
	return a.cands
}
