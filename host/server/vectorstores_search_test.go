package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/plinth-dev/plinth/abi"
	"github.com/plinth-dev/plinth/host/search"
	"github.com/plinth-dev/plinth/host/search/hashembed"
	"github.com/plinth-dev/plinth/host/store"
	"github.com/plinth-dev/plinth/host/tenant"
)

// searchStack is a real Pebble store in a temporary directory and the search service over it, with a
// deterministic embeddings server on 127.0.0.1 (whose URL it returns) as its default embedder; all closed
// when t ends.
func searchStack(t *testing.T) (*store.Store, *search.Service, string) {
	t.Helper()
	dir := t.TempDir()
	st, err := store.OpenDir(filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	emb := httptest.NewServer(&hashembed.Handler{Dims: 32})
	svc, err := search.New(search.Options{Store: st, Dir: filepath.Join(dir, "indexes"), Logger: quiet(),
		DefaultEmbedder: &search.EmbedderConfig{BaseURL: emb.URL + "/v1", Model: "hash-32"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		svc.Close()
		emb.Close()
		st.Close()
	})
	return st, svc, emb.URL
}

// searchServer is a server with a real store, the real search service (bleve indexes in a temporary
// directory), a deterministic embeddings server on 127.0.0.1 as the default embedder, and tenants a and
// b without plugins.
func searchServer(t *testing.T) (*testServer, *search.Service, string) {
	t.Helper()
	st, svc, embURL := searchStack(t)
	ts := startServer(t, Options{Store: st, Search: svc, Retriever: svc})
	snap, err := tenant.NewSnapshot([]*tenant.Tenant{{ID: "a"}, {ID: "b"}},
		[]*tenant.Key{{ID: "ka", Tenant: "a", Hash: tenant.HashKey([]byte(keyA))}, {ID: "kb", Tenant: "b", Hash: tenant.HashKey([]byte(keyB))}})
	if err != nil {
		t.Fatal(err)
	}
	ts.Apply(context.Background(), snap)
	return ts, svc, embURL
}

func decode[T any](t *testing.T, r resp) T {
	t.Helper()
	var v T
	if r.status != 200 {
		t.Fatalf("status %d: %s", r.status, r.body)
	}
	if err := json.Unmarshal([]byte(r.body), &v); err != nil {
		t.Fatalf("%v: %s", err, r.body)
	}
	return v
}

type searchPage struct {
	Object      string `json:"object"`
	SearchQuery string `json:"search_query"`
	Data        []struct {
		FileID     string         `json:"file_id"`
		Filename   string         `json:"filename"`
		Score      float64        `json:"score"`
		Attributes map[string]any `json:"attributes"`
		Content    []struct{ Type, Text string }
	} `json:"data"`
	HasMore  bool    `json:"has_more"`
	NextPage *string `json:"next_page"`
	Mode     string  `json:"mode"`
}

func (p searchPage) ids() []string {
	var out []string
	for _, d := range p.Data {
		out = append(out, d.FileID)
	}
	return out
}

func TestVectorStoresAPI(t *testing.T) {
	ts, _, _ := searchServer(t)
	u := ts.url + "/v1/vector_stores"

	// A lexical-only store (embedder null) and one with the default embedder.
	lex := decode[vectorStoreJSON](t, do(t, "POST", u, keyA, `{"name":"kb","metadata":{"team":"x"},"embedder":null,
		"chunking_strategy":{"type":"static","static":{"max_chunk_size_tokens":200,"chunk_overlap_tokens":50}}}`))
	if lex.Object != "vector_store" || !strings.HasPrefix(lex.ID, "vs_") || lex.Status != "completed" || lex.Embedder != nil ||
		lex.ChunkingStrategy.Static.MaxTokens != 200 || lex.Metadata["team"] != "x" {
		t.Fatalf("create: %+v", lex)
	}
	hyb := decode[vectorStoreJSON](t, do(t, "POST", u, keyA, `{"name":"hybrid"}`))
	if hyb.Embedder == nil || hyb.Embedder.Model != "hash-32" || len(hyb.SearchModes) != 3 || hyb.ChunkingStrategy.Static.MaxTokens != 800 {
		t.Fatalf("create with the default embedder: %+v", hyb)
	}
	list := decode[listJSON[vectorStoreJSON]](t, do(t, "GET", u+"?limit=1&order=asc", keyA, ""))
	if len(list.Data) != 1 || !list.HasMore || list.Object != "list" {
		t.Fatalf("list: %+v", list)
	}
	list = decode[listJSON[vectorStoreJSON]](t, do(t, "GET", u+"?order=asc&after="+list.Data[0].ID, keyA, ""))
	if len(list.Data) != 1 || list.HasMore {
		t.Fatalf("list page 2: %+v", list)
	}
	if l := decode[listJSON[vectorStoreJSON]](t, do(t, "GET", u, keyB, "")); len(l.Data) != 0 {
		t.Fatalf("tenant b lists tenant a's stores: %+v", l)
	}
	upd := decode[vectorStoreJSON](t, do(t, "POST", u+"/"+lex.ID, keyA, `{"name":"kb2"}`))
	if upd.Name != "kb2" || upd.Metadata["team"] != "x" {
		t.Fatalf("update: %+v", upd)
	}

	// Documents: a batch, a raw markdown upload, a multipart upload.
	for _, vs := range []string{lex.ID, hyb.ID} {
		batch := do(t, "POST", u+"/"+vs+"/documents", keyA, `{"documents":[
			{"id":"cats","text":"Cats are small felines that purr.","attributes":{"kind":"pet","year":2020}},
			{"id":"dogs","text":"Dogs are loyal animals that bark.","attributes":{"kind":"pet","year":2018}},
			{"id":"go","text":"Go is a programming language with goroutines.","attributes":{"kind":"code","year":2012},"filename":"go.txt"}]}`)
		if batch.status != 200 || !strings.Contains(batch.body, `"object":"vector_store.document_batch"`) {
			t.Fatalf("batch: %d %s", batch.status, batch.body)
		}
		req, _ := http.NewRequest("POST", u+"/"+vs+"/files?id=notes&filename=notes.md&attributes="+`%7B%22kind%22%3A%22notes%22%7D`,
			strings.NewReader("# Notes\n\nTigers are wild felines.\n"))
		req.Header.Set("Authorization", "Bearer "+keyA)
		req.Header.Set("Content-Type", "text/markdown")
		res, err := http.DefaultClient.Do(req)
		if err != nil || res.StatusCode != 200 {
			t.Fatalf("markdown upload: %v %v", err, res.Status)
		}
		res.Body.Close()
		var body bytes.Buffer
		mw := multipart.NewWriter(&body)
		fw, _ := mw.CreateFormFile("file", "parrots.txt")
		fw.Write([]byte("Parrots can talk and fly."))
		mw.Close()
		req, _ = http.NewRequest("POST", u+"/"+vs+"/files", &body)
		req.Header.Set("Authorization", "Bearer "+keyA)
		req.Header.Set("Content-Type", mw.FormDataContentType())
		res, err = http.DefaultClient.Do(req)
		if err != nil || res.StatusCode != 200 {
			t.Fatalf("multipart upload: %v %v", err, res.Status)
		}
		var up documentJSON
		json.NewDecoder(res.Body).Decode(&up)
		res.Body.Close()
		if up.Filename != "parrots.txt" || !strings.HasPrefix(up.ID, "doc_") || up.Object != "vector_store.file" {
			t.Fatalf("multipart document: %+v", up)
		}
	}
	docs := decode[listJSON[documentJSON]](t, do(t, "GET", u+"/"+lex.ID+"/documents?limit=2", keyA, ""))
	if len(docs.Data) != 2 || !docs.HasMore || docs.Data[0].ID != "cats" {
		t.Fatalf("documents: %+v", docs)
	}
	d := decode[documentJSON](t, do(t, "GET", u+"/"+lex.ID+"/documents/go", keyA, ""))
	if d.Filename != "go.txt" || d.ChunkCount != 1 || string(d.Attributes) != `{"kind":"code","year":2012}` {
		t.Fatalf("document: %+v", d)
	}
	content := do(t, "GET", u+"/"+lex.ID+"/documents/go/content", keyA, "")
	if !strings.Contains(content.body, "goroutines") {
		t.Fatalf("content: %s", content.body)
	}

	// Search, in every mode, with filters and paging.
	p := decode[searchPage](t, do(t, "POST", u+"/"+lex.ID+"/search", keyA, `{"query":"felines","max_num_results":5}`))
	if p.Object != "vector_store.search_results.page" || p.SearchQuery != "felines" || p.Mode != "lexical" || len(p.Data) != 2 ||
		p.Data[0].Content[0].Type != "text" || p.Data[0].Score <= 0 {
		t.Fatalf("lexical search: %+v", p)
	}
	for _, mode := range []string{"lexical", "vector", "hybrid"} {
		p = decode[searchPage](t, do(t, "POST", u+"/"+hyb.ID+"/search", keyA, `{"query":"cats purr","ranking_options":{"mode":"`+mode+`"},
			"filters":{"type":"or","filters":[{"type":"eq","key":"kind","value":"pet"},{"type":"in","key":"kind","value":["notes"]}]}}`))
		if p.Mode != mode || len(p.Data) == 0 || p.Data[0].FileID != "cats" {
			t.Errorf("%s: %+v", mode, p.ids())
		}
		for _, h := range p.Data {
			if k := h.Attributes["kind"]; k != "pet" && k != "notes" {
				t.Errorf("%s: filter let %v through", mode, h.FileID)
			}
		}
	}
	p = decode[searchPage](t, do(t, "POST", u+"/"+hyb.ID+"/search", keyA, `{"query":"animals","ranking_options":{"mode":"hybrid","fusion":"convex","alpha":0.3}}`))
	if p.Mode != "hybrid" || len(p.Data) == 0 {
		t.Fatalf("convex: %+v", p)
	}
	seen := map[string]bool{}
	page := ""
	for i := 0; i < 10; i++ {
		body := `{"query":"cats dogs go tigers parrots","max_num_results":2,"ranking_options":{"mode":"vector"}` + page + `}`
		p = decode[searchPage](t, do(t, "POST", u+"/"+hyb.ID+"/search", keyA, body))
		for _, id := range p.ids() {
			if seen[id] {
				t.Fatalf("page repeats %s", id)
			}
			seen[id] = true
		}
		if !p.HasMore {
			break
		}
		page = `,"page":"` + *p.NextPage + `"`
	}
	if len(seen) != 5 {
		t.Fatalf("paging found %d documents", len(seen))
	}

	// Replace, update attributes, delete.
	if r := do(t, "PUT", u+"/"+hyb.ID+"/documents/cats", keyA, `{"text":"Hamsters run in wheels.","attributes":{"kind":"pet"}}`); r.status != 200 {
		t.Fatalf("replace: %d %s", r.status, r.body)
	}
	if r := do(t, "POST", u+"/"+hyb.ID+"/documents/dogs", keyA, `{"attributes":{"kind":"wild"}}`); r.status != 200 || !strings.Contains(r.body, `"wild"`) {
		t.Fatalf("update attributes: %d %s", r.status, r.body)
	}
	if r := do(t, "DELETE", u+"/"+hyb.ID+"/documents/go", keyA, ""); r.status != 200 || !strings.Contains(r.body, `"deleted":true`) {
		t.Fatalf("delete: %d %s", r.status, r.body)
	}
	for _, mode := range []string{"lexical", "vector"} {
		p = decode[searchPage](t, do(t, "POST", u+"/"+hyb.ID+"/search", keyA, `{"query":"hamsters wheels goroutines","ranking_options":{"mode":"`+mode+`"}}`))
		if len(p.Data) == 0 || p.Data[0].FileID != "cats" || strings.Contains(strings.Join(p.ids(), ","), "go") {
			t.Errorf("%s after replace and delete: %v", mode, p.ids())
		}
	}
	p = decode[searchPage](t, do(t, "POST", u+"/"+hyb.ID+"/search", keyA, `{"query":"dogs","filters":{"type":"eq","key":"kind","value":"pet"},"ranking_options":{"mode":"lexical"}}`))
	if len(p.Data) != 0 {
		t.Errorf("attribute update not seen by filters: %v", p.ids())
	}

	// Errors: clear JSON, right status.
	errCases := []struct {
		method, path, key, body string
		status                  int
		code                    string
	}{
		{"POST", "", keyA, `{"name":`, 400, "invalid_json"},
		{"POST", "", keyA, `{"nmae":"x"}`, 400, "invalid_json"},
		{"POST", "", keyA, `{"chunking_strategy":{"type":"static","static":{"max_chunk_size_tokens":10,"chunk_overlap_tokens":0}}}`, 400, "invalid_chunking_strategy"},
		{"POST", "", keyA, `{"embedder":{"base_url":"http://127.0.0.1:1","model":"m","api_key_env":"PLINTH_OPERATOR_KEY"}}`, 400, "invalid_embedder"},
		{"POST", "", keyA, `{"file_ids":["file-1"]}`, 400, "unsupported_parameter"},
		{"GET", "/vs_00000000000000000000000000000000", keyA, "", 404, "not_found"},
		{"GET", "/nonsense", keyA, "", 404, "not_found"},
		{"GET", "/" + lex.ID, keyB, "", 404, "not_found"},
		{"POST", "/" + lex.ID + "/search", keyB, `{"query":"cats"}`, 404, "vector_store_not_found"},
		{"POST", "/" + lex.ID + "/documents", keyB, `{"documents":[{"id":"x","text":"y"}]}`, 404, "not_found"},
		{"DELETE", "/" + lex.ID, keyB, "", 404, "not_found"},
		{"DELETE", "/" + lex.ID + "/documents/cats", keyB, "", 404, "not_found"},
		{"GET", "/" + lex.ID + "/documents/cats", keyB, "", 404, "not_found"},
		{"POST", "/" + lex.ID + "/search", keyA, `{"query":"cats","ranking_options":{"mode":"vector"}}`, 400, "embedder_required"},
		{"POST", "/" + lex.ID + "/search", keyA, `{"query":""}`, 400, "invalid_query"},
		{"POST", "/" + lex.ID + "/search", keyA, `{"query":"x","max_num_results":0}`, 400, "invalid_max_num_results"},
		{"POST", "/" + lex.ID + "/search", keyA, `{"query":"x","filters":{"type":"gt","key":"year"}}`, 400, "invalid_filters"},
		{"POST", "/" + lex.ID + "/search", keyA, `{"query":"x","ranking_options":{"fusion":"max"}}`, 400, "invalid_fusion"},
		{"POST", "/" + lex.ID + "/search", keyA, `{"query":"x","ranking_options":{"alpha":1.5}}`, 400, "invalid_alpha"},
		{"POST", "/" + lex.ID + "/search", keyA, `{"query":"x","page":"bogus"}`, 400, "invalid_page"},
		{"POST", "/" + lex.ID + "/documents", keyA, `{"documents":[]}`, 400, "missing_documents"},
		{"POST", "/" + lex.ID + "/documents", keyA, `{"documents":[{"id":"a/b","text":"x"}]}`, 400, "invalid_document_id"},
		{"POST", "/" + lex.ID + "/documents", keyA, `{"documents":[{"id":"a","text":"  "}]}`, 400, "missing_text"},
		{"POST", "/" + lex.ID + "/documents", keyA, `{"documents":[{"id":"a","text":"x"},{"id":"a","text":"y"}]}`, 400, "duplicate_document_id"},
		{"POST", "/" + lex.ID + "/documents", keyA, `{"documents":[{"id":"a","text":"x","attributes":{"n":[1]}}]}`, 400, "invalid_attributes"},
		{"POST", "/" + lex.ID + "/files", keyA, `binary`, 415, "unsupported_media_type"},
		{"PUT", "/" + lex.ID, keyA, `{}`, 405, "method_not_allowed"},
	}
	for _, c := range errCases {
		r := do(t, c.method, u+c.path, c.key, c.body)
		if r.status != c.status || r.err.Code != c.code || r.err.Message == "" {
			t.Errorf("%s %s %s: %d %s, want %d %s", c.method, c.path, c.body, r.status, r.body, c.status, c.code)
		}
	}

	// Delete the store.
	if r := do(t, "DELETE", u+"/"+lex.ID, keyA, ""); r.status != 200 || !strings.Contains(r.body, `"object":"vector_store.deleted"`) {
		t.Fatalf("delete store: %d %s", r.status, r.body)
	}
	if r := do(t, "GET", u+"/"+lex.ID, keyA, ""); r.status != 404 {
		t.Fatalf("deleted store: %d", r.status)
	}
}

func TestEmbeddingsAPI(t *testing.T) {
	ts, _, _ := searchServer(t)
	r := do(t, "POST", ts.url+"/v1/embeddings", keyA, `{"input":["hello world","bye"],"model":"hash-32"}`)
	var out struct {
		Object string `json:"object"`
		Data   []struct {
			Object    string    `json:"object"`
			Index     int       `json:"index"`
			Embedding []float32 `json:"embedding"`
		} `json:"data"`
		Model string         `json:"model"`
		Usage map[string]int `json:"usage"`
	}
	if r.status != 200 || json.Unmarshal([]byte(r.body), &out) != nil || out.Object != "list" || len(out.Data) != 2 ||
		out.Data[1].Index != 1 || len(out.Data[0].Embedding) != 32 || out.Model != "hash-32" || out.Usage["total_tokens"] == 0 {
		t.Fatalf("embeddings: %d %s", r.status, r.body)
	}
	r = do(t, "POST", ts.url+"/v1/embeddings", keyA, `{"input":"x","encoding_format":"base64"}`)
	if r.status != 200 || !strings.Contains(r.body, `"embedding":"`) {
		t.Fatalf("base64: %d %s", r.status, r.body)
	}
	if r = do(t, "POST", ts.url+"/v1/embeddings", keyA, `{"input":[]}`); r.status != 400 || r.err.Code != "invalid_input" {
		t.Fatalf("empty input: %d %s", r.status, r.body)
	}
}

func TestSearchHostCall(t *testing.T) {
	ts, svc, _ := searchServer(t)
	u := ts.url + "/v1/vector_stores"
	vs := decode[vectorStoreJSON](t, do(t, "POST", u, keyA, `{"embedder":null}`))
	var docs []string
	for i := 0; i < 20; i++ {
		docs = append(docs, fmt.Sprintf(`{"id":"d%d","text":"apples and oranges %s","attributes":{"i":%d}}`, i, strings.Repeat("pear ", 200), i))
	}
	if r := do(t, "POST", u+"/"+vs.ID+"/documents", keyA, `{"documents":[`+strings.Join(docs, ",")+`]}`); r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	call := func(tenantID string, req abi.SearchRequest, buf []byte) (int32, []byte) {
		hc := &hostCall{s: ts.Server, plugin: &pluginRT{tenant: tenantID, name: "p", label: tenantID + "/p@1"}, ctx: context.Background(),
			requestID: "req_test"}
		n := hc.Search(req.AppendTo(nil), buf)
		return n, buf
	}
	req := abi.SearchRequest{StoreIDs: []string{vs.ID}, Query: "apples", MaxResults: 20, Alpha: -1}
	// Too small a buffer: the length comes back, and the retry gets the same result.
	n, _ := call("a", req, make([]byte, 16))
	if n <= 16 {
		t.Fatalf("status %d", n)
	}
	n, buf := call("a", req, make([]byte, n))
	var res abi.SearchResult
	if err := res.Decode(buf[:n]); err != nil || len(res.Hits) != 20 || res.Error != "" || res.Mode != "lexical" || res.Hits[0].StoreID != vs.ID {
		t.Fatalf("search: %v %+v", err, res)
	}
	// Tenant b's plugin cannot search tenant a's store, whatever id it passes.
	n, buf = call("b", req, make([]byte, 64<<10))
	if err := res.Decode(buf[:n]); err != nil || len(res.Hits) != 0 || !strings.Contains(res.Error, "not found") {
		t.Fatalf("cross-tenant search: %+v", res)
	}
	// Errors a plugin can fix are in the result.
	bad := req
	bad.Filters = []byte(`{"type":"nope"}`)
	n, buf = call("a", bad, make([]byte, 64<<10))
	if err := res.Decode(buf[:n]); err != nil || !strings.Contains(res.Error, "unknown type") {
		t.Fatalf("bad filter: %+v", res)
	}
	if n, _ := call("a", abi.SearchRequest{}, nil); n != int32(abi.StatusInvalidArgument) && n <= 0 {
		t.Fatalf("empty request: %d", n)
	}
	if n := (&hostCall{s: ts.Server, plugin: &pluginRT{tenant: "a"}}).Search([]byte{0xff}, nil); n != int32(abi.StatusInvalidArgument) {
		t.Fatalf("malformed request: %d", n)
	}
	_ = svc
}
