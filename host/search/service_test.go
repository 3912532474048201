package search

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/abi"
	"github.com/plinth-dev/plinth/host/search/hashembed"
	"github.com/plinth-dev/plinth/host/store"
)

// embedServer serves deterministic embeddings on 127.0.0.1.
func embedServer(t testing.TB) (*httptest.Server, *hashembed.Handler) {
	h := &hashembed.Handler{Dims: 64}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv, h
}

func docIDs(res *abi.SearchResult) []string {
	var out []string
	for _, h := range res.Hits {
		out = append(out, h.DocumentID)
	}
	return out
}

var corpus = []DocumentInput{
	{ID: "cats", Text: "Cats are small domestic felines. A cat purrs and sleeps most of the day.", Attributes: []byte(`{"kind":"pet","year":2020}`)},
	{ID: "dogs", Text: "Dogs are loyal domestic animals. A dog barks and fetches sticks.", Attributes: []byte(`{"kind":"pet","year":2018}`)},
	{ID: "tigers", Text: "Tigers are large wild felines living in Asian forests.", Attributes: []byte(`{"kind":"wild","year":2021}`)},
	{ID: "rust", Text: "Rust is a systems programming language focused on memory safety.", Attributes: []byte(`{"kind":"code","year":2015}`)},
	{ID: "go", Text: "Go is a programming language with garbage collection and goroutines.", Attributes: []byte(`{"kind":"code","year":2012}`)},
}

func search1(t testing.TB, svc *Service, tenant, vs string, req abi.SearchRequest) *abi.SearchResult {
	t.Helper()
	req.StoreIDs = []string{vs}
	if req.Alpha == 0 {
		req.Alpha = -1
	}
	res, err := svc.Search(context.Background(), tenant, &req)
	if err != nil {
		t.Fatalf("search %+v: %v", req, err)
	}
	return res
}

