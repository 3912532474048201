package search

import (
	"context"
	"math"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/host/search/hashembed"
)

func TestChunkingSplit(t *testing.T) {
	var sb strings.Builder
	for i := 0; i < 600; i++ {
		sb.WriteString("word")
		sb.WriteString(strings.Repeat("x", i%7))
		if i%13 == 12 {
			sb.WriteString(".")
		}
		sb.WriteString(" \n"[i%2 : i%2+1])
	}
	text := sb.String()
	c := Chunking{MaxTokens: 100, OverlapTokens: 30}
	chunks := c.Split(text)
	if len(chunks) < 5 {
		t.Fatalf("%d chunks", len(chunks))
	}
	for i, ch := range chunks {
		if n := EstimateTokens(ch); n > c.MaxTokens {
			t.Errorf("chunk %d has %d tokens", i, n)
		}
		if !strings.Contains(text, ch) {
			t.Errorf("chunk %d is not a span of the text", i)
		}
	}
	// Every word is in some chunk, and consecutive chunks overlap by at most OverlapTokens.
	all := strings.Join(chunks, " ")
	for _, w := range strings.Fields(text) {
		if !strings.Contains(all, w) {
			t.Fatalf("word %q lost", w)
		}
	}
	if !strings.HasSuffix(text, chunks[len(chunks)-1]+" ") && !strings.HasSuffix(text, chunks[len(chunks)-1]+"\n") {
		t.Error("the last chunk does not reach the end")
	}
	// Short texts are one chunk; empty ones none.
	if got := c.Split("  hello world  "); !slices.Equal(got, []string{"hello world"}) {
		t.Errorf("short: %q", got)
	}
	if got := c.Split(" \n "); got != nil {
		t.Errorf("empty: %q", got)
	}
	for _, bad := range []Chunking{{MaxTokens: 50}, {MaxTokens: 5000}, {MaxTokens: 200, OverlapTokens: 101}, {MaxTokens: 200, OverlapTokens: -1}} {
		if bad.Validate() == nil {
			t.Errorf("%+v validated", bad)
		}
	}
	if d := (Chunking{}).WithDefaults(); d != (Chunking{MaxTokens: 800, OverlapTokens: 400}) || d.Validate() != nil {
		t.Errorf("defaults %+v", d)
	}
}

func TestFilters(t *testing.T) {
	a := Attributes{"lang": "en", "year": 2021.0, "draft": false, "tag": "b"}
	cases := []struct {
		f    string
		want bool
	}{
		{`{"type":"eq","key":"lang","value":"en"}`, true},
		{`{"type":"eq","key":"lang","value":"de"}`, false},
		{`{"type":"ne","key":"lang","value":"de"}`, true},
		{`{"type":"ne","key":"missing","value":"x"}`, true},
		{`{"type":"eq","key":"missing","value":"x"}`, false},
		{`{"type":"eq","key":"year","value":"2021"}`, false}, // types differ
		{`{"type":"gt","key":"year","value":2020}`, true},
		{`{"type":"gte","key":"year","value":2021}`, true},
		{`{"type":"lt","key":"year","value":2021}`, false},
		{`{"type":"lte","key":"year","value":2021}`, true},
		{`{"type":"lt","key":"tag","value":"c"}`, true},
		{`{"type":"gt","key":"lang","value":5}`, false},
		{`{"type":"eq","key":"draft","value":false}`, true},
		{`{"type":"in","key":"tag","value":["a","b"]}`, true},
		{`{"type":"nin","key":"tag","value":["a","b"]}`, false},
		{`{"type":"nin","key":"missing","value":["a"]}`, true},
		{`{"type":"and","filters":[{"type":"eq","key":"lang","value":"en"},{"type":"gte","key":"year","value":2022}]}`, false},
		{`{"type":"or","filters":[{"type":"eq","key":"lang","value":"de"},{"type":"gte","key":"year","value":2021}]}`, true},
		{`{"type":"or","filters":[{"type":"and","filters":[{"type":"eq","key":"tag","value":"b"}]},{"type":"eq","key":"x","value":1}]}`, true},
	}
	for _, c := range cases {
		f, err := ParseFilter([]byte(c.f))
		if err != nil {
			t.Fatalf("%s: %v", c.f, err)
		}
		if got := f.Match(a); got != c.want {
			t.Errorf("%s: %v, want %v", c.f, got, c.want)
		}
	}
	for _, bad := range []string{`{"type":"eq","key":"a"}`, `{"type":"like","key":"a","value":1}`, `{"type":"and","filters":[]}`,
		`{"type":"eq","value":1}`, `{"type":"in","key":"a","value":1}`, `{"type":"eq","key":"a","value":{"x":1}}`,
		`{"type":"gt","key":"a","value":true}`, `{"type":"eq","key":"a","value":1,"extra":2}`, `[1]`} {
		if _, err := ParseFilter([]byte(bad)); err == nil {
			t.Errorf("%s: accepted", bad)
		}
	}
	if f, err := ParseFilter(nil); f != nil || err != nil || !f.Match(nil) {
		t.Error("empty filter")
	}
	if _, err := ParseAttributes([]byte(`{"a":{"b":1}}`)); err == nil {
		t.Error("nested attribute accepted")
	}
}

