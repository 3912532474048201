// Package search is Plinth's retrieval: vector stores of documents, chunked and indexed for lexical
// (BM25 on bleve) and vector (HNSW) search, hybrid fusion, attribute filters, and the embedders that turn
// text into vectors.
//
// Pebble (host/store) is the source of truth for vector stores, documents and chunks (with their
// vectors); the indexes under Options.Dir are derived from it and replay what they miss after a crash
// (see storeIndex). Every method takes the tenant, and a vector store is only ever found within its
// tenant's range of the store, so no request of one tenant reaches another's stores.
package search

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/plinth-dev/plinth/abi"
	"github.com/plinth-dev/plinth/host/store"
)

// Options configure a Service. Store and Dir are required; zero values elsewhere take the documented
// defaults.
type Options struct {
	Store *store.Store
	// Dir holds the derived indexes: Dir/<tenant>/<vector store id>/.
	Dir string
	// Logger; nil means slog.Default().
	Logger *slog.Logger
	// DefaultEmbedder is the embedder of vector stores created without one of their own, and of
	// POST /v1/embeddings. Nil: such stores are lexical only.
	DefaultEmbedder *EmbedderConfig
	// AllowedEmbedderURLs, when not empty, are the URL prefixes a vector store's own embedder base_url
	// must start with (the default embedder's is always allowed). Empty allows any http(s) URL.
	AllowedEmbedderURLs []string
	// HTTPClient calls embedders; nil means a client with no overall timeout (each request has its own).
	HTTPClient *http.Client
	// SnapshotEvery is the number of vector changes after which a store's vector index is snapshotted,
	// at most once per SnapshotInterval. Zero means 20000 and 1 minute.
	SnapshotEvery    int64
	SnapshotInterval time.Duration
}

// Service manages the vector stores of all tenants. It implements the server's Retriever.
type Service struct {
	st              *store.Store
	dir             string
	log             *slog.Logger
	defEmb          *EmbedderConfig
	allowed         []string
	client          *http.Client
	snapEvery       int64
	snapMinInterval time.Duration

	mu     sync.Mutex
	open   map[string]*openEntry // tenant "\x00" store id → index; guarded by mu
	closed bool                  // guarded by mu
	wg     sync.WaitGroup        // background snapshots
}

type openEntry struct {
	ready chan struct{}
	si    *storeIndex
	err   error
}

// Errors.
var (
	// ErrNotFound is returned for vector stores and documents that do not exist (in the caller's tenant).
	ErrNotFound = store.ErrNotFound
	// ErrClosed is returned once the service is closing.
	ErrClosed = errors.New("search: the service is shutting down")
)

// InputError is a request the caller can fix; Param names the field.
type InputError struct {
	Code  string
	Param string
	Msg   string
}

func (e *InputError) Error() string { return e.Msg }

func inputErr(code, param, format string, args ...any) *InputError {
	return &InputError{Code: code, Param: param, Msg: fmt.Sprintf(format, args...)}
}

// New returns a Service and removes index directories of vector stores that no longer exist (a crash
// between a store's deletion and its directory's).
func New(opts Options) (*Service, error) {
	if opts.Store == nil || opts.Dir == "" {
		return nil, errors.New("search: Store and Dir are required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.HTTPClient == nil {
		opts.HTTPClient = &http.Client{}
	}
	if opts.SnapshotEvery <= 0 {
		opts.SnapshotEvery = 20000
	}
	if opts.SnapshotInterval <= 0 {
		opts.SnapshotInterval = time.Minute
	}
	if opts.DefaultEmbedder != nil {
		if err := opts.DefaultEmbedder.Validate(); err != nil {
			return nil, fmt.Errorf("default %w", err)
		}
	}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, err
	}
	s := &Service{st: opts.Store, dir: opts.Dir, log: opts.Logger, defEmb: opts.DefaultEmbedder,
		allowed: opts.AllowedEmbedderURLs, client: opts.HTTPClient, snapEvery: opts.SnapshotEvery,
		snapMinInterval: opts.SnapshotInterval, open: map[string]*openEntry{}}
	s.sweepOrphans()
	return s, nil
}

