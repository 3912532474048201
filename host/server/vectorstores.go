package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"mime"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/valyala/fasthttp"

	"github.com/plinth-dev/plinth/abi"
	"github.com/plinth-dev/plinth/host/search"
)

// The vector stores API (OpenAI-shaped; docs/search.md): vector stores per tenant, documents in them
// (batches of JSON documents, or plain text and markdown uploads), and search. Every lookup is scoped by
// the authenticated tenant: another tenant's store ids are simply not found.

func init() {
	endpointRegistrars = append(endpointRegistrars, func(s *Server) {
		s.route("POST", "/v1/vector_stores", "vector_stores.create", s.createVectorStore)
		s.route("GET", "/v1/vector_stores", "vector_stores.list", s.listVectorStores)
		s.route("GET", "/v1/vector_stores/{vector_store_id}", "vector_stores.get", s.getVectorStore)
		s.route("POST", "/v1/vector_stores/{vector_store_id}", "vector_stores.update", s.updateVectorStore)
		s.route("DELETE", "/v1/vector_stores/{vector_store_id}", "vector_stores.delete", s.deleteVectorStore)
		s.route("POST", "/v1/vector_stores/{vector_store_id}/search", "vector_stores.search", s.searchVectorStore)
		s.route("POST", "/v1/vector_stores/{vector_store_id}/documents", "vector_stores.documents.create", s.addDocuments)
		s.route("GET", "/v1/vector_stores/{vector_store_id}/documents", "vector_stores.documents.list", s.listDocuments)
		s.route("GET", "/v1/vector_stores/{vector_store_id}/documents/{document_id}", "vector_stores.documents.get", s.getDocument)
		s.route("PUT", "/v1/vector_stores/{vector_store_id}/documents/{document_id}", "vector_stores.documents.replace", s.replaceDocument)
		s.route("POST", "/v1/vector_stores/{vector_store_id}/documents/{document_id}", "vector_stores.documents.update", s.updateDocument)
		s.route("DELETE", "/v1/vector_stores/{vector_store_id}/documents/{document_id}", "vector_stores.documents.delete", s.deleteDocument)
		s.route("GET", "/v1/vector_stores/{vector_store_id}/documents/{document_id}/content", "vector_stores.documents.content", s.documentContent)
		s.route("POST", "/v1/vector_stores/{vector_store_id}/files", "vector_stores.files.upload", s.uploadFile)
	})
}

func (s *Server) needSearch(rc *reqCtx) bool {
	if s.search == nil {
		writeError(rc.ctx, &APIError{Status: fasthttp.StatusServiceUnavailable, Type: typeUnavailable, Code: "search_unavailable",
			Message: "this server runs without the search service"})
		return false
	}
	return true
}

// searchError maps errors of the search service to API errors.
func (s *Server) searchError(rc *reqCtx, what string, err error) *APIError {
	var ie *search.InputError
	var ee *search.EmbedderError
	switch {
	case errors.As(err, &ie):
		e := &APIError{Status: fasthttp.StatusBadRequest, Type: typeInvalidRequest, Code: ie.Code, Param: ie.Param, Message: ie.Msg}
		if ie.Code == "vector_store_not_found" {
			e.Status, e.Type = fasthttp.StatusNotFound, typeNotFound
		}
		return e
	case errors.As(err, &ee):
		return &APIError{Status: fasthttp.StatusBadGateway, Type: typeServer, Code: "embedder_error", Message: ee.Error()}
	case errors.Is(err, search.ErrClosed):
		return &APIError{Status: fasthttp.StatusServiceUnavailable, Type: typeUnavailable, Code: "shutting_down", Message: err.Error(),
			RetryAfterMs: 1000}
	}
	return s.storeError(rc, what, err)
}

// --- Objects ---------------------------------------------------------------------------------------------

type fileCounts struct {
	InProgress int64 `json:"in_progress"`
	Completed  int64 `json:"completed"`
	Failed     int64 `json:"failed"`
	Cancelled  int64 `json:"cancelled"`
	Total      int64 `json:"total"`
}

