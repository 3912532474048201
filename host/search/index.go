package search

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/blevesearch/bleve/v2/document"

	"github.com/plinth-dev/plinth/host/store"
)

// storeIndex is the open derived state of one vector store: its lexical (bleve) and vector (HNSW)
// indexes, the in-memory table of its documents (attributes for filters, lengths for BM25), and the
// sequence tracker that makes the indexes' watermarks safe.
//
// Watermarks. Every write of a document carries a sequence number, allocated here and written to the
// store's change log in the same Pebble batch as the document. Each index records a watermark W meaning
// "every change with a sequence number ≤ W is applied": bleve stores it in the same batch as the changes
// (so a snapshot bleve persisted always carries the watermark of its contents), and the vector index
// writes it at the head of its snapshot file. On open, each index re-applies the log entries above its
// watermark; applying an entry reads the document's current state from Pebble, so re-applying one that
// was already applied is harmless. Writers run concurrently and finish out of order, so the watermark
// written is the sequence just below the oldest write still in flight (seqTracker.safe).
type storeIndex struct {
	svc    *Service
	tenant string
	id     string
	dir    string
	cfg    storeConfig
	emb    Embedder // nil: lexical only

	lex  *lexIndex
	vec  VectorIndex // nil without an embedder
	dims atomic.Int64

	seq seqTracker
	// locks serialise the writes of one document from the Pebble commit to the end of the index update,
	// so the indexes see a document's writes in commit order.
	locks [64]sync.Mutex
	seed  maphash.Seed

	mu     sync.RWMutex // guards docs, chunks and tokens
	docs   map[string]*docMeta
	chunks int64
	tokens int64

	// life is held shared by every operation on the index and exclusively by close, which sets dead.
	life sync.RWMutex
	dead bool

	vecChanges atomic.Int64 // vector changes since the last snapshot
	snapMu     sync.Mutex   // one snapshot at a time
	lastSnap   atomic.Int64 // Unix ms of the last snapshot
	snapping   atomic.Bool
	broken     atomic.Bool // an index update failed after its commit: replayed at the next open
	writes     atomic.Int64
}

// docMeta is what searches need of a document without reading the store.
type docMeta struct {
	filename string
	attrsRaw json.RawMessage
	attrs    Attributes
	chunks   int
	tokens   int64
}

// storeConfig is the search part of a vector store's record (store.VectorStore.Config).
type storeConfig struct {
	Chunking Chunking        `json:"chunking"`
	Embedder *EmbedderConfig `json:"embedder,omitempty"`
}

func chunkID(docID string, i int) string { return docID + "#" + strconv.Itoa(i) }

// splitChunkID splits "docID#index".
func splitChunkID(key string) (string, int, bool) {
	j := strings.LastIndexByte(key, '#')
	if j < 0 {
		return "", 0, false
	}
	i, err := strconv.Atoi(key[j+1:])
	return key[:j], i, err == nil
}

// seqTracker allocates sequence numbers and knows which are still in flight.
type seqTracker struct {
	mu       sync.Mutex
	next     uint64            // next number to allocate
	inflight map[uint64]uint64 // first → count of the ranges not finished
}

func (t *seqTracker) init(next uint64) {
	t.next, t.inflight = next, map[uint64]uint64{}
}

// begin allocates n consecutive numbers and returns the first.
func (t *seqTracker) begin(n int) uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	first := t.next
	t.next += uint64(n)
	t.inflight[first] = uint64(n)
	return first
}

// end marks a range finished: applied to every index, or abandoned because its commit failed.
func (t *seqTracker) end(first uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.inflight, first)
}

// safe returns the highest W such that every number ≤ W is finished.
func (t *seqTracker) safe() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	w := t.next - 1
	for first := range t.inflight {
		w = min(w, first-1)
	}
	return w
}

// --- Opening and replay ---------------------------------------------------------------------------------