// tenantDir returns the directory name of a tenant: its id when it is a plain [a-z0-9_-] name, else "~"
// and its hex (ids are validated elsewhere; this keeps any id safe as a path element).
func tenantDir(tenant string) string {
	plain := tenant != "" && tenant != "." && tenant != ".."
	for i := 0; i < len(tenant) && plain; i++ {
		c := tenant[i]
		plain = ('a' <= c && c <= 'z') || ('0' <= c && c <= '9') || c == '_' || c == '-'
	}
	if plain {
		return tenant
	}
	return "~" + hex.EncodeToString([]byte(tenant))
}

func tenantFromDir(name string) (string, bool) {
	if h, ok := strings.CutPrefix(name, "~"); ok {
		b, err := hex.DecodeString(h)
		return string(b), err == nil
	}
	return name, true
}

func (s *Service) storeDir(tenant, id string) string {
	return filepath.Join(s.dir, tenantDir(tenant), id)
}

func (s *Service) sweepOrphans() {
	tenants, _ := os.ReadDir(s.dir)
	for _, td := range tenants {
		tenant, ok := tenantFromDir(td.Name())
		if !td.IsDir() || !ok {
			continue
		}
		stores, _ := os.ReadDir(filepath.Join(s.dir, td.Name()))
		for _, sd := range stores {
			if _, err := s.st.GetVectorStore(tenant, sd.Name()); errors.Is(err, store.ErrNotFound) {
				s.log.Info("removing the index of a deleted vector store", "tenant", tenant, "vector_store", sd.Name())
				os.RemoveAll(filepath.Join(s.dir, td.Name(), sd.Name()))
			}
		}
	}
}

// Close snapshots and closes every open index. In-flight operations finish first.
func (s *Service) Close() error {
	s.mu.Lock()
	s.closed = true
	entries := s.open
	s.open = map[string]*openEntry{}
	s.mu.Unlock()
	var errs []error
	for _, e := range entries {
		<-e.ready
		if e.si == nil {
			continue
		}
		e.si.life.Lock()
		errs = append(errs, e.si.close())
		e.si.life.Unlock()
	}
	s.wg.Wait()
	return errors.Join(errs...)
}

// acquire returns the open index of a tenant's vector store, opening it on first use, with the release
// function the caller must call. ErrNotFound when the tenant has no such store.
func (s *Service) acquire(tenant, id string) (*storeIndex, func(), error) {
	rec, err := s.st.GetVectorStore(tenant, id)
	if err != nil {
		return nil, nil, err
	}
	key := tenant + "\x00" + id
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, nil, ErrClosed
	}
	e := s.open[key]
	if e == nil {
		e = &openEntry{ready: make(chan struct{})}
		s.open[key] = e
		s.mu.Unlock()
		e.si, e.err = s.openStoreIndex(rec, tenant)
		close(e.ready)
		if e.err != nil {
			s.mu.Lock()
			if s.open[key] == e {
				delete(s.open, key)
			}
			s.mu.Unlock()
			s.log.Error("opening a search index", "tenant", tenant, "vector_store", id, "err", e.err)
			return nil, nil, e.err
		}
	} else {
		s.mu.Unlock()
		<-e.ready
		if e.err != nil {
			return nil, nil, e.err
		}
	}
	si := e.si
	si.life.RLock()
	if si.dead {
		si.life.RUnlock()
		return nil, nil, ErrNotFound
	}
	return si, si.life.RUnlock, nil
}

// newEmbedder returns the client of an embedder configuration.
func (s *Service) newEmbedder(cfg EmbedderConfig) (Embedder, error) {
	return NewHTTPEmbedder(cfg, s.client)
}

// --- Vector stores -----------------------------------------------------------------------------------