type staticChunking struct {
	MaxTokens     int `json:"max_chunk_size_tokens"`
	OverlapTokens int `json:"chunk_overlap_tokens"`
}

type chunkingJSON struct {
	Type   string          `json:"type"`
	Static *staticChunking `json:"static,omitempty"`
}

type embedderJSON struct {
	BaseURL    string `json:"base_url"`
	Model      string `json:"model"`
	Dimensions int    `json:"dimensions,omitempty"`
	APIKeyEnv  string `json:"api_key_env,omitempty"`
}

type vectorStoreJSON struct {
	ID               string            `json:"id"`
	Object           string            `json:"object"`
	CreatedAt        int64             `json:"created_at"`
	Name             string            `json:"name"`
	UsageBytes       int64             `json:"usage_bytes"`
	FileCounts       fileCounts        `json:"file_counts"`
	Status           string            `json:"status"`
	LastActiveAt     *int64            `json:"last_active_at"`
	ExpiresAfter     any               `json:"expires_after"`
	ExpiresAt        *int64            `json:"expires_at"`
	Metadata         map[string]string `json:"metadata"`
	ChunkingStrategy chunkingJSON      `json:"chunking_strategy"`
	// Embedder is Plinth's extension: the store's embedder (null: lexical search only). Its key is only
	// ever named, never shown.
	Embedder    *embedderJSON `json:"embedder"`
	SearchModes []string      `json:"search_modes"`
	ChunkCount  int64         `json:"chunk_count"`
}

func vectorStoreOut(i *search.StoreInfo) vectorStoreJSON {
	v := vectorStoreJSON{ID: i.ID, Object: "vector_store", CreatedAt: i.CreatedAt, Name: i.Name, UsageBytes: i.Usage.Bytes,
		FileCounts: fileCounts{Completed: i.Usage.Documents, Total: i.Usage.Documents}, Status: "completed",
		Metadata: i.Metadata, ChunkCount: i.Usage.Chunks,
		ChunkingStrategy: chunkingJSON{Type: "static", Static: &staticChunking{MaxTokens: i.Chunking.MaxTokens, OverlapTokens: i.Chunking.OverlapTokens}},
		SearchModes:      []string{search.ModeLexical}}
	if v.Metadata == nil {
		v.Metadata = map[string]string{}
	}
	if e := i.Embedder; e != nil {
		v.Embedder = &embedderJSON{BaseURL: e.BaseURL, Model: e.Model, Dimensions: e.Dimensions, APIKeyEnv: e.APIKeyEnv}
		v.SearchModes = append(v.SearchModes, search.ModeVector, search.ModeHybrid)
	}
	return v
}

type documentJSON struct {
	ID               string          `json:"id"`
	Object           string          `json:"object"`
	CreatedAt        int64           `json:"created_at"`
	VectorStoreID    string          `json:"vector_store_id"`
	Filename         string          `json:"filename"`
	UsageBytes       int64           `json:"usage_bytes"`
	Status           string          `json:"status"`
	LastError        any             `json:"last_error"`
	Attributes       json.RawMessage `json:"attributes"`
	ChunkCount       int             `json:"chunk_count"`
	TextBytes        int64           `json:"text_bytes"`
	ChunkingStrategy *chunkingJSON   `json:"chunking_strategy,omitempty"`
}

func documentOut(d *search.DocumentInfo) documentJSON {
	attrs := d.Attributes
	if len(attrs) == 0 {
		attrs = json.RawMessage("{}")
	}
	return documentJSON{ID: d.ID, Object: "vector_store.file", CreatedAt: d.CreatedAt, VectorStoreID: d.StoreID,
		Filename: d.Filename, UsageBytes: d.Bytes, Status: "completed", Attributes: attrs, ChunkCount: d.Chunks, TextBytes: d.TextBytes}
}

