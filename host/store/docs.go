package store

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"slices"
	"strings"
)

// Vector stores and their documents (the source of truth of search). Layout in the tenant's range, all
// under nsDoc:
//
//	's' storeID                          → VectorStore record (JSON)
//	'f' storeID docID                    → Document record (JSON)
//	'c' storeID docID 0x00 index(4 BE)   → chunk: uvarint(len(text)) text uvarint(dims) dims×float32 LE
//	'l' storeID seq(8 BE)                → change log: uvarint(previous chunk count) docID
//	'n' storeID kind                     → counters (Batch.Add): 'b' bytes, 'k' records, 'f' documents,
//	                                       'c' chunks
//
// Store ids have a fixed length, so no store's keys are a prefix of another's. Document ids never contain
// 0x00, so a document's chunks ("docID 0x00") are never confused with those of a longer id.
//
// The change log is what the derived indexes (bleve, vectors) replay after a crash: every write of a
// document adds an entry with a sequence number chosen by the caller (host/search), in the same atomic
// batch as the document. An entry names the document and how many chunks it had before the write; the
// document's current state is read from the store when the entry is applied, so applying an entry twice
// is harmless. Log entries and counters are the store's bookkeeping and are not charged to the tenant.

// VSIDLen is the length of a vector store id: "vs_" and 32 hex digits.
const VSIDLen = 3 + 32

// MaxDocIDLen bounds document ids.
const MaxDocIDLen = 256

// ValidVSID reports whether id has the vector store id format.
func ValidVSID(id string) bool { return hexID(id, "vs_", 32) }

// NewVSID returns a new random vector store id.
func NewVSID() string {
	var b [16]byte
	rand.Read(b[:])
	return "vs_" + hex.EncodeToString(b[:])
}