// StoreSpec describes a vector store to create.
type StoreSpec struct {
	Name     string
	Metadata map[string]string
	// Chunking nil means the default strategy.
	Chunking *Chunking
	// Embedder is the JSON of the store's embedder: absent (nil) means the server's default embedder,
	// JSON null means none (lexical search only), an object an EmbedderConfig.
	Embedder json.RawMessage
}

// StoreInfo is a vector store as the API shows it.
type StoreInfo struct {
	ID        string
	Name      string
	CreatedAt int64
	Metadata  map[string]string
	Chunking  Chunking
	// Embedder is nil for lexical-only stores. It never holds a secret (only the key's variable name).
	Embedder *EmbedderConfig
	Usage    store.StoreUsage
}

func (s *Service) info(tenant string, rec *store.VectorStore) (*StoreInfo, error) {
	var cfg storeConfig
	if len(rec.Config) > 0 {
		if err := json.Unmarshal(rec.Config, &cfg); err != nil {
			return nil, fmt.Errorf("vector store %s: corrupt config: %w", rec.ID, err)
		}
	}
	u, err := s.st.VectorStoreUsage(tenant, rec.ID)
	if err != nil {
		return nil, err
	}
	return &StoreInfo{ID: rec.ID, Name: rec.Name, CreatedAt: rec.CreatedAt, Metadata: rec.Metadata,
		Chunking: cfg.Chunking.WithDefaults(), Embedder: cfg.Embedder, Usage: u}, nil
}

// ResolveEmbedder validates the embedder JSON of a StoreSpec and returns the configuration it means (nil:
// none).
func (s *Service) ResolveEmbedder(raw json.RawMessage) (*EmbedderConfig, error) {
	if raw == nil {
		if s.defEmb == nil {
			return nil, nil
		}
		c := *s.defEmb
		return &c, nil
	}
	if strings.TrimSpace(string(raw)) == "null" {
		return nil, nil
	}
	var c EmbedderConfig
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, inputErr("invalid_embedder", "embedder", "embedder: want an object with base_url, model and optionally api_key_env, dimensions, batch_size, timeout_seconds, retries: %v", err)
	}
	if err := c.Validate(); err != nil {
		return nil, inputErr("invalid_embedder", "embedder", "%v", err)
	}
	if !AllowedKeyEnv(c.APIKeyEnv) {
		return nil, inputErr("invalid_embedder", "embedder.api_key_env",
			"embedder.api_key_env must name a variable PLINTH_EMBED_KEY_* that the operator set for this purpose")
	}
	if len(s.allowed) > 0 && (s.defEmb == nil || c.BaseURL != s.defEmb.BaseURL) {
		ok := false
		for _, p := range s.allowed {
			ok = ok || strings.HasPrefix(c.BaseURL, p)
		}
		if !ok {
			return nil, inputErr("embedder_not_allowed", "embedder.base_url",
				"embedder.base_url %q is not among the embedder URLs this server allows", c.BaseURL)
		}
	}
	return &c, nil
}

// CreateStore creates a vector store.
func (s *Service) CreateStore(tenant string, spec StoreSpec, q store.Quota) (*StoreInfo, error) {
	ch := Chunking{}.WithDefaults()
	if spec.Chunking != nil {
		ch = spec.Chunking.WithDefaults()
	}
	if err := ch.Validate(); err != nil {
		return nil, inputErr("invalid_chunking_strategy", "chunking_strategy", "chunking_strategy: %v", err)
	}
	emb, err := s.ResolveEmbedder(spec.Embedder)
	if err != nil {
		return nil, err
	}
	if len(spec.Name) > 256 {
		return nil, inputErr("invalid_name", "name", "name is at most 256 characters")
	}
	cfg, _ := json.Marshal(storeConfig{Chunking: ch, Embedder: emb})
	rec := &store.VectorStore{Name: spec.Name, CreatedAt: time.Now().Unix(), Metadata: spec.Metadata, Config: cfg}
	if err := s.st.CreateVectorStore(tenant, rec, q); err != nil {
		return nil, err
	}
	return s.info(tenant, rec)
}