type listJSON[T any] struct {
	Object  string  `json:"object"`
	Data    []T     `json:"data"`
	FirstID *string `json:"first_id"`
	LastID  *string `json:"last_id"`
	HasMore bool    `json:"has_more"`
}

func listPage[T any](data []T, id func(T) string, more bool) listJSON[T] {
	l := listJSON[T]{Object: "list", Data: data, HasMore: more}
	if l.Data == nil {
		l.Data = []T{}
	}
	if len(data) > 0 {
		first, last := id(data[0]), id(data[len(data)-1])
		l.FirstID, l.LastID = &first, &last
	}
	return l
}

// listArgs reads limit (1–100, default 20), order (asc or desc, default desc), after and before.
func listArgs(rc *reqCtx) (limit int, desc bool, after, before string, e *APIError) {
	args := rc.ctx.QueryArgs()
	limit, desc = 20, true
	if v := args.Peek("limit"); len(v) > 0 {
		n, err := strconv.Atoi(string(v))
		if err != nil || n < 1 || n > 100 {
			return 0, false, "", "", &APIError{Status: 400, Type: typeInvalidRequest, Code: "invalid_limit", Param: "limit",
				Message: "limit must be an integer from 1 to 100"}
		}
		limit = n
	}
	switch string(args.Peek("order")) {
	case "", "desc":
	case "asc":
		desc = false
	default:
		return 0, false, "", "", &APIError{Status: 400, Type: typeInvalidRequest, Code: "invalid_order", Param: "order",
			Message: "order must be asc or desc"}
	}
	return limit, desc, string(args.Peek("after")), string(args.Peek("before")), nil
}

// --- Vector stores -------------------------------------------------------------------------------------

// chunkingIn reads an OpenAI chunking_strategy: {"type":"auto"} or {"type":"static","static":{...}}.
func chunkingIn(raw json.RawMessage) (*search.Chunking, *APIError) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var c chunkingJSON
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	bad := &APIError{Status: 400, Type: typeInvalidRequest, Code: "invalid_chunking_strategy", Param: "chunking_strategy",
		Message: `chunking_strategy is {"type":"auto"} or {"type":"static","static":{"max_chunk_size_tokens":800,"chunk_overlap_tokens":400}}`}
	if err := dec.Decode(&c); err != nil {
		return nil, bad
	}
	switch c.Type {
	case "auto":
		if c.Static != nil {
			return nil, bad
		}
		return nil, nil
	case "static":
		if c.Static == nil {
			return nil, bad
		}
		return &search.Chunking{MaxTokens: c.Static.MaxTokens, OverlapTokens: c.Static.OverlapTokens}, nil
	}
	return nil, bad
}

func (s *Server) createVectorStore(rc *reqCtx) {
	if !s.needSearch(rc) {
		return
	}
	var req struct {
		Name             string            `json:"name"`
		Metadata         map[string]string `json:"metadata"`
		ChunkingStrategy json.RawMessage   `json:"chunking_strategy"`
		Embedder         json.RawMessage   `json:"embedder"`
		FileIDs          []string          `json:"file_ids"`
		ExpiresAfter     json.RawMessage   `json:"expires_after"`
	}
	if e := decodeBody(rc, &req, true); e != nil {
		writeError(rc.ctx, e)
		return
	}
	if len(req.FileIDs) > 0 {
		writeError(rc.ctx, &APIError{Status: 400, Type: typeInvalidRequest, Code: "unsupported_parameter", Param: "file_ids",
			Message: "Plinth has no files API: add documents with POST /v1/vector_stores/{id}/documents or /files"})
		return
	}
	if len(req.ExpiresAfter) > 0 && string(req.ExpiresAfter) != "null" {
		writeError(rc.ctx, &APIError{Status: 400, Type: typeInvalidRequest, Code: "unsupported_parameter", Param: "expires_after",
			Message: "vector stores do not expire on Plinth"})
		return
	}
	if e := checkMetadata(req.Metadata); e != nil {
		writeError(rc.ctx, e)
		return
	}
	ch, e := chunkingIn(req.ChunkingStrategy)
	if e != nil {
		writeError(rc.ctx, e)
		return
	}
	info, err := s.search.CreateStore(rc.tenantID(), search.StoreSpec{Name: req.Name, Metadata: req.Metadata, Chunking: ch,
		Embedder: req.Embedder}, rc.quota())
	if err != nil {
		writeError(rc.ctx, s.searchError(rc, "vector store", err))
		return
	}
	writeJSON(rc.ctx, fasthttp.StatusOK, vectorStoreOut(info))
}