// ValidDocID reports whether id can name a document: 1 to 256 of [A-Za-z0-9._:@-], starting with a letter
// or digit. The restriction keeps ids safe in URL paths and index keys ('#' and 0x00 never occur).
func ValidDocID(id string) bool {
	if len(id) == 0 || len(id) > MaxDocIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case i > 0 && strings.IndexByte("._:@-", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// VectorStore is a vector store's record.
type VectorStore struct {
	ID        string            `json:"id"`
	Name      string            `json:"name"`
	CreatedAt int64             `json:"created_at"` // Unix seconds
	Metadata  map[string]string `json:"metadata"`
	// Config holds the search service's settings of the store (chunking, embedder); the store does not
	// interpret it.
	Config json.RawMessage `json:"config,omitempty"`

	size int64 // stored bytes of the record as last read or written
}

// StoreUsage is what a vector store holds.
type StoreUsage struct {
	Bytes     int64 // stored bytes of its documents and chunks
	Records   int64 // stored records of its documents and chunks
	Documents int64
	Chunks    int64
}

// Document is a document's record. Its text lives in its chunks.
type Document struct {
	ID         string          `json:"id"`
	Filename   string          `json:"filename,omitempty"`
	Attributes json.RawMessage `json:"attributes,omitempty"`
	CreatedAt  int64           `json:"created_at"` // Unix seconds of the last write
	Chunks     int             `json:"chunks"`
	// Tokens is the number of indexed terms of all chunks (the lexical index's document lengths).
	Tokens int64 `json:"tokens"`
	// TextBytes is the length of the document's text.
	TextBytes int64 `json:"text_bytes"`
	// Bytes is the stored size of the document: its record and chunks, keys and values.
	Bytes int64 `json:"bytes"`
}

// Chunk is a piece of a document's text, with its embedding when the store has an embedder.
type Chunk struct {
	Text   string
	Tokens int // indexed terms of the text (set by the caller)
	Vector []float32
}

// DocWrite is one write of a WriteDocuments batch: Doc with its Chunks replaces the document of that id
// (or creates it); Delete removes it. Seq is the change log sequence number of the write.
type DocWrite struct {
	Doc    *Document
	Chunks []Chunk
	Delete bool
	Seq    uint64
}

// DocChange is the outcome of one DocWrite.
type DocChange struct {
	// Existed tells whether the document existed before the write; PrevChunks is its chunk count then.
	Existed    bool
	PrevChunks int
}

// LogEntry is one entry of a vector store's change log.
type LogEntry struct {
	Seq        uint64
	DocID      string
	PrevChunks int
}

func vsKey(tenant, id string) []byte { return TenantKey(tenant, nsDoc, []byte{'s'}, []byte(id)) }

func docKey(tenant, storeID, docID string) []byte {
	return TenantKey(tenant, nsDoc, []byte{'f'}, []byte(storeID), []byte(docID))
}

func chunkPrefix(tenant, storeID, docID string) []byte {
	return TenantKey(tenant, nsDoc, []byte{'c'}, []byte(storeID), []byte(docID), []byte{0})
}

func chunkKey(tenant, storeID, docID string, i int) []byte {
	return binary.BigEndian.AppendUint32(chunkPrefix(tenant, storeID, docID), uint32(i))
}

func logKey(tenant, storeID string, seq uint64) []byte {
	return TenantKey(tenant, nsDoc, []byte{'l'}, []byte(storeID), be64(seq))
}

func vsCounterKey(tenant, storeID string, kind byte) []byte {
	return TenantKey(tenant, nsDoc, []byte{'n'}, []byte(storeID), []byte{kind})
}

// encodeChunk encodes a chunk value.
func encodeChunk(c *Chunk) []byte {
	b := make([]byte, 0, 2*binary.MaxVarintLen32+len(c.Text)+4*len(c.Vector)+binary.MaxVarintLen32)
	b = binary.AppendUvarint(b, uint64(len(c.Text)))
	b = append(b, c.Text...)
	b = binary.AppendUvarint(b, uint64(c.Tokens))
	b = binary.AppendUvarint(b, uint64(len(c.Vector)))
	for _, f := range c.Vector {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(f))
	}
	return b
}

func decodeChunk(v []byte) (Chunk, error) {
	var c Chunk
	n, w := binary.Uvarint(v)
	if w <= 0 || n > uint64(len(v)-w) {
		return c, errors.New("store: corrupt chunk")
	}
	c.Text = string(v[w : w+int(n)])
	v = v[w+int(n):]
	tok, w := binary.Uvarint(v)
	if w <= 0 {
		return c, errors.New("store: corrupt chunk")
	}
	c.Tokens = int(tok)
	v = v[w:]
	dims, w := binary.Uvarint(v)
	if w <= 0 || dims*4 != uint64(len(v)-w) {
		return c, errors.New("store: corrupt chunk")
	}
	v = v[w:]
	if dims > 0 {
		c.Vector = make([]float32, dims)
		for i := range c.Vector {
			c.Vector[i] = math.Float32frombits(binary.LittleEndian.Uint32(v[4*i:]))
		}
	}
	return c, nil
}

// CreateVectorStore stores a new vector store (vs.ID is set when empty) and its record's size counts
// against the tenant's quota.
func (s *Store) CreateVectorStore(tenant string, vs *VectorStore, q Quota) error {
	if vs.ID == "" {
		vs.ID = NewVSID()
	}
	if !ValidVSID(vs.ID) {
		return fmt.Errorf("%w: vector store id %q", ErrBadID, vs.ID)
	}
	if vs.Metadata == nil {
		vs.Metadata = map[string]string{}
	}
	k := vsKey(tenant, vs.ID)
	defer s.lock(k).Unlock()
	if _, err := s.b.Get(k); err == nil {
		return fmt.Errorf("%w: vector store %s exists", ErrConflict, vs.ID)
	} else if !errors.Is(err, ErrNotFound) {
		return err
	}
	var b Batch
	raw, _ := json.Marshal(vs)
	b.Set(k, raw)
	size := int64(len(k) + len(raw))
	if err := s.commit(tenant, &b, size, 1, q); err != nil {
		return err
	}
	vs.size = size
	return nil
}

// GetVectorStore returns a vector store, or ErrNotFound.
func (s *Store) GetVectorStore(tenant, id string) (*VectorStore, error) {
	if !ValidVSID(id) {
		return nil, ErrNotFound
	}
	k := vsKey(tenant, id)
	raw, err := s.b.Get(k)
	if err != nil {
		return nil, err
	}
	var vs VectorStore
	if err := json.Unmarshal(raw, &vs); err != nil {
		return nil, fmt.Errorf("store: corrupt vector store %s: %w", id, err)
	}
	vs.size = int64(len(k) + len(raw))
	return &vs, nil
}

// UpdateVectorStore changes a vector store's record with fn (which may not change its id).
func (s *Store) UpdateVectorStore(tenant, id string, fn func(*VectorStore) error, q Quota) (*VectorStore, error) {
	if !ValidVSID(id) {
		return nil, ErrNotFound
	}
	k := vsKey(tenant, id)
	defer s.lock(k).Unlock()
	vs, err := s.GetVectorStore(tenant, id)
	if err != nil {
		return nil, err
	}
	if err := fn(vs); err != nil {
		return nil, err
	}
	vs.ID = id
	var b Batch
	raw, _ := json.Marshal(vs)
	b.Set(k, raw)
	size := int64(len(k) + len(raw))
	if err := s.commit(tenant, &b, size-vs.size, 0, q); err != nil {
		return nil, err
	}
	vs.size = size
	return vs, nil
}

// VectorStores returns all vector stores of a tenant, in id order.
func (s *Store) VectorStores(tenant string) ([]*VectorStore, error) {
	lower := TenantKey(tenant, nsDoc, []byte{'s'})
	var out []*VectorStore
	var bad error
	err := s.b.Scan(lower, prefixEnd(lower), func(k, v []byte) bool {
		var vs VectorStore
		if err := json.Unmarshal(v, &vs); err != nil {
			bad = fmt.Errorf("store: corrupt vector store at %q: %w", k, err)
			return false
		}
		vs.size = int64(len(k) + len(v))
		out = append(out, &vs)
		return true
	})
	return out, errors.Join(err, bad)
}

// VectorStoreUsage returns what a vector store holds.
func (s *Store) VectorStoreUsage(tenant, id string) (StoreUsage, error) {
	var u StoreUsage
	for _, c := range []struct {
		kind byte
		dst  *int64
	}{{'b', &u.Bytes}, {'k', &u.Records}, {'f', &u.Documents}, {'c', &u.Chunks}} {
		v, err := s.b.Get(vsCounterKey(tenant, id, c.kind))
		if err != nil && !errors.Is(err, ErrNotFound) {
			return u, err
		}
		*c.dst = readCounter(v)
	}
	return u, nil
}

// DeleteVectorStore removes a vector store with all its documents, chunks and log in one batch.
func (s *Store) DeleteVectorStore(tenant, id string) error {
	if !ValidVSID(id) {
		return ErrNotFound
	}
	k := vsKey(tenant, id)
	defer s.lock(k).Unlock()
	vs, err := s.GetVectorStore(tenant, id)
	if err != nil {
		return err
	}
	u, err := s.VectorStoreUsage(tenant, id)
	if err != nil {
		return err
	}
	var b Batch
	b.Delete(k)
	for _, sec := range []byte{'f', 'c', 'l', 'n'} {
		p := TenantKey(tenant, nsDoc, []byte{sec}, []byte(id))
		b.DeleteRange(p, prefixEnd(p))
	}
	return s.commit(tenant, &b, -(vs.size + u.Bytes), -(1 + u.Records), Quota{})
}

// lockDocs locks the stripes of a store's documents in a fixed order (no two writers can deadlock, and a
// stripe shared by two ids is locked once) and returns the function that unlocks them.
func (s *Store) lockDocs(tenant, storeID string, ids []string) func() {
	idx := make([]uint64, 0, len(ids))
	for _, id := range ids {
		idx = append(idx, s.stripe(docKey(tenant, storeID, id)))
	}
	slices.Sort(idx)
	idx = slices.Compact(idx)
	for _, i := range idx {
		s.locks[i].Lock()
	}
	return func() {
		for _, i := range idx {
			s.locks[i].Unlock()
		}
	}
}

// GetDocument returns a document's record, or ErrNotFound.
func (s *Store) GetDocument(tenant, storeID, docID string) (*Document, error) {
	if !ValidVSID(storeID) || !ValidDocID(docID) {
		return nil, ErrNotFound
	}
	var d Document
	if err := s.getJSON(docKey(tenant, storeID, docID), &d); err != nil {
		return nil, err
	}
	return &d, nil
}

// WriteDocuments applies a batch of document writes to a vector store atomically: every write and its
// change log entry commit together, or none does. A document deleted by a write that does not exist is
// reported with Existed false and changes nothing (its log entry is still written, so the caller's
// sequence numbers have no gaps it must explain). The vector store must exist; the caller serialises
// writes of one document with the index updates that follow them (host/search does).
func (s *Store) WriteDocuments(tenant, storeID string, writes []DocWrite, q Quota) ([]DocChange, error) {
	if !ValidVSID(storeID) {
		return nil, ErrNotFound
	}
	ids := make([]string, len(writes))
	for i, w := range writes {
		if w.Doc == nil || !ValidDocID(w.Doc.ID) {
			return nil, fmt.Errorf("%w: document id", ErrBadID)
		}
		ids[i] = w.Doc.ID
	}
	if _, err := s.b.Get(vsKey(tenant, storeID)); err != nil {
		return nil, err
	}
	defer s.lockDocs(tenant, storeID, ids)()

	var b Batch
	var dBytes, dKeys, dDocs, dChunks int64
	out := make([]DocChange, len(writes))
	// Within one batch a later write of the same id sees the earlier one's result.
	pending := map[string]*Document{}
	for i, w := range writes {
		id := w.Doc.ID
		old, seen := pending[id]
		if !seen {
			d, err := s.GetDocument(tenant, storeID, id)
			switch {
			case err == nil:
				old = d
			case !errors.Is(err, ErrNotFound):
				return nil, err
			}
		}
		if old != nil {
			out[i] = DocChange{Existed: true, PrevChunks: old.Chunks}
			for c := 0; c < old.Chunks; c++ {
				b.Delete(chunkKey(tenant, storeID, id, c))
			}
			dBytes -= old.Bytes
			dKeys -= int64(1 + old.Chunks)
			dDocs--
			dChunks -= int64(old.Chunks)
		}
		lv := binary.AppendUvarint(nil, uint64(out[i].PrevChunks))
		b.Set(logKey(tenant, storeID, w.Seq), append(lv, id...))
		if w.Delete {
			if old != nil {
				b.Delete(docKey(tenant, storeID, id))
			}
			pending[id] = nil
			continue
		}
		d := *w.Doc
		d.Chunks = len(w.Chunks)
		d.Bytes, d.Tokens, d.TextBytes = 0, 0, 0
		for c := range w.Chunks {
			k := chunkKey(tenant, storeID, id, c)
			v := encodeChunk(&w.Chunks[c])
			b.Set(k, v)
			d.Bytes += int64(len(k) + len(v))
			d.Tokens += int64(w.Chunks[c].Tokens)
			d.TextBytes += int64(len(w.Chunks[c].Text))
		}
		dk := docKey(tenant, storeID, id)
		// The record's size includes itself: encode once to learn it, then again with it set.
		raw, _ := json.Marshal(&d)
		d.Bytes += int64(len(dk) + len(raw))
		raw, _ = json.Marshal(&d)
		b.Set(dk, raw)
		*w.Doc = d
		dBytes += d.Bytes
		dKeys += int64(1 + d.Chunks)
		dDocs++
		dChunks += int64(d.Chunks)
		pending[id] = w.Doc
	}
	b.Add(vsCounterKey(tenant, storeID, 'b'), dBytes)
	b.Add(vsCounterKey(tenant, storeID, 'k'), dKeys)
	b.Add(vsCounterKey(tenant, storeID, 'f'), dDocs)
	b.Add(vsCounterKey(tenant, storeID, 'c'), dChunks)
	if err := s.commit(tenant, &b, dBytes, dKeys, q); err != nil {
		return nil, err
	}
	return out, nil
}

// Chunks returns the first n chunks of a document (n < 0: all of them).
func (s *Store) Chunks(tenant, storeID, docID string, n int) ([]Chunk, error) {
	p := chunkPrefix(tenant, storeID, docID)
	upper := prefixEnd(p)
	if n >= 0 {
		upper = chunkKey(tenant, storeID, docID, n)
	}
	var out []Chunk
	var bad error
	err := s.b.Scan(p, upper, func(_, v []byte) bool {
		c, err := decodeChunk(v)
		if err != nil {
			bad = err
			return false
		}
		out = append(out, c)
		return true
	})
	return out, errors.Join(err, bad)
}

// Chunk returns chunk i of a document, or ErrNotFound.
func (s *Store) Chunk(tenant, storeID, docID string, i int) (Chunk, error) {
	v, err := s.b.Get(chunkKey(tenant, storeID, docID, i))
	if err != nil {
		return Chunk{}, err
	}
	return decodeChunk(v)
}

// ScanDocuments calls fn for each document of a store in id order until fn returns false.
func (s *Store) ScanDocuments(tenant, storeID string, fn func(*Document) bool) error {
	lower := TenantKey(tenant, nsDoc, []byte{'f'}, []byte(storeID))
	var bad error
	err := s.b.Scan(lower, prefixEnd(lower), func(k, v []byte) bool {
		var d Document
		if err := json.Unmarshal(v, &d); err != nil {
			bad = fmt.Errorf("store: corrupt document at %q: %w", k, err)
			return false
		}
		return fn(&d)
	})
	return errors.Join(err, bad)
}

// ListDocuments returns up to limit documents of a store in id order (descending with desc), strictly
// after the id after and before the id before when they are set, and whether more follow.
func (s *Store) ListDocuments(tenant, storeID, after, before string, limit int, desc bool) ([]*Document, bool, error) {
	base := TenantKey(tenant, nsDoc, []byte{'f'}, []byte(storeID))
	lower, upper := base, prefixEnd(base)
	if desc {
		// In descending order "after" is the upper bound and "before" the lower one.
		after, before = before, after
	}
	if after != "" {
		lower = append(append(bytes.Clone(base), after...), 0)
	}
	if before != "" {
		upper = append(bytes.Clone(base), before...)
	}
	var all []*Document
	var bad error
	err := s.b.Scan(lower, upper, func(k, v []byte) bool {
		var d Document
		if err := json.Unmarshal(v, &d); err != nil {
			bad = fmt.Errorf("store: corrupt document at %q: %w", k, err)
			return false
		}
		all = append(all, &d)
		// Ascending scans stop early; descending ones need the tail (kept bounded).
		if desc && len(all) > 2*(limit+1) {
			all = append(all[:0], all[len(all)-(limit+1):]...)
		}
		return desc || len(all) <= limit
	})
	if err = errors.Join(err, bad); err != nil {
		return nil, false, err
	}
	if desc {
		if len(all) > limit+1 {
			all = all[len(all)-(limit+1):]
		}
		slices.Reverse(all)
	}
	more := len(all) > limit
	if more {
		all = all[:limit]
	}
	return all, more, nil
}

// DocLog calls fn for each change log entry of a store with a sequence number above after, in order,
// until fn returns false.
func (s *Store) DocLog(tenant, storeID string, after uint64, fn func(LogEntry) bool) error {
	if after == math.MaxUint64 {
		return nil
	}
	lower := logKey(tenant, storeID, after+1)
	p := TenantKey(tenant, nsDoc, []byte{'l'}, []byte(storeID))
	var bad error
	err := s.b.Scan(lower, prefixEnd(p), func(k, v []byte) bool {
		prev, w := binary.Uvarint(v)
		if w <= 0 {
			bad = fmt.Errorf("store: corrupt change log entry at %q", k)
			return false
		}
		return fn(LogEntry{Seq: binary.BigEndian.Uint64(k[len(k)-8:]), DocID: string(v[w:]), PrevChunks: int(prev)})
	})
	return errors.Join(err, bad)
}

// TrimDocLog removes a store's change log entries up to and including seq (the derived indexes have
// durably applied them).
func (s *Store) TrimDocLog(tenant, storeID string, seq uint64) error {
	var b Batch
	b.DeleteRange(logKey(tenant, storeID, 0), logKey(tenant, storeID, seq+1))
	if seq == math.MaxUint64 {
		p := TenantKey(tenant, nsDoc, []byte{'l'}, []byte(storeID))
		b = Batch{}
		b.DeleteRange(p, prefixEnd(p))
	}
	return s.b.Apply(&b)
}

// stripe returns the index of key's lock stripe.
func (s *Store) stripe(key []byte) uint64 {
	return maphash.Bytes(s.seed, key) % uint64(len(s.locks))
}