// vecSnapMagic heads a vector snapshot file: magic, watermark (8 bytes BE), then the graph's Export.
const (
	vecSnapMagic = "plnVEC01"
	vecSnapFile  = "vectors.snap"
)

// openStoreIndex opens the indexes of a vector store and brings them up to date with the store.
func (s *Service) openStoreIndex(rec *store.VectorStore, tenant string) (*storeIndex, error) {
	var cfg storeConfig
	if len(rec.Config) > 0 {
		if err := json.Unmarshal(rec.Config, &cfg); err != nil {
			return nil, fmt.Errorf("vector store %s: corrupt config: %w", rec.ID, err)
		}
	}
	cfg.Chunking = cfg.Chunking.WithDefaults()
	si := &storeIndex{svc: s, tenant: tenant, id: rec.ID, dir: s.storeDir(tenant, rec.ID), cfg: cfg,
		seed: maphash.MakeSeed(), docs: map[string]*docMeta{}}
	if cfg.Embedder != nil {
		e, err := s.newEmbedder(*cfg.Embedder)
		if err != nil {
			return nil, fmt.Errorf("vector store %s: %w", rec.ID, err)
		}
		si.emb = e
	}
	if err := os.MkdirAll(si.dir, 0o755); err != nil {
		return nil, err
	}
	lex, err := openLexical(filepath.Join(si.dir, "lexical"))
	if err != nil {
		return nil, err
	}
	si.lex = lex
	if err := si.recover(); err != nil {
		lex.close()
		return nil, err
	}
	si.maybeSnapshot() // a long replay is not repeated after the next crash
	return si, nil
}

// recover loads the document table, then replays what each index misses.
func (si *storeIndex) recover() error {
	st := si.svc.st
	start := time.Now()
	err := st.ScanDocuments(si.tenant, si.id, func(d *store.Document) bool {
		si.setDoc(d)
		return true
	})
	if err != nil {
		return err
	}
	wl, err := si.lex.watermark()
	if err != nil {
		return err
	}
	wv := ^uint64(0) // no vector index: nothing to replay
	if si.emb != nil {
		si.vec = newVectorIndex()
		wv = si.loadVectors()
	}
	low := min(wl, wv)
	// Documents to re-apply, with the most chunks each had in the entries (what to delete beyond its
	// current chunks).
	lexDocs, vecDocs := map[string]int{}, map[string]int{}
	if wl == 0 {
		for id := range si.docs {
			lexDocs[id] = 0
		}
	}
	if wv == 0 {
		for id := range si.docs {
			vecDocs[id] = 0
		}
	}
	last := max(wl, 0)
	if wv != ^uint64(0) {
		last = max(last, wv)
	}
	entries := 0
	err = st.DocLog(si.tenant, si.id, low, func(e store.LogEntry) bool {
		entries++
		last = max(last, e.Seq)
		if e.Seq > wl {
			lexDocs[e.DocID] = max(lexDocs[e.DocID], e.PrevChunks)
		}
		if e.Seq > wv {
			vecDocs[e.DocID] = max(vecDocs[e.DocID], e.PrevChunks)
		}
		return true
	})
	if err != nil {
		return err
	}
	si.seq.init(last + 1)
	if err := si.replay(lexDocs, vecDocs, last); err != nil {
		return err
	}
	if si.vec != nil && len(vecDocs) > 0 {
		si.vecChanges.Add(int64(len(vecDocs)))
	}
	// Entries at or below both watermarks read from disk are durably applied by both indexes.
	if low > 0 && low != ^uint64(0) {
		if err := st.TrimDocLog(si.tenant, si.id, low); err != nil {
			return err
		}
	}
	if len(lexDocs)+len(vecDocs) > 0 {
		si.svc.log.Info("search index recovered", "tenant", si.tenant, "vector_store", si.id,
			"log_entries", entries, "lexical_docs", len(lexDocs), "vector_docs", len(vecDocs),
			"lexical_watermark", wl, "elapsed", time.Since(start).Round(time.Millisecond).String())
	}
	return nil
}