func (s *Server) listVectorStores(rc *reqCtx) {
	if !s.needSearch(rc) {
		return
	}
	limit, desc, after, before, e := listArgs(rc)
	if e != nil {
		writeError(rc.ctx, e)
		return
	}
	all, err := s.search.ListStores(rc.tenantID())
	if err != nil {
		writeError(rc.ctx, s.searchError(rc, "vector stores", err))
		return
	}
	// Newest first (desc) or oldest first, ties by id; after and before are ids within that order.
	slices.SortFunc(all, func(a, b *search.StoreInfo) int {
		if a.CreatedAt != b.CreatedAt {
			if (a.CreatedAt < b.CreatedAt) != desc {
				return -1
			}
			return 1
		}
		return strings.Compare(a.ID, b.ID)
	})
	lo, hi := 0, len(all)
	for i, v := range all {
		if after != "" && v.ID == after {
			lo = i + 1
		}
		if before != "" && v.ID == before {
			hi = i
		}
	}
	if lo > hi {
		lo = hi
	}
	page := all[lo:hi]
	more := len(page) > limit
	if more {
		page = page[:limit]
	}
	out := make([]vectorStoreJSON, len(page))
	for i, v := range page {
		out[i] = vectorStoreOut(v)
	}
	writeJSON(rc.ctx, fasthttp.StatusOK, listPage(out, func(v vectorStoreJSON) string { return v.ID }, more))
}

func (s *Server) getVectorStore(rc *reqCtx) {
	if !s.needSearch(rc) {
		return
	}
	info, err := s.search.GetStore(rc.tenantID(), rc.param("vector_store_id"))
	if err != nil {
		writeError(rc.ctx, s.searchError(rc, "vector store", err))
		return
	}
	writeJSON(rc.ctx, fasthttp.StatusOK, vectorStoreOut(info))
}

func (s *Server) updateVectorStore(rc *reqCtx) {
	if !s.needSearch(rc) {
		return
	}
	var req struct {
		Name         *string           `json:"name"`
		Metadata     map[string]string `json:"metadata"`
		ExpiresAfter json.RawMessage   `json:"expires_after"`
	}
	if e := decodeBody(rc, &req, false); e != nil {
		writeError(rc.ctx, e)
		return
	}
	if len(req.ExpiresAfter) > 0 && string(req.ExpiresAfter) != "null" {
		writeError(rc.ctx, &APIError{Status: 400, Type: typeInvalidRequest, Code: "unsupported_parameter", Param: "expires_after",
			Message: "vector stores do not expire on Plinth"})
		return
	}
	if e := checkMetadata(req.Metadata); e != nil {
		writeError(rc.ctx, e)
		return
	}
	info, err := s.search.UpdateStore(rc.tenantID(), rc.param("vector_store_id"), req.Name, req.Metadata, rc.quota())
	if err != nil {
		writeError(rc.ctx, s.searchError(rc, "vector store", err))
		return
	}
	writeJSON(rc.ctx, fasthttp.StatusOK, vectorStoreOut(info))
}

func (s *Server) deleteVectorStore(rc *reqCtx) {
	if !s.needSearch(rc) {
		return
	}
	id := rc.param("vector_store_id")
	if err := s.search.DeleteStore(rc.tenantID(), id); err != nil {
		writeError(rc.ctx, s.searchError(rc, "vector store", err))
		return
	}
	writeJSON(rc.ctx, fasthttp.StatusOK, map[string]any{"id": id, "object": "vector_store.deleted", "deleted": true})
}