// GetStore returns a vector store.
func (s *Service) GetStore(tenant, id string) (*StoreInfo, error) {
	rec, err := s.st.GetVectorStore(tenant, id)
	if err != nil {
		return nil, err
	}
	return s.info(tenant, rec)
}

// ListStores returns a tenant's vector stores.
func (s *Service) ListStores(tenant string) ([]*StoreInfo, error) {
	recs, err := s.st.VectorStores(tenant)
	if err != nil {
		return nil, err
	}
	out := make([]*StoreInfo, 0, len(recs))
	for _, r := range recs {
		i, err := s.info(tenant, r)
		if err != nil {
			return nil, err
		}
		out = append(out, i)
	}
	return out, nil
}

// UpdateStore changes a vector store's name (when name is not nil) and metadata (when not nil).
func (s *Service) UpdateStore(tenant, id string, name *string, metadata map[string]string, q store.Quota) (*StoreInfo, error) {
	if name != nil && len(*name) > 256 {
		return nil, inputErr("invalid_name", "name", "name is at most 256 characters")
	}
	rec, err := s.st.UpdateVectorStore(tenant, id, func(vs *store.VectorStore) error {
		if name != nil {
			vs.Name = *name
		}
		if metadata != nil {
			vs.Metadata = metadata
		}
		return nil
	}, q)
	if err != nil {
		return nil, err
	}
	return s.info(tenant, rec)
}

// DeleteStore deletes a vector store with its documents and indexes. In-flight operations on it finish
// first; later ones find no store.
func (s *Service) DeleteStore(tenant, id string) error {
	if _, err := s.st.GetVectorStore(tenant, id); err != nil {
		return err
	}
	key := tenant + "\x00" + id
	// Mark the store gone for this process before touching the data: an open index is closed once its
	// in-flight operations end (later ones see it dead), and an unopened one gets a tombstone entry so no
	// request opens it meanwhile.
	s.mu.Lock()
	e := s.open[key]
	if e == nil {
		e = &openEntry{ready: make(chan struct{}), err: ErrNotFound}
		close(e.ready)
		s.open[key] = e
	}
	s.mu.Unlock()
	<-e.ready
	if e.si != nil {
		e.si.life.Lock()
		e.si.vecChanges.Store(0) // no snapshot of a store about to vanish
		e.si.close()
		e.si.life.Unlock()
	}
	defer func() {
		s.mu.Lock()
		if s.open[key] == e {
			delete(s.open, key)
		}
		s.mu.Unlock()
	}()
	if err := s.st.DeleteVectorStore(tenant, id); err != nil {
		return err
	}
	return os.RemoveAll(s.storeDir(tenant, id))
}

// --- Documents ---------------------------------------------------------------------------------------

// DocumentInput is a document to add to (or replace in) a vector store.
type DocumentInput struct {
	// ID names the document in its store; empty means a new random id ("doc_" and 24 hex digits).
	ID         string
	Filename   string
	Text       string
	Attributes json.RawMessage
}

// DocumentInfo is a document as the API shows it.
type DocumentInfo struct {
	ID         string
	StoreID    string
	Filename   string
	Attributes json.RawMessage
	CreatedAt  int64
	Chunks     int
	Bytes      int64
	TextBytes  int64
	// Replaced is set by PutDocuments when the document existed before.
	Replaced bool
}

func docInfo(storeID string, d *store.Document) DocumentInfo {
	return DocumentInfo{ID: d.ID, StoreID: storeID, Filename: d.Filename, Attributes: d.Attributes,
		CreatedAt: d.CreatedAt, Chunks: d.Chunks, Bytes: d.Bytes, TextBytes: d.TextBytes}
}

// MaxBatchDocuments bounds the documents of one PutDocuments call.
const MaxBatchDocuments = 1000

func newDocID() string {
	var b [12]byte
	rand.Read(b[:])
	return "doc_" + hex.EncodeToString(b[:])
}