// replay re-applies documents from the store: those of lexDocs to bleve (then setting its watermark to
// w), those of vecDocs to the vector index (when there is one). Each map holds the most chunks a document
// had in the entries being replayed, so chunks beyond its current ones are deleted. A document in both
// is read from the store once.
func (si *storeIndex) replay(lexDocs, vecDocs map[string]int, w uint64) error {
	if si.vec == nil {
		vecDocs = nil
	}
	ids := make([]string, 0, len(lexDocs)+len(vecDocs))
	for id := range lexDocs {
		ids = append(ids, id)
	}
	for id := range vecDocs {
		if _, ok := lexDocs[id]; !ok {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	b := newLexBatch()
	for _, id := range ids {
		n := 0
		if m := si.doc(id); m != nil {
			n = m.chunks
		}
		chunks, err := si.svc.st.Chunks(si.tenant, si.id, id, n)
		if err != nil {
			return fmt.Errorf("replaying document %s: %w", id, err)
		}
		if prev, ok := lexDocs[id]; ok {
			for c := len(chunks); c < max(prev, n); c++ {
				b.del(chunkID(id, c))
			}
			for c, ch := range chunks {
				f, _ := si.lex.analyze(ch.Text)
				b.put(chunkID(id, c), f)
			}
			if b.n >= 2000 {
				if err := si.lex.apply(b, w); err != nil {
					return fmt.Errorf("replaying the lexical index: %w", err)
				}
				b = newLexBatch()
			}
		}
		if prev, ok := vecDocs[id]; ok {
			for c := len(chunks); c < max(prev, n); c++ {
				si.vec.Delete(chunkID(id, c))
			}
			for c, ch := range chunks {
				if len(ch.Vector) == 0 {
					si.vec.Delete(chunkID(id, c))
					continue
				}
				if err := si.checkDims(len(ch.Vector)); err != nil {
					return fmt.Errorf("replaying the vector index: %w", err)
				}
				si.vec.Add(chunkID(id, c), ch.Vector)
			}
		}
	}
	if len(lexDocs) > 0 {
		if err := si.lex.apply(b, w); err != nil {
			return fmt.Errorf("replaying the lexical index: %w", err)
		}
	}
	return nil
}

// loadVectors imports the vector snapshot and returns its watermark (0 when there is none or it is
// unreadable: the index is then rebuilt from the store).
func (si *storeIndex) loadVectors() uint64 {
	path := filepath.Join(si.dir, vecSnapFile)
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 1<<20)
	var head [16]byte
	if _, err := io.ReadFull(r, head[:]); err != nil || string(head[:8]) != vecSnapMagic {
		si.svc.log.Warn("vector snapshot unreadable; rebuilding from the store", "vector_store", si.id, "err", err)
		return 0
	}
	if err := si.vec.Import(r); err != nil {
		si.svc.log.Warn("vector snapshot unreadable; rebuilding from the store", "vector_store", si.id, "err", err)
		si.vec = newVectorIndex()
		return 0
	}
	si.dims.Store(int64(si.vec.Dims()))
	return binary.BigEndian.Uint64(head[8:])
}

// snapshotVectors writes the vector index to its snapshot file (atomically: temporary file, sync, rename)
// and then trims the change log as far as both indexes have durably applied it.
func (si *storeIndex) snapshotVectors() error {
	if si.vec == nil {
		return nil
	}
	si.snapMu.Lock()
	defer si.snapMu.Unlock()
	changes := si.vecChanges.Load()
	w := si.seq.safe()
	path := filepath.Join(si.dir, vecSnapFile)
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	bw.WriteString(vecSnapMagic)
	bw.Write(binary.BigEndian.AppendUint64(nil, w))
	err = si.vec.Export(bw)
	if err == nil {
		err = bw.Flush()
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	syncDir(si.dir)
	si.vecChanges.Add(-changes)
	si.lastSnap.Store(time.Now().UnixMilli())
	if t := min(w, si.lex.persisted.Load()); t > 0 {
		return si.svc.st.TrimDocLog(si.tenant, si.id, t)
	}
	return nil
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

// maybeSnapshot starts a background snapshot when enough vectors changed since the last one.
func (si *storeIndex) maybeSnapshot() {
	if si.vec == nil || si.vecChanges.Load() < si.svc.snapEvery ||
		time.Since(time.UnixMilli(si.lastSnap.Load())) < si.svc.snapMinInterval || !si.snapping.CompareAndSwap(false, true) {
		return
	}
	si.svc.wg.Add(1)
	go func() {
		defer si.svc.wg.Done()
		defer si.snapping.Store(false)
		si.life.RLock()
		defer si.life.RUnlock()
		if si.dead {
			return
		}
		if err := si.snapshotVectors(); err != nil {
			si.svc.log.Error("vector snapshot failed", "tenant", si.tenant, "vector_store", si.id, "err", err)
		}
	}()
}

// close snapshots the vectors (when changed) and closes bleve. Caller holds life exclusively.
func (si *storeIndex) close() error {
	if si.dead {
		return nil
	}
	si.dead = true
	var err error
	if si.vec != nil && si.vecChanges.Load() > 0 && !si.broken.Load() {
		err = si.snapshotVectors()
	}
	return errors.Join(err, si.lex.close())
}

// --- The document table -------------------------------------------------------------------------------

func (si *storeIndex) setDoc(d *store.Document) {
	attrs, _ := ParseAttributes(d.Attributes)
	m := &docMeta{filename: d.Filename, attrsRaw: d.Attributes, attrs: attrs, chunks: d.Chunks, tokens: d.Tokens}
	si.mu.Lock()
	if old := si.docs[d.ID]; old != nil {
		si.chunks -= int64(old.chunks)
		si.tokens -= old.tokens
	}
	si.docs[d.ID] = m
	si.chunks += int64(m.chunks)
	si.tokens += m.tokens
	si.mu.Unlock()
}

func (si *storeIndex) dropDoc(id string) {
	si.mu.Lock()
	if old := si.docs[id]; old != nil {
		si.chunks -= int64(old.chunks)
		si.tokens -= old.tokens
		delete(si.docs, id)
	}
	si.mu.Unlock()
}

func (si *storeIndex) doc(id string) *docMeta {
	si.mu.RLock()
	defer si.mu.RUnlock()
	return si.docs[id]
}

// avgLen is the average number of indexed terms per chunk (BM25's average document length).
func (si *storeIndex) avgLen() float64 {
	si.mu.RLock()
	defer si.mu.RUnlock()
	if si.chunks == 0 {
		return 1
	}
	return float64(si.tokens) / float64(si.chunks)
}

func (si *storeIndex) checkDims(n int) error {
	if si.dims.CompareAndSwap(0, int64(n)) || si.dims.Load() == int64(n) {
		return nil
	}
	return &EmbedderError{Msg: fmt.Sprintf("the embedder returned %d-dimensional vectors; vector store %s holds %d-dimensional ones", n, si.id, si.dims.Load())}
}

// --- Writes -----------------------------------------------------------------------------------------

// preparedDoc is a document ready to write: chunked, analysed and embedded.
type preparedDoc struct {
	doc    store.Document
	chunks []store.Chunk
	fields []*document.TextField
	delete bool
}

// prepare chunks and analyses documents (in parallel) and embeds their chunks.
func (si *storeIndex) prepare(ctx context.Context, docs []*preparedDoc, texts []string) error {
	work := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < min(runtime.GOMAXPROCS(0), len(docs)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				p := docs[i]
				parts := si.cfg.Chunking.Split(texts[i])
				p.chunks = make([]store.Chunk, len(parts))
				p.fields = make([]*document.TextField, len(parts))
				for c, part := range parts {
					f, n := si.lex.analyze(part)
					p.chunks[c] = store.Chunk{Text: part, Tokens: n}
					p.fields[c] = f
				}
			}
		}()
	}
	for i := range docs {
		work <- i
	}
	close(work)
	wg.Wait()
	if si.emb == nil {
		return nil
	}
	var all []string
	for _, p := range docs {
		for _, c := range p.chunks {
			all = append(all, c.Text)
		}
	}
	if len(all) == 0 {
		return nil
	}
	vecs, err := si.emb.Embed(ctx, all)
	if err != nil {
		return err
	}
	i := 0
	for _, p := range docs {
		for c := range p.chunks {
			if err := si.checkDims(len(vecs[i])); err != nil {
				return err
			}
			p.chunks[c].Vector = vecs[i]
			i++
		}
	}
	return nil
}

// write commits prepared documents (replacements and deletions) to the store and applies them to the
// indexes. It returns each document's change.
func (si *storeIndex) write(docs []*preparedDoc, q store.Quota) ([]store.DocChange, error) {
	ids := make([]string, len(docs))
	for i, p := range docs {
		ids[i] = p.doc.ID
	}
	defer si.lockDocs(ids)()
	first := si.seq.begin(len(docs))
	writes := make([]store.DocWrite, len(docs))
	for i, p := range docs {
		writes[i] = store.DocWrite{Doc: &p.doc, Chunks: p.chunks, Delete: p.delete, Seq: first + uint64(i)}
	}
	changes, err := si.svc.st.WriteDocuments(si.tenant, si.id, writes, q)
	if err != nil {
		si.seq.end(first)
		return nil, err
	}
	if err := si.apply(docs, changes); err != nil {
		// The documents are committed but not indexed: leave the range in flight so no watermark passes
		// it, and the next open replays it.
		si.broken.Store(true)
		si.svc.log.Error("search index update failed after commit; it is replayed at the next start",
			"tenant", si.tenant, "vector_store", si.id, "err", err)
		return nil, fmt.Errorf("updating the search index: %w", err)
	}
	si.seq.end(first)
	si.maybeSnapshot()
	if si.vec == nil && si.writes.Add(1)%512 == 0 {
		// Without a vector index only bleve's persisted watermark bounds the log.
		if t := si.lex.persisted.Load(); t > 0 {
			if err := si.svc.st.TrimDocLog(si.tenant, si.id, t); err != nil {
				si.svc.log.Warn("trimming the change log", "vector_store", si.id, "err", err)
			}
		}
	}
	return changes, nil
}

// apply updates the document table and both indexes with committed writes.
func (si *storeIndex) apply(docs []*preparedDoc, changes []store.DocChange) error {
	b := newLexBatch()
	vecChanged := 0
	for i, p := range docs {
		id, prev := p.doc.ID, changes[i].PrevChunks
		n := 0
		if !p.delete {
			n = len(p.chunks)
		}
		for c := n; c < prev; c++ {
			b.del(chunkID(id, c))
			if si.vec != nil {
				si.vec.Delete(chunkID(id, c))
				vecChanged++
			}
		}
		if p.delete {
			si.dropDoc(id)
			continue
		}
		for c := range p.chunks {
			b.put(chunkID(id, c), p.fields[c])
			if si.vec != nil && len(p.chunks[c].Vector) > 0 {
				si.vec.Add(chunkID(id, c), p.chunks[c].Vector)
				vecChanged++
			}
		}
		si.setDoc(&p.doc)
	}
	si.vecChanges.Add(int64(vecChanged))
	return si.lex.apply(b, si.seq.safe())
}

// lockDocs locks the stripes of documents in a fixed order and returns the unlock function.
func (si *storeIndex) lockDocs(ids []string) func() {
	idx := make([]uint64, 0, len(ids))
	for _, id := range ids {
		idx = append(idx, maphash.String(si.seed, id)%uint64(len(si.locks)))
	}
	slices.Sort(idx)
	idx = slices.Compact(idx)
	for _, i := range idx {
		si.locks[i].Lock()
	}
	return func() {
		for _, i := range idx {
			si.locks[i].Unlock()
		}
	}
}