// --- Documents --------------------------------------------------------------------------------------------

type documentIn struct {
	ID         string          `json:"id"`
	Text       string          `json:"text"`
	Filename   string          `json:"filename"`
	Attributes json.RawMessage `json:"attributes"`
}

func (d documentIn) input() search.DocumentInput {
	return search.DocumentInput{ID: d.ID, Text: d.Text, Filename: d.Filename, Attributes: d.Attributes}
}

// addDocuments serves POST /v1/vector_stores/{id}/documents: {"documents": [{id, text, filename,
// attributes}, ...]} added (or replaced by id) atomically; searchable when the response arrives.
func (s *Server) addDocuments(rc *reqCtx) {
	if !s.needSearch(rc) {
		return
	}
	var req struct {
		Documents []documentIn `json:"documents"`
	}
	if e := decodeBody(rc, &req, false); e != nil {
		writeError(rc.ctx, e)
		return
	}
	in := make([]search.DocumentInput, len(req.Documents))
	for i, d := range req.Documents {
		in[i] = d.input()
	}
	s.putDocuments(rc, in, false)
}

func (s *Server) putDocuments(rc *reqCtx, in []search.DocumentInput, single bool) {
	out, err := s.search.PutDocuments(rc.ctx, rc.tenantID(), rc.param("vector_store_id"), in, rc.quota())
	if err != nil {
		writeError(rc.ctx, s.searchError(rc, "vector store", err))
		return
	}
	if single {
		writeJSON(rc.ctx, fasthttp.StatusOK, documentOut(&out[0]))
		return
	}
	data := make([]documentJSON, len(out))
	chunks := 0
	for i := range out {
		data[i] = documentOut(&out[i])
		chunks += out[i].Chunks
	}
	writeJSON(rc.ctx, fasthttp.StatusOK, map[string]any{
		"object": "vector_store.document_batch", "vector_store_id": rc.param("vector_store_id"), "status": "completed",
		"file_counts": fileCounts{Completed: int64(len(out)), Total: int64(len(out))}, "chunk_count": chunks, "data": data,
	})
}

// replaceDocument serves PUT /v1/vector_stores/{id}/documents/{doc_id}: {text, filename, attributes}.
func (s *Server) replaceDocument(rc *reqCtx) {
	if !s.needSearch(rc) {
		return
	}
	var d documentIn
	if e := decodeBody(rc, &d, false); e != nil {
		writeError(rc.ctx, e)
		return
	}
	id := rc.param("document_id")
	if d.ID != "" && d.ID != id {
		writeError(rc.ctx, &APIError{Status: 400, Type: typeInvalidRequest, Code: "invalid_document_id", Param: "id",
			Message: "the body's id differs from the path's document id"})
		return
	}
	d.ID = id
	s.putDocuments(rc, []search.DocumentInput{d.input()}, true)
}

// updateDocument serves POST /v1/vector_stores/{id}/documents/{doc_id}: {attributes, filename} changed
// without re-indexing the text (OpenAI's "update vector store file attributes").
func (s *Server) updateDocument(rc *reqCtx) {
	if !s.needSearch(rc) {
		return
	}
	var req struct {
		Attributes json.RawMessage `json:"attributes"`
		Filename   *string         `json:"filename"`
	}
	if e := decodeBody(rc, &req, false); e != nil {
		writeError(rc.ctx, e)
		return
	}
	d, err := s.search.UpdateDocument(rc.ctx, rc.tenantID(), rc.param("vector_store_id"), rc.param("document_id"),
		req.Attributes, req.Filename, rc.quota())
	if err != nil {
		writeError(rc.ctx, s.searchError(rc, "document", err))
		return
	}
	writeJSON(rc.ctx, fasthttp.StatusOK, documentOut(d))
}