// PutDocuments adds documents to a vector store, replacing those with the same ids, atomically: all are
// stored and indexed, or none. When it returns, they are searchable.
func (s *Service) PutDocuments(ctx context.Context, tenant, storeID string, docs []DocumentInput, q store.Quota) ([]DocumentInfo, error) {
	if len(docs) == 0 {
		return nil, inputErr("missing_documents", "documents", "documents must hold at least one document")
	}
	if len(docs) > MaxBatchDocuments {
		return nil, inputErr("too_many_documents", "documents", "at most %d documents per request, got %d", MaxBatchDocuments, len(docs))
	}
	now := time.Now().Unix()
	prepared := make([]*preparedDoc, len(docs))
	texts := make([]string, len(docs))
	seen := map[string]bool{}
	for i, d := range docs {
		param := fmt.Sprintf("documents[%d]", i)
		if d.ID == "" {
			d.ID = newDocID()
		}
		if !store.ValidDocID(d.ID) {
			return nil, inputErr("invalid_document_id", param+".id",
				"%s.id %q: ids are 1 to 256 of A-Z a-z 0-9 . _ : @ -, starting with a letter or digit", param, d.ID)
		}
		if seen[d.ID] {
			return nil, inputErr("duplicate_document_id", param+".id", "%s.id %q appears twice in the request", param, d.ID)
		}
		seen[d.ID] = true
		if strings.TrimSpace(d.Text) == "" {
			return nil, inputErr("missing_text", param+".text", "%s.text is empty", param)
		}
		if len(d.Filename) > 512 {
			return nil, inputErr("invalid_filename", param+".filename", "%s.filename is at most 512 characters", param)
		}
		attrs := d.Attributes
		if _, err := ParseAttributes(attrs); err != nil {
			return nil, inputErr("invalid_attributes", param+".attributes", "%s.attributes: %v", param, err)
		}
		if a := strings.TrimSpace(string(attrs)); a == "" || a == "null" {
			attrs = nil
		} else {
			attrs = compactJSON(attrs)
		}
		prepared[i] = &preparedDoc{doc: store.Document{ID: d.ID, Filename: d.Filename, Attributes: attrs, CreatedAt: now}}
		texts[i] = d.Text
	}
	si, release, err := s.acquire(tenant, storeID)
	if err != nil {
		return nil, err
	}
	defer release()
	if err := si.prepare(ctx, prepared, texts); err != nil {
		return nil, err
	}
	changes, err := si.write(prepared, q)
	if err != nil {
		return nil, err
	}
	out := make([]DocumentInfo, len(prepared))
	for i, p := range prepared {
		out[i] = docInfo(storeID, &p.doc)
		out[i].Replaced = changes[i].Existed
	}
	return out, nil
}

func compactJSON(raw json.RawMessage) json.RawMessage {
	var v any
	if json.Unmarshal(raw, &v) != nil {
		return raw
	}
	b, _ := json.Marshal(v)
	return b
}

// UpdateDocument changes a document's attributes (and filename, when not nil) without re-chunking or
// re-embedding it.
func (s *Service) UpdateDocument(ctx context.Context, tenant, storeID, docID string, attributes json.RawMessage, filename *string, q store.Quota) (*DocumentInfo, error) {
	if _, err := ParseAttributes(attributes); err != nil {
		return nil, inputErr("invalid_attributes", "attributes", "attributes: %v", err)
	}
	si, release, err := s.acquire(tenant, storeID)
	if err != nil {
		return nil, err
	}
	defer release()
	unlock := si.lockDocs([]string{docID})
	d, err := s.st.GetDocument(tenant, storeID, docID)
	if err != nil {
		unlock()
		return nil, err
	}
	chunks, err := s.st.Chunks(tenant, storeID, docID, d.Chunks)
	unlock()
	if err != nil {
		return nil, err
	}
	p := &preparedDoc{doc: *d, chunks: chunks}
	// Absent attributes keep the document's; an explicit null clears them.
	switch a := strings.TrimSpace(string(attributes)); {
	case attributes == nil:
	case a == "" || a == "null":
		p.doc.Attributes = nil
	default:
		p.doc.Attributes = compactJSON(attributes)
	}
	if filename != nil {
		p.doc.Filename = *filename
	}
	for _, c := range chunks {
		f, _ := si.lex.analyze(c.Text)
		p.fields = append(p.fields, f)
	}
	// A concurrent replacement between the read above and this write is overwritten with the read state
	// plus the new attributes; the write itself is atomic and indexed consistently.
	if _, err := si.write([]*preparedDoc{p}, q); err != nil {
		return nil, err
	}
	info := docInfo(storeID, &p.doc)
	return &info, nil
}