func TestFusion(t *testing.T) {
	k := func(s string) hitKey { return hitKey{store: "s", chunk: s} }
	lex := []ranked{{k("a"), 10}, {k("b"), 8}, {k("c"), 2}}
	vec := []ranked{{k("c"), 0.9}, {k("a"), 0.8}, {k("d"), 0.1}}
	rrf := fuseRRF(60, lex, vec)
	keys := func(rs []ranked) (out []string) {
		for _, r := range rs {
			out = append(out, r.key.chunk)
		}
		return out
	}
	// a: 1/61 + 1/62; c: 1/63 + 1/61; b: 1/62; d: 1/63.
	if got := keys(rrf); !slices.Equal(got, []string{"a", "c", "b", "d"}) {
		t.Fatalf("rrf order %v", got)
	}
	if want := 1.0/61 + 1.0/62; math.Abs(rrf[0].score-want) > 1e-12 {
		t.Errorf("rrf score %v, want %v", rrf[0].score, want)
	}
	// Convex, alpha 0.5: lex normalised a=1, b=0.75, c=0; vec c=1, a=0.875, d=0.
	cv := fuseConvex(0.5, lex, vec)
	if got := keys(cv); !slices.Equal(got, []string{"a", "c", "b", "d"}) {
		t.Fatalf("convex order %v", got)
	}
	if want := 0.5*1 + 0.5*0.875; math.Abs(cv[0].score-want) > 1e-12 {
		t.Errorf("convex score %v, want %v", cv[0].score, want)
	}
	if got := keys(fuseConvex(1, lex, vec)); got[0] != "c" {
		t.Errorf("alpha 1 should follow the vector side: %v", got)
	}
	if got := keys(fuseConvex(0, lex, vec)); got[0] != "a" || got[1] != "b" {
		t.Errorf("alpha 0 should follow the lexical side: %v", got)
	}
}

func TestHTTPEmbedder(t *testing.T) {
	var auth atomic.Value
	h := &hashembed.Handler{Dims: 16}
	failures := 2
	h.Fail = func(n int64) int {
		if n <= int64(failures) {
			return []int{503, 429}[n%2]
		}
		return 0
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auth.Store(r.Header.Get("Authorization"))
		h.ServeHTTP(w, r)
	}))
	defer srv.Close()
	t.Setenv("PLINTH_EMBED_KEY_TEST", "secret-1")
	e, err := NewHTTPEmbedder(EmbedderConfig{BaseURL: srv.URL + "/v1", Model: "m", APIKeyEnv: "PLINTH_EMBED_KEY_TEST", BatchSize: 3}, nil)
	if err != nil {
		t.Fatal(err)
	}
	texts := []string{"a", "b", "c", "d", "e", "f", "g"}
	vecs, err := e.Embed(context.Background(), texts)
	if err != nil {
		t.Fatal(err)
	}
	if len(vecs) != 7 || !slices.Equal(vecs[4], hashembed.Embed("e", 16)) {
		t.Fatalf("vectors out of order or missing")
	}
	// 2 failures retried, then 3 batches.
	if got := h.Requests.Load(); got != 5 {
		t.Errorf("%d requests, want 5", got)
	}
	if auth.Load() != "Bearer secret-1" {
		t.Errorf("authorization %q", auth.Load())
	}
	// A permanent failure is reported with the status, without retries; a 4xx is not retried.
	h.Requests.Store(0)
	h.Fail = func(int64) int { return 400 }
	_, err = e.Embed(context.Background(), texts[:1])
	var ee *EmbedderError
	if !errorsAs(err, &ee) || ee.Status != 400 || h.Requests.Load() != 1 {
		t.Fatalf("4xx: %v after %d requests", err, h.Requests.Load())
	}
	// Timeouts are per request and retried; the caller's context bounds everything.
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(300 * time.Millisecond)
	}))
	defer slow.Close()
	e2, _ := NewHTTPEmbedder(EmbedderConfig{BaseURL: slow.URL, Model: "m", Timeout: 0.05, Retries: 1}, nil)
	start := time.Now()
	if _, err := e2.Embed(context.Background(), texts[:1]); err == nil || time.Since(start) > 2*time.Second {
		t.Fatalf("timeout: %v after %v", err, time.Since(start))
	}
	if AllowedKeyEnv("PLINTH_OPERATOR_KEY") || !AllowedKeyEnv("PLINTH_EMBED_KEY_OPENAI") {
		t.Error("AllowedKeyEnv")
	}
}