func (s *Server) deleteDocument(rc *reqCtx) {
	if !s.needSearch(rc) {
		return
	}
	id := rc.param("document_id")
	if err := s.search.DeleteDocument(rc.ctx, rc.tenantID(), rc.param("vector_store_id"), id); err != nil {
		writeError(rc.ctx, s.searchError(rc, "document", err))
		return
	}
	writeJSON(rc.ctx, fasthttp.StatusOK, map[string]any{"id": id, "object": "vector_store.file.deleted", "deleted": true})
}

func (s *Server) getDocument(rc *reqCtx) {
	if !s.needSearch(rc) {
		return
	}
	d, err := s.search.GetDocument(rc.tenantID(), rc.param("vector_store_id"), rc.param("document_id"))
	if err != nil {
		writeError(rc.ctx, s.searchError(rc, "document", err))
		return
	}
	writeJSON(rc.ctx, fasthttp.StatusOK, documentOut(d))
}

// documentContent serves the chunks of a document, in the shape of OpenAI's file content.
func (s *Server) documentContent(rc *reqCtx) {
	if !s.needSearch(rc) {
		return
	}
	tenant, vs, id := rc.tenantID(), rc.param("vector_store_id"), rc.param("document_id")
	d, err := s.search.GetDocument(tenant, vs, id)
	if err != nil {
		writeError(rc.ctx, s.searchError(rc, "document", err))
		return
	}
	chunks, err := s.search.DocumentChunks(tenant, vs, id)
	if err != nil {
		writeError(rc.ctx, s.searchError(rc, "document", err))
		return
	}
	content := make([]map[string]string, len(chunks))
	for i, c := range chunks {
		content[i] = map[string]string{"type": "text", "text": c}
	}
	out := documentOut(d)
	writeJSON(rc.ctx, fasthttp.StatusOK, map[string]any{"file_id": id, "filename": d.Filename, "attributes": out.Attributes,
		"content": content})
}

func (s *Server) listDocuments(rc *reqCtx) {
	if !s.needSearch(rc) {
		return
	}
	limit, desc, after, before, e := listArgs(rc)
	if e != nil {
		writeError(rc.ctx, e)
		return
	}
	// Documents are listed in id order (asc or desc).
	if v := rc.ctx.QueryArgs().Peek("order"); len(v) == 0 {
		desc = false
	}
	docs, more, err := s.search.ListDocuments(rc.tenantID(), rc.param("vector_store_id"), after, before, limit, desc)
	if err != nil {
		writeError(rc.ctx, s.searchError(rc, "vector store", err))
		return
	}
	out := make([]documentJSON, len(docs))
	for i := range docs {
		out[i] = documentOut(&docs[i])
	}
	writeJSON(rc.ctx, fasthttp.StatusOK, listPage(out, func(d documentJSON) string { return d.ID }, more))
}