func TestServiceSearchModes(t *testing.T) {
	srv, _ := embedServer(t)
	svc := newTestService(t, Options{})
	ctx := context.Background()
	vs, err := svc.CreateStore("a", StoreSpec{Name: "animals", Embedder: []byte(`{"base_url":"` + srv.URL + `","model":"hash"}`)}, store.Quota{})
	if err != nil {
		t.Fatal(err)
	}
	lex, err := svc.CreateStore("a", StoreSpec{Embedder: []byte("null")}, store.Quota{})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{vs.ID, lex.ID} {
		if _, err := svc.PutDocuments(ctx, "a", id, corpus, store.Quota{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, mode := range []string{ModeLexical, ModeVector, ModeHybrid} {
		res := search1(t, svc, "a", vs.ID, abi.SearchRequest{Query: "felines that purr", Mode: mode, MaxResults: 3})
		if res.Mode != mode || len(res.Hits) == 0 || res.Hits[0].DocumentID != "cats" {
			t.Errorf("%s: %v (%s)", mode, docIDs(res), res.Mode)
		}
		if string(res.Hits[0].Attributes) != `{"kind":"pet","year":2020}` || res.Hits[0].Text != corpus[0].Text {
			t.Errorf("%s: hit %+v", mode, res.Hits[0])
		}
	}
	// Default mode: hybrid with an embedder, lexical without.
	if res := search1(t, svc, "a", vs.ID, abi.SearchRequest{Query: "cat"}); res.Mode != ModeHybrid {
		t.Errorf("default mode %s", res.Mode)
	}
	if res := search1(t, svc, "a", lex.ID, abi.SearchRequest{Query: "cat"}); res.Mode != ModeLexical {
		t.Errorf("default mode without embedder %s", res.Mode)
	}
	_, err = svc.Search(ctx, "a", &abi.SearchRequest{StoreIDs: []string{lex.ID}, Query: "cat", Mode: ModeVector})
	var ie *InputError
	if !errors.As(err, &ie) || ie.Code != "embedder_required" {
		t.Errorf("vector without embedder: %v", err)
	}
	// Convex fusion with alpha 0 is the lexical order; filters apply to every mode.
	res := search1(t, svc, "a", vs.ID, abi.SearchRequest{Query: "domestic felines", Mode: ModeHybrid, Fusion: FusionConvex})
	if len(res.Hits) < 2 {
		t.Fatalf("convex: %v", docIDs(res))
	}
	f := []byte(`{"type":"and","filters":[{"type":"eq","key":"kind","value":"pet"},{"type":"lt","key":"year","value":2020}]}`)
	for _, mode := range []string{ModeLexical, ModeVector, ModeHybrid} {
		res := search1(t, svc, "a", vs.ID, abi.SearchRequest{Query: "domestic felines", Mode: mode, Filters: f})
		if !slices.Equal(docIDs(res), []string{"dogs"}) {
			t.Errorf("%s filtered: %v", mode, docIDs(res))
		}
	}
	// Score threshold.
	res = search1(t, svc, "a", vs.ID, abi.SearchRequest{Query: "programming language", Mode: ModeVector, ScoreThreshold: 0.2})
	for _, h := range res.Hits {
		if h.Score < 0.2 {
			t.Errorf("hit below the threshold: %v", h.Score)
		}
	}
	// Multi-store search.
	res, err = svc.Search(ctx, "a", &abi.SearchRequest{StoreIDs: []string{vs.ID, lex.ID}, Query: "goroutines", Mode: ModeLexical})
	if err != nil || len(res.Hits) != 2 || res.Hits[0].StoreID == res.Hits[1].StoreID {
		t.Errorf("two stores: %+v %v", res, err)
	}

	// Tenant b cannot reach tenant a's stores.
	_, err = svc.Search(ctx, "b", &abi.SearchRequest{StoreIDs: []string{vs.ID}, Query: "cat"})
	if !errors.As(err, &ie) || ie.Code != "vector_store_not_found" {
		t.Errorf("tenant b searched tenant a's store: %v", err)
	}
	if _, err := svc.PutDocuments(ctx, "b", vs.ID, corpus[:1], store.Quota{}); !errors.Is(err, ErrNotFound) {
		t.Errorf("tenant b wrote to tenant a's store: %v", err)
	}
	if err := svc.DeleteDocument(ctx, "b", vs.ID, "cats"); !errors.Is(err, ErrNotFound) {
		t.Errorf("tenant b deleted from tenant a's store: %v", err)
	}

	// Updates and deletes reach both indexes.
	if _, err := svc.PutDocuments(ctx, "a", vs.ID, []DocumentInput{{ID: "cats", Text: "Parrots talk and fly."}}, store.Quota{}); err != nil {
		t.Fatal(err)
	}
	if err := svc.DeleteDocument(ctx, "a", vs.ID, "tigers"); err != nil {
		t.Fatal(err)
	}
	if err := svc.DeleteDocument(ctx, "a", vs.ID, "tigers"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second delete: %v", err)
	}
	for _, mode := range []string{ModeLexical, ModeVector} {
		res := search1(t, svc, "a", vs.ID, abi.SearchRequest{Query: "felines purr tigers", Mode: mode, MaxResults: 50})
		if slices.Contains(docIDs(res), "tigers") || (mode == ModeLexical && slices.Contains(docIDs(res), "cats")) {
			t.Errorf("%s after update/delete: %v", mode, docIDs(res))
		}
		res = search1(t, svc, "a", vs.ID, abi.SearchRequest{Query: "parrots talk", Mode: mode, MaxResults: 1})
		if !slices.Equal(docIDs(res), []string{"cats"}) {
			t.Errorf("%s: the replaced text is not found: %v", mode, docIDs(res))
		}
	}
	// Attribute updates apply to filters at once.
	if _, err := svc.UpdateDocument(ctx, "a", vs.ID, "dogs", []byte(`{"kind":"wild"}`), nil, store.Quota{}); err != nil {
		t.Fatal(err)
	}
	res = search1(t, svc, "a", vs.ID, abi.SearchRequest{Query: "dogs", Mode: ModeLexical, Filters: []byte(`{"type":"eq","key":"kind","value":"pet"}`)})
	if len(res.Hits) != 0 {
		t.Errorf("filter after attribute update: %v", docIDs(res))
	}
	// Bad requests say what is wrong.
	for _, req := range []abi.SearchRequest{{Query: ""}, {Query: "x", MaxResults: 51}, {Query: "x", Mode: "semantic"},
		{Query: "x", Fusion: "max"}, {Query: "x", Alpha: 2}, {Query: "x", Filters: []byte(`{"type":"eq"}`)}} {
		req.StoreIDs = []string{vs.ID}
		if _, err := svc.Search(ctx, "a", &req); !errors.As(err, &ie) {
			t.Errorf("%+v: %v", req, err)
		}
	}
	// Deleting the store removes its directory; its id is then unknown.
	if err := svc.DeleteStore("a", vs.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(svc.storeDir("a", vs.ID)); !os.IsNotExist(err) {
		t.Errorf("index directory left: %v", err)
	}
	if _, err := svc.GetStore("a", vs.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("deleted store: %v", err)
	}
}

func TestPaging(t *testing.T) {
	svc := newTestService(t, Options{})
	vs, _ := svc.CreateStore("a", StoreSpec{}, store.Quota{})
	var docs []DocumentInput
	for i := 0; i < 30; i++ {
		docs = append(docs, DocumentInput{ID: fmt.Sprintf("d%02d", i), Text: fmt.Sprintf("apple %s banana", slices.Repeat([]string{"apple "}, i%5))})
	}
	if _, err := svc.PutDocuments(context.Background(), "a", vs.ID, docs, store.Quota{}); err != nil {
		t.Fatal(err)
	}
	var all []string
	for off := 0; ; off += 7 {
		res, more, err := svc.SearchPage(context.Background(), "a", &abi.SearchRequest{StoreIDs: []string{vs.ID}, Query: "apple", MaxResults: 7}, off)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, docIDs(res)...)
		if !more {
			break
		}
	}
	slices.Sort(all)
	if len(slices.Compact(all)) != 30 {
		t.Fatalf("pages gave %d distinct documents", len(all))
	}
}

// TestReplay commits changes to the store without applying them to the indexes (what a crash between the
// two leaves) and checks that reopening applies them: replaced, deleted and new documents, in both
// indexes. Then it loses the index directory altogether and checks the rebuild.
func TestReplay(t *testing.T) {
	srv, _ := embedServer(t)
	dir := t.TempDir()
	st, err := store.OpenDir(filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	open := func() *Service {
		svc, err := New(Options{Store: st, Dir: filepath.Join(dir, "indexes"), Logger: quiet()})
		if err != nil {
			t.Fatal(err)
		}
		return svc
	}
	ctx := context.Background()
	svc := open()
	vs, err := svc.CreateStore("a", StoreSpec{Embedder: []byte(`{"base_url":"` + srv.URL + `","model":"hash"}`),
		Chunking: &Chunking{MaxTokens: 100, OverlapTokens: 0}}, store.Quota{})
	if err != nil {
		t.Fatal(err)
	}
	long := "zebra " + string(slices.Repeat([]byte("stripes savanna "), 80))
	if _, err := svc.PutDocuments(ctx, "a", vs.ID, append(slices.Clone(corpus), DocumentInput{ID: "zebra", Text: long}), store.Quota{}); err != nil {
		t.Fatal(err)
	}
	if d, _ := svc.GetDocument("a", vs.ID, "zebra"); d.Chunks < 3 {
		t.Fatalf("zebra has %d chunks", d.Chunks)
	}
	if err := svc.Close(); err != nil {
		t.Fatal(err)
	}
	// Behind the indexes' back: replace zebra by one chunk, delete go, add kiwi.
	vec := func(s string) []float32 { return hashembed.Embed(s, 64) }
	_, err = st.WriteDocuments("a", vs.ID, []store.DocWrite{
		{Doc: &store.Document{ID: "zebra"}, Chunks: []store.Chunk{{Text: "okapi forest", Tokens: 2, Vector: vec("okapi forest")}}, Seq: 1 << 40},
		{Doc: &store.Document{ID: "go"}, Delete: true, Seq: 1<<40 + 1},
		{Doc: &store.Document{ID: "kiwi"}, Chunks: []store.Chunk{{Text: "kiwi birds cannot fly", Tokens: 4, Vector: vec("kiwi birds cannot fly")}}, Seq: 1<<40 + 2},
	}, store.Quota{})
	if err != nil {
		t.Fatal(err)
	}
	check := func(svc *Service, when string) {
		for _, mode := range []string{ModeLexical, ModeVector} {
			res := search1(t, svc, "a", vs.ID, abi.SearchRequest{Query: "zebra stripes savanna okapi", Mode: mode, MaxResults: 50})
			for _, h := range res.Hits {
				if h.DocumentID == "zebra" && h.ChunkIndex > 0 {
					t.Errorf("%s %s: stale chunk %d of zebra", when, mode, h.ChunkIndex)
				}
			}
			if ids := docIDs(search1(t, svc, "a", vs.ID, abi.SearchRequest{Query: "okapi forest", Mode: mode, MaxResults: 1})); !slices.Equal(ids, []string{"zebra"}) {
				t.Errorf("%s %s: okapi: %v", when, mode, ids)
			}
			if ids := docIDs(search1(t, svc, "a", vs.ID, abi.SearchRequest{Query: "kiwi birds", Mode: mode, MaxResults: 1})); !slices.Equal(ids, []string{"kiwi"}) {
				t.Errorf("%s %s: kiwi: %v", when, mode, ids)
			}
			if ids := docIDs(search1(t, svc, "a", vs.ID, abi.SearchRequest{Query: "goroutines garbage collection", Mode: mode, MaxResults: 50})); slices.Contains(ids, "go") {
				t.Errorf("%s %s: deleted document found: %v", when, mode, ids)
			}
		}
	}
	svc = open()
	check(svc, "after replay")
	// The next sequence numbers continue after the replayed ones.
	if _, err := svc.PutDocuments(ctx, "a", vs.ID, []DocumentInput{{ID: "emu", Text: "emus run fast"}}, store.Quota{}); err != nil {
		t.Fatal(err)
	}
	if err := svc.Close(); err != nil {
		t.Fatal(err)
	}
	// Lose every index file: the store rebuilds them.
	if err := os.RemoveAll(filepath.Join(dir, "indexes", "a", vs.ID)); err != nil {
		t.Fatal(err)
	}
	svc = open()
	defer svc.Close()
	check(svc, "after rebuild")
	if ids := docIDs(search1(t, svc, "a", vs.ID, abi.SearchRequest{Query: "emus", Mode: ModeVector, MaxResults: 1})); !slices.Equal(ids, []string{"emu"}) {
		t.Errorf("emu after rebuild: %v", ids)
	}
	// An index directory of a store that no longer exists is removed at start.
	orphan := filepath.Join(dir, "indexes", "a", store.NewVSID())
	os.MkdirAll(orphan, 0o755)
	svc.Close()
	svc = open()
	if _, err := os.Stat(orphan); !os.IsNotExist(err) {
		t.Errorf("orphan index kept: %v", err)
	}
}

// TestConcurrentSearchDuringWrites runs searches in every mode while documents are added, replaced and
// deleted (run with -race).
func TestConcurrentSearchDuringWrites(t *testing.T) {
	srv, _ := embedServer(t)
	svc := newTestService(t, Options{SnapshotEvery: 50, SnapshotInterval: time.Millisecond})
	vs, err := svc.CreateStore("a", StoreSpec{Embedder: []byte(`{"base_url":"` + srv.URL + `","model":"hash"}`)}, store.Quota{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	words := []string{"alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := 0; w < 3; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			r := rand.New(rand.NewSource(int64(w)))
			for i := 0; i < 40; i++ {
				var docs []DocumentInput
				for j := 0; j < 5; j++ {
					docs = append(docs, DocumentInput{ID: fmt.Sprintf("d%d", r.Intn(60)), Text: words[r.Intn(8)] + " " + words[r.Intn(8)],
						Attributes: []byte(fmt.Sprintf(`{"n":%d}`, r.Intn(3)))})
				}
				slices.SortFunc(docs, func(a, b DocumentInput) int { return cmpString(a.ID, b.ID) })
				docs = slices.CompactFunc(docs, func(a, b DocumentInput) bool { return a.ID == b.ID })
				if _, err := svc.PutDocuments(ctx, "a", vs.ID, docs, store.Quota{}); err != nil {
					t.Error(err)
					return
				}
				if i%4 == 0 {
					svc.DeleteDocument(ctx, "a", vs.ID, fmt.Sprintf("d%d", r.Intn(60)))
				}
			}
		}(w)
	}
	for r := 0; r < 2; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				for _, mode := range []string{ModeLexical, ModeVector, ModeHybrid} {
					_, err := svc.Search(ctx, "a", &abi.SearchRequest{StoreIDs: []string{vs.ID}, Query: "alpha gamma", Mode: mode,
						Alpha: -1, Filters: []byte(`{"type":"ne","key":"n","value":1}`)})
					if err != nil {
						t.Error(err)
						return
					}
				}
			}
		}()
	}
	time.Sleep(10 * time.Millisecond)
	go func() {
		defer close(stop)
		time.Sleep(2 * time.Second)
	}()
	wg.Wait()
	// The indexes agree with the store: every document's chunks, nothing else.
	si, release, err := svc.acquire("a", vs.ID)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	n := 0
	st := svc.st
	st.ScanDocuments("a", vs.ID, func(d *store.Document) bool { n += d.Chunks; return true })
	if got := si.vec.Len(); got != n {
		t.Errorf("vector index has %d chunks, the store %d", got, n)
	}
	r, _ := si.lex.adv.Reader()
	if c, _ := r.DocCount(); int(c) != n {
		t.Errorf("bleve has %d chunks, the store %d", c, n)
	}
	r.Close()
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