// DeleteDocument removes a document from a vector store and its indexes.
func (s *Service) DeleteDocument(ctx context.Context, tenant, storeID, docID string) error {
	if !store.ValidDocID(docID) {
		return ErrNotFound
	}
	si, release, err := s.acquire(tenant, storeID)
	if err != nil {
		return err
	}
	defer release()
	changes, err := si.write([]*preparedDoc{{doc: store.Document{ID: docID}, delete: true}}, store.Quota{})
	if err != nil {
		return err
	}
	if !changes[0].Existed {
		return ErrNotFound
	}
	return nil
}

// GetDocument returns a document of a vector store.
func (s *Service) GetDocument(tenant, storeID, docID string) (*DocumentInfo, error) {
	if _, err := s.st.GetVectorStore(tenant, storeID); err != nil {
		return nil, err
	}
	d, err := s.st.GetDocument(tenant, storeID, docID)
	if err != nil {
		return nil, err
	}
	info := docInfo(storeID, d)
	return &info, nil
}

// DocumentChunks returns the chunks of a document (their text).
func (s *Service) DocumentChunks(tenant, storeID, docID string) ([]string, error) {
	d, err := s.GetDocument(tenant, storeID, docID)
	if err != nil {
		return nil, err
	}
	chunks, err := s.st.Chunks(tenant, storeID, docID, d.Chunks)
	if err != nil {
		return nil, err
	}
	out := make([]string, len(chunks))
	for i, c := range chunks {
		out[i] = c.Text
	}
	return out, nil
}

// ListDocuments lists a vector store's documents in id order (see store.ListDocuments).
func (s *Service) ListDocuments(tenant, storeID, after, before string, limit int, desc bool) ([]DocumentInfo, bool, error) {
	if _, err := s.st.GetVectorStore(tenant, storeID); err != nil {
		return nil, false, err
	}
	docs, more, err := s.st.ListDocuments(tenant, storeID, after, before, limit, desc)
	if err != nil {
		return nil, false, err
	}
	out := make([]DocumentInfo, len(docs))
	for i, d := range docs {
		out[i] = docInfo(storeID, d)
	}
	return out, more, nil
}

// --- Embeddings --------------------------------------------------------------------------------------

// DefaultEmbedder returns the server's default embedder configuration (nil: none).
func (s *Service) DefaultEmbedder() *EmbedderConfig { return s.defEmb }

// Embed embeds texts with the default embedder's provider and the given model ("" means the default
// model). It returns the model used.
func (s *Service) Embed(ctx context.Context, model string, texts []string) ([][]float32, string, error) {
	if s.defEmb == nil {
		return nil, "", inputErr("embedder_required", "model",
			"this server has no embedder configured (set PLINTH_EMBED_BASE_URL and PLINTH_EMBED_MODEL)")
	}
	if model == "" {
		model = s.defEmb.Model
	}
	e, err := NewHTTPEmbedder(*s.defEmb, s.client)
	if err != nil {
		return nil, "", err
	}
	vecs, err := e.EmbedModel(ctx, model, texts)
	return vecs, model, err
}

var _ interface {
	Search(context.Context, string, *abi.SearchRequest) (*abi.SearchResult, error)
} = (*Service)(nil)