// uploadFile serves POST /v1/vector_stores/{id}/files: a plain text or markdown document, either as the
// raw body (Content-Type text/plain or text/markdown; ?id=, ?filename=, ?attributes= as JSON) or as
// multipart/form-data with a "file" part (and optional "id" and "attributes" fields), like an OpenAI file
// upload.
func (s *Server) uploadFile(rc *reqCtx) {
	if !s.needSearch(rc) {
		return
	}
	ctx := rc.ctx
	args := ctx.QueryArgs()
	d := search.DocumentInput{ID: string(args.Peek("id")), Filename: string(args.Peek("filename"))}
	if a := args.Peek("attributes"); len(a) > 0 {
		d.Attributes = json.RawMessage(bytes.Clone(a))
	}
	mt, _, _ := mime.ParseMediaType(string(ctx.Request.Header.ContentType()))
	switch {
	case mt == "multipart/form-data":
		form, err := ctx.MultipartForm()
		if err != nil {
			writeError(ctx, errInvalid("invalid_upload", "malformed multipart body: "+err.Error()))
			return
		}
		files := form.File["file"]
		if len(files) != 1 {
			writeError(ctx, &APIError{Status: 400, Type: typeInvalidRequest, Code: "missing_file", Param: "file",
				Message: "the upload needs exactly one \"file\" part"})
			return
		}
		fh := files[0]
		f, err := fh.Open()
		if err != nil {
			writeError(ctx, errInvalid("invalid_upload", "reading the file part: "+err.Error()))
			return
		}
		var buf bytes.Buffer
		_, err = buf.ReadFrom(f)
		f.Close()
		if err != nil {
			writeError(ctx, errInvalid("invalid_upload", "reading the file part: "+err.Error()))
			return
		}
		d.Text = buf.String()
		if d.Filename == "" {
			d.Filename = fh.Filename
		}
		if v := form.Value["id"]; len(v) > 0 {
			d.ID = v[0]
		}
		if v := form.Value["attributes"]; len(v) > 0 {
			d.Attributes = json.RawMessage(v[0])
		}
		if !textFilename(d.Filename) {
			writeError(ctx, &APIError{Status: 415, Type: typeInvalidRequest, Code: "unsupported_file_type", Param: "file",
				Message: "only plain text and markdown files (.txt, .md, .markdown, .text) can be uploaded"})
			return
		}
	case mt == "text/plain" || mt == "text/markdown" || mt == "text/x-markdown":
		d.Text = string(ctx.PostBody())
	default:
		writeError(ctx, &APIError{Status: 415, Type: typeInvalidRequest, Code: "unsupported_media_type",
			Message: "upload text/plain or text/markdown as the body, or multipart/form-data with a \"file\" part"})
		return
	}
	if !utf8.ValidString(d.Text) {
		writeError(ctx, &APIError{Status: 400, Type: typeInvalidRequest, Code: "invalid_encoding", Param: "file",
			Message: "the file is not UTF-8 text"})
		return
	}
	s.putDocuments(rc, []search.DocumentInput{d}, true)
}

func textFilename(name string) bool {
	if name == "" {
		return true
	}
	i := strings.LastIndexByte(name, '.')
	if i < 0 {
		return true
	}
	switch strings.ToLower(name[i:]) {
	case ".txt", ".md", ".markdown", ".text", ".mdx":
		return true
	}
	return false
}

// --- Search ----------------------------------------------------------------------------------------------

type searchRequestJSON struct {
	Query          json.RawMessage `json:"query"`
	MaxNumResults  *int            `json:"max_num_results"`
	Filters        json.RawMessage `json:"filters"`
	RankingOptions *struct {
		Ranker         string   `json:"ranker"`
		ScoreThreshold float64  `json:"score_threshold"`
		Mode           string   `json:"mode"`
		Fusion         string   `json:"fusion"`
		RRFK           *int     `json:"rrf_k"`
		Alpha          *float64 `json:"alpha"`
	} `json:"ranking_options"`
	RewriteQuery bool   `json:"rewrite_query"`
	Page         string `json:"page"`
}

type searchHitJSON struct {
	FileID     string              `json:"file_id"`
	Filename   string              `json:"filename"`
	Score      float64             `json:"score"`
	Attributes json.RawMessage     `json:"attributes"`
	Content    []map[string]string `json:"content"`
	ChunkIndex uint32              `json:"chunk_index"`
}

// searchVectorStore serves POST /v1/vector_stores/{id}/search.
func (s *Server) searchVectorStore(rc *reqCtx) {
	if !s.needSearch(rc) {
		return
	}
	var req searchRequestJSON
	if e := decodeBody(rc, &req, false); e != nil {
		writeError(rc.ctx, e)
		return
	}
	query, e := queryText(req.Query)
	if e != nil {
		writeError(rc.ctx, e)
		return
	}
	if req.RewriteQuery {
		writeError(rc.ctx, &APIError{Status: 400, Type: typeInvalidRequest, Code: "unsupported_parameter", Param: "rewrite_query",
			Message: "query rewriting is not supported"})
		return
	}
	ar := abi.SearchRequest{StoreIDs: []string{rc.param("vector_store_id")}, Query: query, Filters: req.Filters, Alpha: -1}
	if req.MaxNumResults != nil {
		if *req.MaxNumResults < 1 || *req.MaxNumResults > search.MaxResults {
			writeError(rc.ctx, &APIError{Status: 400, Type: typeInvalidRequest, Code: "invalid_max_num_results", Param: "max_num_results",
				Message: "max_num_results must be from 1 to " + strconv.Itoa(search.MaxResults)})
			return
		}
		ar.MaxResults = uint32(*req.MaxNumResults)
	}
	if ro := req.RankingOptions; ro != nil {
		switch ro.Ranker {
		case "", "auto", "default-2024-11-15", "none":
		default:
			writeError(rc.ctx, &APIError{Status: 400, Type: typeInvalidRequest, Code: "invalid_ranker", Param: "ranking_options.ranker",
				Message: "ranker must be auto, default-2024-11-15 or none; choose Plinth's ranking with mode and fusion"})
			return
		}
		ar.ScoreThreshold, ar.Mode, ar.Fusion = ro.ScoreThreshold, ro.Mode, ro.Fusion
		if ro.RRFK != nil {
			if *ro.RRFK < 1 || *ro.RRFK > 10000 {
				writeError(rc.ctx, &APIError{Status: 400, Type: typeInvalidRequest, Code: "invalid_rrf_k", Param: "ranking_options.rrf_k",
					Message: "rrf_k must be from 1 to 10000"})
				return
			}
			ar.RRFK = uint32(*ro.RRFK)
		}
		if ro.Alpha != nil {
			if *ro.Alpha < 0 || *ro.Alpha > 1 {
				writeError(rc.ctx, &APIError{Status: 400, Type: typeInvalidRequest, Code: "invalid_alpha", Param: "ranking_options.alpha",
					Message: "alpha must be from 0 to 1 (the weight of the vector side)"})
				return
			}
			ar.Alpha = *ro.Alpha
		}
	}
	offset := 0
	if req.Page != "" {
		n, err := strconv.Atoi(strings.TrimPrefix(req.Page, "page_"))
		if !strings.HasPrefix(req.Page, "page_") || err != nil || n < 0 {
			writeError(rc.ctx, &APIError{Status: 400, Type: typeInvalidRequest, Code: "invalid_page", Param: "page",
				Message: "page must be a next_page value of an earlier response"})
			return
		}
		offset = n
	}
	res, more, err := s.search.SearchPage(rc.ctx, rc.tenantID(), &ar, offset)
	if err != nil {
		writeError(rc.ctx, s.searchError(rc, "vector store", err))
		return
	}
	data := make([]searchHitJSON, len(res.Hits))
	for i, h := range res.Hits {
		data[i] = searchHitJSON{FileID: h.DocumentID, Filename: h.Filename, Score: h.Score, Attributes: h.Attributes,
			Content: []map[string]string{{"type": "text", "text": h.Text}}, ChunkIndex: h.ChunkIndex}
	}
	var next *string
	if more {
		p := "page_" + strconv.Itoa(offset+len(res.Hits))
		next = &p
	}
	writeJSON(rc.ctx, fasthttp.StatusOK, map[string]any{"object": "vector_store.search_results.page", "search_query": query,
		"data": data, "has_more": more, "next_page": next, "mode": res.Mode})
}

// queryText reads a search query: a string, or an array of strings (joined by newlines).
func queryText(raw json.RawMessage) (string, *APIError) {
	bad := &APIError{Status: 400, Type: typeInvalidRequest, Code: "invalid_query", Param: "query",
		Message: "query must be a non-empty string or array of strings"}
	var q string
	if err := json.Unmarshal(raw, &q); err == nil {
		if strings.TrimSpace(q) == "" {
			return "", bad
		}
		return q, nil
	}
	var qs []string
	if err := json.Unmarshal(raw, &qs); err != nil || len(qs) == 0 {
		return "", bad
	}
	q = strings.Join(qs, "\n")
	if strings.TrimSpace(q) == "" {
		return "", bad
	}
	return q, nil
}
