package server

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/abi"
	"github.com/plinth-dev/plinth/abi/gcra"
	"github.com/plinth-dev/plinth/host/llm"
	"github.com/plinth-dev/plinth/host/llm/llmtest"
	"github.com/plinth-dev/plinth/host/search"
	"github.com/plinth-dev/plinth/host/store"
	"github.com/plinth-dev/plinth/host/tenant"
)

// fakeRetriever is the search service of chat tests: fixed chunks per (tenant, vector store).
type fakeRetriever struct {
	mu     sync.Mutex
	stores map[string][]abi.SearchHit // "tenant/store id" → chunks, best first
	calls  []abi.SearchRequest
}

func (f *fakeRetriever) Search(_ context.Context, tenantID string, req *abi.SearchRequest) (*abi.SearchResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, *req)
	if len(req.Filters) > 0 && !json.Valid(req.Filters) {
		return &abi.SearchResult{Error: "filters: not JSON"}, nil
	}
	if strings.Contains(string(req.Filters), `"type":"bogus"`) {
		return nil, &search.InputError{Code: "invalid_filter", Param: "filters", Msg: "unknown filter type bogus"}
	}
	var hits []abi.SearchHit
	for _, id := range req.StoreIDs {
		h, ok := f.stores[tenantID+"/"+id]
		if !ok {
			return nil, fmt.Errorf("vector store %s: %w", id, store.ErrNotFound)
		}
		hits = append(hits, h...)
	}
	if n := int(req.MaxResults); n > 0 && len(hits) > n {
		hits = hits[:n]
	}
	return &abi.SearchResult{Hits: hits, Mode: "lexical"}, nil
}

var catChunks = []abi.SearchHit{
	{StoreID: "vs_pets", DocumentID: "file-cats", Filename: "cats.md", Score: 0.92, Attributes: []byte(`{"lang":"en"}`),
		Text: "Cats sleep up to sixteen hours a day. They hunt at dawn and dusk."},
	{StoreID: "vs_pets", DocumentID: "file-dogs", Filename: "dogs.md", Score: 0.41,
		Text: "Dogs descend from wolves. Adult dogs sleep about twelve hours a day."},
}

const (
	keyC = "pk-tenant-c-secret" // tenant c: an upstream provider and the first-party prompt plugin
	keyG = "pk-tenant-g-secret" // tenant g: the streaming guest plugin
	keyD = "pk-tenant-d-secret" // tenant d: an upstream provider, the host's default prompt
	keyE = "pk-tenant-e-secret" // tenant e: an upstream provider and a token budget
	keyH = "pk-tenant-h-secret" // tenant h: the streaming guest plugin behind a token budget
)

// chatEnv is a server with a store, the fake retriever, and tenants:
//   - a: no LLM configuration (the extractive model), the first-party ratelimit plugin with a token budget;
//   - c: the fake upstream as model "fake" (default), with the first-party prompt plugin;
//   - d: the fake upstream, no prompt plugin (the host's default prompt);
//   - e: the fake upstream and the ratelimit plugin's token budget;
//   - g: the fake upstream and the streaming guest plugin;
//   - h: the same, also as the prompt hook, behind the ratelimit plugin with a budget of guestTokenBudget
//     tokens.
//
// Compiling the plugins takes seconds, so one environment serves every subtest of TestChat; each
// subtest sets the upstream's script it needs.
type chatEnv struct {
	*testServer
	up        *llmtest.Upstream
	retriever *fakeRetriever
	store     *store.Store
}

// tokenBudget is tenant a's token limit per minute (the server's clock stands still in these tests).
const tokenBudget = 3000

// guestTokenBudget is tenant h's: two completions of the fake upstream (11 prompt and 6 completion tokens
// each) fit.
const guestTokenBudget = 40

var frozen = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func newChatEnv(t *testing.T, script func(n int, r *llmtest.Request) llmtest.Behavior) *chatEnv {
	t.Helper()
	up := llmtest.New(t, script)
	st, err := store.OpenDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ret := &fakeRetriever{stores: map[string][]abi.SearchHit{"a/vs_pets": catChunks, "c/vs_pets": catChunks, "d/vs_pets": catChunks}}
	svc := llm.New(llm.Options{Logger: quiet(), Backoff: 5 * time.Millisecond,
		Getenv: func(k string) string { return map[string]string{"FAKE_KEY": "sk-upstream-secret"}[k] }})
	ts := startServer(t, Options{Store: st, Retriever: ret, LLM: svc, Now: func() time.Time { return frozen }})
	upstream := fmt.Sprintf(`{"providers": {"fakeup": {"type": "openai", "base_url": %q, "api_key_env": "FAKE_KEY",
		"retries": 0, "timeout": {"first_token": "5s", "idle": "5s"}}}, "models": {"fake": {"provider": "fakeup"}},
		"default_model": "fake"}`, up.URL)
	rl := plugin(t, ts, "ratelimit", "../../plugins/ratelimit", fmt.Sprintf(
		`{"tiers": {"default": {"tokens": {"limit": %d, "period": "1m"}}}}`, tokenBudget))
	a := &tenant.Tenant{ID: "a", Plugins: map[string]*tenant.Plugin{"ratelimit": rl},
		Bindings: map[abi.Hook]string{abi.HookRateLimit: "ratelimit"}}
	c := &tenant.Tenant{ID: "c", LLM: []byte(upstream), Plugins: map[string]*tenant.Plugin{
		"prompt": plugin(t, ts, "prompt", "../../plugins/prompt", "")}, Bindings: map[abi.Hook]string{abi.HookPrompt: "prompt"}}
	d := &tenant.Tenant{ID: "d", LLM: []byte(upstream)}
	e := &tenant.Tenant{ID: "e", LLM: []byte(upstream), Plugins: map[string]*tenant.Plugin{"ratelimit": rl},
		Bindings: map[abi.Hook]string{abi.HookRateLimit: "ratelimit"}}
	guest := plugin(t, ts, "guest", "../llm/llmtest/streamguest", "")
	g := &tenant.Tenant{ID: "g", LLM: []byte(upstream), Plugins: map[string]*tenant.Plugin{
		"guest": guest}, Bindings: map[abi.Hook]string{abi.HookRoute: "guest"},
		Limits: tenant.Limits{PluginDeadline: 10 * time.Second}}
	h := &tenant.Tenant{ID: "h", LLM: []byte(upstream), Plugins: map[string]*tenant.Plugin{"guest": guest,
		"ratelimit": plugin(t, ts, "ratelimit", "../../plugins/ratelimit", fmt.Sprintf(
			`{"tiers": {"default": {"tokens": {"limit": %d, "period": "1m"}}}}`, guestTokenBudget))},
		Bindings: map[abi.Hook]string{abi.HookRoute: "guest", abi.HookRateLimit: "ratelimit", abi.HookPrompt: "guest"}}
	snap, err := tenant.NewSnapshot([]*tenant.Tenant{a, c, d, e, g, h}, []*tenant.Key{
		{ID: "ka", Tenant: "a", Hash: tenant.HashKey([]byte(keyA))},
		{ID: "ke", Tenant: "e", Hash: tenant.HashKey([]byte(keyE))},
		{ID: "kc", Tenant: "c", Hash: tenant.HashKey([]byte(keyC))},
		{ID: "kd", Tenant: "d", Hash: tenant.HashKey([]byte(keyD))},
		{ID: "kg", Tenant: "g", Hash: tenant.HashKey([]byte(keyG))},
		{ID: "kh", Tenant: "h", Hash: tenant.HashKey([]byte(keyH))},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := ts.Apply(context.Background(), snap); err != nil {
		t.Fatal(err)
	}
	return &chatEnv{testServer: ts, up: up, retriever: ret, store: st}
}

// completion is a decoded chat.completion object.
type completion struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	Model   string `json:"model"`
	Choices []struct {
		Index   int `json:"index"`
		Message struct {
			Role    string `json:"role"`
			Content string `json:"content"`
		} `json:"message"`
		FinishReason string `json:"finish_reason"`
	} `json:"choices"`
	Usage     usageJSON      `json:"usage"`
	Citations []citationJSON `json:"citations"`
}

func chat(t testing.TB, url, key, body string) (resp, completion) {
	t.Helper()
	r := do(t, "POST", url+"/v1/chat/completions", key, body)
	var c completion
	if r.status == 200 {
		if err := json.Unmarshal([]byte(r.body), &c); err != nil {
			t.Fatalf("completion: %v in %s", err, r.body)
		}
	}
	return r, c
}

// sseEvents splits a server-sent events body into its data payloads; comments are returned as ":...".
func sseEvents(t testing.TB, body string) []string {
	t.Helper()
	var out []string
	for _, ev := range strings.Split(strings.TrimSuffix(body, "\n\n"), "\n\n") {
		switch {
		case strings.HasPrefix(ev, "data: "):
			out = append(out, strings.TrimPrefix(ev, "data: "))
		case strings.HasPrefix(ev, ":"):
			out = append(out, ev)
		case ev == "":
		default:
			t.Fatalf("not an SSE event: %q in\n%s", ev, body)
		}
	}
	return out
}

type chunkJSON struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Model   string `json:"model"`
	Choices []struct {
		Index int `json:"index"`
		Delta struct {
			Role    string  `json:"role"`
			Content *string `json:"content"`
		} `json:"delta"`
		FinishReason *string `json:"finish_reason"`
	} `json:"choices"`
	Usage     *usageJSON      `json:"usage"`
	Citations []citationJSON  `json:"citations"`
	Error     json.RawMessage `json:"error"`
}

// streamed is a streamed response, decoded.
type streamed struct {
	text       string
	chunks     []chunkJSON
	keepAlives int
	done       bool
	errEvent   *errorFields
	raw        []string
}

func decodeStream(t testing.TB, body string) streamed {
	t.Helper()
	var s streamed
	s.raw = sseEvents(t, body)
	for i, ev := range s.raw {
		switch {
		case strings.HasPrefix(ev, ":"):
			s.keepAlives++
		case ev == "[DONE]":
			if i != len(s.raw)-1 {
				t.Fatalf("[DONE] is not last: %q", s.raw)
			}
			s.done = true
		default:
			var c chunkJSON
			if err := json.Unmarshal([]byte(ev), &c); err != nil {
				t.Fatalf("chunk %q: %v", ev, err)
			}
			if c.Error != nil {
				var e errorFields
				json.Unmarshal(c.Error, &e)
				s.errEvent = &e
				continue
			}
			s.chunks = append(s.chunks, c)
			for _, ch := range c.Choices {
				if ch.Delta.Content != nil {
					s.text += *ch.Delta.Content
				}
			}
		}
	}
	return s
}

func testChatExtractiveDefault(t *testing.T, env *chatEnv) {
	env.up.SetScript(nil)
	body := `{"messages": [{"role": "user", "content": "How many hours do cats sleep?"}],
		"rag": {"vector_store_ids": ["vs_pets"], "filters": {"type": "eq", "key": "lang", "value": "en"}, "max_num_results": 2}}`
	r, c := chat(t, env.url, keyA, body)
	want := "Cats sleep up to sixteen hours a day. [1] Adult dogs sleep about twelve hours a day. [2]"
	if r.status != 200 || c.Object != "chat.completion" || !strings.HasPrefix(c.ID, "chatcmpl-") || c.Model != llm.ExtractiveModel ||
		len(c.Choices) != 1 || c.Choices[0].Message.Role != "assistant" || c.Choices[0].Message.Content != want ||
		c.Choices[0].FinishReason != "stop" {
		t.Fatalf("%d %s", r.status, r.body)
	}
	if c.Usage.PromptTokens == 0 || c.Usage.CompletionTokens == 0 || c.Usage.TotalTokens != c.Usage.PromptTokens+c.Usage.CompletionTokens {
		t.Fatalf("usage %+v", c.Usage)
	}
	if len(c.Citations) != 2 || c.Citations[0].Index != 1 || c.Citations[0].FileID != "file-cats" || c.Citations[0].Filename != "cats.md" ||
		c.Citations[0].VectorStoreID != "vs_pets" || !c.Citations[0].Cited || c.Citations[0].Score != 0.92 ||
		string(c.Citations[0].Attributes) != `{"lang":"en"}` || !strings.HasPrefix(c.Citations[1].Text, "Dogs descend") {
		t.Fatalf("citations %+v", c.Citations)
	}
	env.retriever.mu.Lock()
	call := env.retriever.calls[0]
	env.retriever.mu.Unlock()
	if call.Query != "How many hours do cats sleep?" || call.MaxResults != 2 || string(call.Filters) != `{"type": "eq", "key": "lang", "value": "en"}` {
		t.Fatalf("search request %+v", call)
	}
	// The same request streamed: the same text, OpenAI's chunk sequence, citations before usage.
	r = do(t, "POST", env.url+"/v1/chat/completions", keyA, strings.Replace(body, `"messages"`,
		`"stream": true, "stream_options": {"include_usage": true}, "messages"`, 1))
	if r.status != 200 || !strings.HasPrefix(r.header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("stream: %d %v", r.status, r.header)
	}
	s := decodeStream(t, r.body)
	if s.text != want || !s.done || s.errEvent != nil {
		t.Fatalf("stream text %q done=%v err=%+v\n%s", s.text, s.done, s.errEvent, r.body)
	}
	n := len(s.chunks)
	first, finish, cites, usage := s.chunks[0], s.chunks[n-3], s.chunks[n-2], s.chunks[n-1]
	if first.Choices[0].Delta.Role != "assistant" || *first.Choices[0].Delta.Content != "" || first.Object != "chat.completion.chunk" ||
		first.Model != llm.ExtractiveModel {
		t.Fatalf("first chunk %+v", first)
	}
	if *finish.Choices[0].FinishReason != "stop" || finish.Choices[0].Delta.Content != nil {
		t.Fatalf("finish chunk %+v", finish)
	}
	if len(cites.Choices) != 0 || len(cites.Citations) != 2 || !cites.Citations[1].Cited {
		t.Fatalf("citations chunk %+v", cites)
	}
	if len(usage.Choices) != 0 || usage.Usage == nil || *usage.Usage != c.Usage {
		t.Fatalf("usage chunk %+v, want %+v", usage, c.Usage)
	}
	for _, ch := range s.chunks {
		if ch.ID != s.chunks[0].ID {
			t.Fatalf("chunk ids differ")
		}
	}
	// Every chunk but the last carries "usage":null when usage is included.
	if !strings.Contains(s.raw[0], `"usage":null`) {
		t.Fatalf("first chunk without usage:null: %s", s.raw[0])
	}

	// Without rag and without sources the extractive model says what it is.
	_, c = chat(t, env.url, keyA, `{"model": "plinth-extractive-v1", "messages": [{"role": "user", "content": "hello"}]}`)
	if !strings.Contains(c.Choices[0].Message.Content, "plinth-extractive-v1") || c.Citations != nil {
		t.Fatalf("%+v", c)
	}
}

func testChatValidation(t *testing.T, env *chatEnv) {
	env.up.SetScript(nil)
	cases := []struct {
		key, body      string
		status         int
		code, paramFor string
	}{
		{keyA, ``, 400, "invalid_json", ""},
		{keyA, `{"messages": []}`, 400, "missing_required_parameter", "messages"},
		{keyA, `{"messages": "hi"}`, 400, "invalid_type", "messages"},
		{keyA, `{"messages": [{"role": "robot", "content": "x"}]}`, 400, "invalid_value", "messages[0].role"},
		{keyA, `{"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]}`, 400, "unsupported_value", "messages[0].role"},
		{keyA, `{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}`, 400, "unsupported_value", "messages[0].content[0].type"},
		{keyA, `{"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}`, 400, "unsupported_parameter", "tools"},
		{keyA, `{"messages": [{"role": "user", "content": "x"}], "n": 2}`, 400, "unsupported_value", "n"},
		{keyA, `{"messages": [{"role": "user", "content": "x"}], "temperature": 3}`, 400, "invalid_value", "temperature"},
		{keyA, `{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}`, 400, "invalid_value", "max_tokens"},
		{keyA, `{"messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": true}}`, 400, "invalid_value", "stream_options"},
		{keyA, `{"messages": [{"role": "user", "content": "x"}], "model": "gpt-9"}`, 404, "model_not_found", "model"},
		{keyA, `{"messages": [{"role": "user", "content": "x"}], "rag": {"vector_store_ids": []}}`, 400, "missing_required_parameter", "rag.vector_store_ids"},
		{keyA, `{"messages": [{"role": "user", "content": "x"}], "rag": {"vector_store_ids": ["vs_nope"]}}`, 404, "vector_store_not_found", "rag.vector_store_ids"},
		{keyA, `{"messages": [{"role": "user", "content": "x"}], "rag": {"vector_store_ids": ["vs_pets"], "max_num_results": 99}}`, 400, "invalid_value", "rag.max_num_results"},
		{keyA, `{"messages": [{"role": "user", "content": "x"}], "rag": {"vector_store_ids": ["vs_pets"], "filters": {"type":"bogus"}}}`, 400, "invalid_filter", "rag.filters"},
		{keyA, `{"messages": [{"role": "user", "content": "x"}], "conversation": "conv_00000000000000000000000000000000"}`, 404, "not_found", "conversation"},
		// Tenant isolation: d's vector store name means nothing to tenant a... and a's to c's retriever scope.
		{keyC, `{"messages": [{"role": "user", "content": "x"}], "model": "plinth-extractive-v1", "rag": {"vector_store_ids": ["vs_other"]}}`, 404, "vector_store_not_found", "rag.vector_store_ids"},
	}
	for _, c := range cases {
		r := do(t, "POST", env.url+"/v1/chat/completions", c.key, c.body)
		p := ""
		if r.err.Param != nil {
			p = *r.err.Param
		}
		if r.status != c.status || r.err.Code != c.code || p != c.paramFor {
			t.Errorf("%s: %d %+v (param %q), want %d %s %s", c.body, r.status, r.err, p, c.status, c.code, c.paramFor)
		}
	}
	// rag on a server without a search service: a clear 503.
	ts := startServer(t, Options{})
	snap, _ := tenant.NewSnapshot([]*tenant.Tenant{{ID: "a"}}, []*tenant.Key{{ID: "ka", Tenant: "a", Hash: tenant.HashKey([]byte(keyA))}})
	ts.Apply(context.Background(), snap)
	r := do(t, "POST", ts.url+"/v1/chat/completions", keyA, `{"messages": [{"role": "user", "content": "x"}], "rag": {"vector_store_ids": ["vs_1"]}}`)
	if r.status != 503 || r.err.Code != "retrieval_unavailable" || r.err.Type != typeUnavailable {
		t.Fatalf("rag without retriever: %d %+v", r.status, r.err)
	}
	// An invalid LLM configuration is reported, without the secret it names.
	snap, _ = tenant.NewSnapshot([]*tenant.Tenant{{ID: "a", LLM: []byte(`{"providers": {"x": {"type": "openai", "api_key": "sk-leak"}}}`)}},
		[]*tenant.Key{{ID: "ka", Tenant: "a", Hash: tenant.HashKey([]byte(keyA))}})
	ts.Apply(context.Background(), snap)
	r = do(t, "POST", ts.url+"/v1/chat/completions", keyA, `{"messages": [{"role": "user", "content": "x"}]}`)
	if r.status != 500 || r.err.Code != "llm_config_invalid" || strings.Contains(r.body, "sk-leak") {
		t.Fatalf("invalid config: %d %s", r.status, r.body)
	}
}

func testModels(t *testing.T, env *chatEnv) {
	env.up.SetScript(nil)
	r := do(t, "GET", env.url+"/v1/models", keyC, "")
	created := fmt.Sprint(frozen.Unix())
	if r.status != 200 || r.body != `{"object":"list","data":[{"id":"fake","object":"model","created":`+created+`,"owned_by":"fakeup"},`+
		`{"id":"plinth-extractive-v1","object":"model","created":`+created+`,"owned_by":"plinth"}]}` {
		t.Fatalf("%d %s", r.status, r.body)
	}
	if strings.Contains(r.body, "secret") || strings.Contains(r.body, "127.0.0.1") {
		t.Fatalf("models leak configuration: %s", r.body)
	}
	if r := do(t, "GET", env.url+"/v1/models/fake", keyC, ""); r.status != 200 || !strings.Contains(r.body, `"owned_by":"fakeup"`) {
		t.Fatalf("%d %s", r.status, r.body)
	}
	// Tenant a has no configuration: only the built-in model, and c's model is not a's.
	if r := do(t, "GET", env.url+"/v1/models/fake", keyA, ""); r.status != 404 || r.err.Code != "model_not_found" {
		t.Fatalf("%d %s", r.status, r.body)
	}
}

func testChatUpstreamAndPromptHook(t *testing.T, env *chatEnv) {
	env.up.SetScript(nil)
	body := `{"messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Do cats sleep a lot?"}],
		"temperature": 0.5, "max_tokens": 64, "rag": {"vector_store_ids": ["vs_pets"]}}`
	// Tenant c binds the first-party prompt plugin; tenant d uses the host's default prompt. The
	// upstream receives the same messages from both.
	var seen [][]abi.Message
	for _, key := range []string{keyC, keyD} {
		r, c := chat(t, env.url, key, body)
		if r.status != 200 || c.Model != "fake" || c.Choices[0].Message.Content != strings.Join(llmtest.DefaultTokens, "") ||
			c.Usage != (usageJSON{PromptTokens: 11, CompletionTokens: 6, TotalTokens: 17}) || len(c.Citations) != 2 || c.Citations[0].Cited {
			t.Fatalf("%s: %d %s", key, r.status, r.body)
		}
		got := env.up.Last()
		if got.Authorization != "Bearer sk-upstream-secret" || got.MaxTokens != 64 || *got.Temperature != 0.5 || got.Model != "fake" {
			t.Fatalf("upstream request %+v", got)
		}
		seen = append(seen, got.Messages)
		if strings.Contains(r.body, "sk-upstream-secret") {
			t.Fatal("the provider's key reached the client")
		}
	}
	if fmt.Sprint(seen[0]) != fmt.Sprint(seen[1]) {
		t.Fatalf("plugin and default prompts differ:\n%q\n%q", seen[0], seen[1])
	}
	m := seen[0]
	if len(m) != 3 || m[0].Role != "system" || !strings.Contains(m[0].Content, "[1] cats.md\nCats sleep") || m[1].Content != "Be kind." {
		t.Fatalf("prompt %q", m)
	}
}

func testChatConversation(t *testing.T, env *chatEnv) {
	env.up.SetScript(nil)
	r := do(t, "POST", env.url+"/v1/conversations", keyD, `{}`)
	var conv conversationJSON
	json.Unmarshal([]byte(r.body), &conv)
	for i, q := range []string{"first question", "second question"} {
		body := fmt.Sprintf(`{"messages": [{"role": "user", "content": %q}], "conversation": %q, "stream": %v}`, q, conv.ID, i == 1)
		if r := do(t, "POST", env.url+"/v1/chat/completions", keyD, body); r.status != 200 {
			t.Fatalf("%d %s", r.status, r.body)
		}
	}
	got := env.up.Last().Messages
	answer := strings.Join(llmtest.DefaultTokens, "")
	if len(got) != 3 || got[0].Content != "first question" || got[1].Role != "assistant" || got[1].Content != answer ||
		got[2].Content != "second question" {
		t.Fatalf("history sent upstream: %q", got)
	}
	// The streamed turn is recorded once its stream ends (after the response): wait for it.
	var items []store.Item
	waitUntil(t, func() bool {
		items, _, _ = env.store.ListItems("d", conv.ID, "", 10, false)
		return len(items) == 4
	}, "the streamed turn to be recorded")
	if m, _ := itemMessage(items[3].JSON); m.Role != "assistant" || m.Content != answer {
		t.Fatalf("last item %s", items[3].JSON)
	}
	// Another tenant cannot use the conversation.
	r = do(t, "POST", env.url+"/v1/chat/completions", keyC, fmt.Sprintf(`{"messages": [{"role": "user", "content": "x"}], "conversation": {"id": %q}}`, conv.ID))
	if r.status != 404 {
		t.Fatalf("other tenant's conversation: %d %s", r.status, r.body)
	}
}

func testChatStreamFailures(t *testing.T, env *chatEnv) {
	env.up.SetScript(nil)
	key := keyD
	streamBody := func(q string) string {
		return fmt.Sprintf(`{"stream": true, "messages": [{"role": "user", "content": %q}]}`, q)
	}
	// Before the stream: an upstream that fails at once gets a status and a JSON error, not an SSE body.
	env.up.SetScript(func(int, *llmtest.Request) llmtest.Behavior { return llmtest.Behavior{Status: 503} })
	r := do(t, "POST", env.url+"/v1/chat/completions", key, streamBody("q"))
	if r.status != 502 || r.err.Code != "provider_error" || r.err.Type != "server_error" || !strings.Contains(r.err.Message, `"fakeup"`) {
		t.Fatalf("503 upstream: %d %s", r.status, r.body)
	}
	env.up.SetScript(func(int, *llmtest.Request) llmtest.Behavior { return llmtest.Behavior{Status: 429} })
	if r := do(t, "POST", env.url+"/v1/chat/completions", key, streamBody("q")); r.status != 429 || r.err.Type != "rate_limit_error" {
		t.Fatalf("429 upstream: %d %s", r.status, r.body)
	}
	// Midway: an error event, then [DONE] — never a silent close.
	for _, b := range []llmtest.Behavior{{Fail: true, FailAfter: 2}, {Fail: true, FailAfter: 2, Cut: true}} {
		env.up.SetScript(func(int, *llmtest.Request) llmtest.Behavior { return b })
		r := do(t, "POST", env.url+"/v1/chat/completions", key, streamBody("q"))
		s := decodeStream(t, r.body)
		if r.status != 200 || s.text != "Hello from" || s.errEvent == nil || !s.done || s.errEvent.Type != "server_error" ||
			s.raw[len(s.raw)-2] != mustJSON(errorBody{Error: *s.errEvent}) {
			t.Fatalf("%+v: %d\n%s", b, r.status, r.body)
		}
	}
	// Slow first token: heartbeats while waiting, then the answer.
	env.up.SetScript(func(int, *llmtest.Request) llmtest.Behavior {
		return llmtest.Behavior{FirstDelay: 900 * time.Millisecond}
	})
	r = do(t, "POST", env.url+"/v1/chat/completions", key, streamBody("q"))
	s := decodeStream(t, r.body)
	if s.keepAlives < 2 || !strings.HasPrefix(s.raw[0], ": keep-alive") || s.text != strings.Join(llmtest.DefaultTokens, "") || !s.done {
		t.Fatalf("slow start: %d keep-alives\n%s", s.keepAlives, r.body)
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// openStream sends a streaming chat request on a raw connection and returns it once the response
// headers arrived.
func openStream(t *testing.T, url, key, body string) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
		key, len(body), body)
	br := bufio.NewReader(conn)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != 200 {
		b, _ := io.ReadAll(res.Body)
		t.Fatalf("status %d: %s", res.StatusCode, b)
	}
	return conn, bufio.NewReader(res.Body)
}

func testChatDisconnectCancelsUpstream(t *testing.T, env *chatEnv) {
	env.up.SetScript(func(int, *llmtest.Request) llmtest.Behavior {
		return llmtest.Behavior{Tokens: []string{"one", " two", " three", " four"}, Stall: true, StallAfter: 2}
	})
	for _, key := range []string{keyC} {
		conn, body := openStream(t, env.url, key, `{"stream": true, "messages": [{"role": "user", "content": "cut me"}]}`)
		// Read up to the second token, then hang up.
		var got strings.Builder
		for !strings.Contains(got.String(), " two") {
			line, err := body.ReadString('\n')
			if err != nil {
				t.Fatalf("reading the stream: %v (%q)", err, got.String())
			}
			got.WriteString(line)
		}
		cut := time.Now()
		conn.Close()
		waitUntil(t, func() bool { _, ok := env.up.CancelledAt("cut me"); return ok }, "the upstream request to be cancelled")
		at, _ := env.up.CancelledAt("cut me")
		if d := at.Sub(cut); d > time.Second {
			t.Fatalf("upstream cancelled %v after the client left", d)
		}
		t.Logf("upstream cancelled %v after the client disconnected", at.Sub(cut).Round(time.Millisecond))
	}
}

func testChatTokenBudget(t *testing.T, env *chatEnv) {
	env.up.SetScript(nil)
	rl := env.cur.Load().tenants["a"].hooks[abi.HookRateLimit]
	remaining := func() int64 {
		hc := hostCall{s: env.Server, plugin: rl}
		r := env.limiter.Take(hc.scopedKey([]byte("tokens:ka")), gcra.Params{Limit: tokenBudget, Period: time.Minute})
		return r.Remaining
	}
	body := `{"max_tokens": 1000, "messages": [{"role": "user", "content": "hello"}]}`
	// Each request reserves over 1000 tokens and settles to what it used, so the budget of 3000 lasts for
	// many requests; without settlement the third would be refused.
	used := tokenBudget - remaining() // earlier subtests used some
	for i := 0; i < 5; i++ {
		r, c := chat(t, env.url, keyA, body)
		if r.status != 200 {
			t.Fatalf("request %d: %d %s", i, r.status, r.body)
		}
		used += c.Usage.TotalTokens
		if got := remaining(); got != tokenBudget-used {
			t.Fatalf("after request %d: %d tokens left, want %d", i, got, tokenBudget-used)
		}
	}
	// Streamed: settled when the stream ends.
	r := do(t, "POST", env.url+"/v1/chat/completions", keyA, `{"stream": true, "stream_options": {"include_usage": true}, "max_tokens": 1000, "messages": [{"role": "user", "content": "hello"}]}`)
	s := decodeStream(t, r.body)
	used += s.chunks[len(s.chunks)-1].Usage.TotalTokens
	waitUntil(t, func() bool { return remaining() == tokenBudget-used }, "the streamed completion to be settled")
	// A request whose estimate exceeds the whole budget is refused before it runs.
	r = do(t, "POST", env.url+"/v1/chat/completions", keyA, `{"max_tokens": 5000, "messages": [{"role": "user", "content": "hello"}]}`)
	if r.status != 429 || !strings.Contains(r.err.Message, "tokens") {
		t.Fatalf("over budget: %d %s", r.status, r.body)
	}
}

func testChatCutStreamCountsTokens(t *testing.T, env *chatEnv) {
	env.up.SetScript(func(int, *llmtest.Request) llmtest.Behavior {
		return llmtest.Behavior{Tokens: []string{"alpha", " beta", " gamma", " delta"}, Stall: true, StallAfter: 3}
	})
	rl := env.cur.Load().tenants["e"].hooks[abi.HookRateLimit]
	remaining := func() int64 {
		hc := hostCall{s: env.Server, plugin: rl}
		return env.limiter.Take(hc.scopedKey([]byte("tokens:ke")), gcra.Params{Limit: tokenBudget, Period: time.Minute}).Remaining
	}
	conn, body := openStream(t, env.url, keyE, `{"stream": true, "max_tokens": 1000, "messages": [{"role": "user", "content": "count me"}]}`)
	var got strings.Builder
	for !strings.Contains(got.String(), " gamma") {
		line, err := body.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		got.WriteString(line)
	}
	if left := remaining(); left > tokenBudget-1000 {
		t.Fatalf("the reservation was not taken: %d left", left)
	}
	conn.Close()
	// Three tokens streamed, plus the prompt's estimate: settled after the cut.
	prompt := llm.EstimateMessages([]abi.Message{{Role: "user", Content: "count me"}})
	waitUntil(t, func() bool { return remaining() == tokenBudget-prompt-3 }, fmt.Sprintf("settlement to %d tokens", prompt+3))
}

func waitUntil(t testing.TB, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestChat(t *testing.T) {
	env := newChatEnv(t, nil)
	for _, c := range []struct {
		name string
		f    func(*testing.T, *chatEnv)
	}{
		{"ExtractiveDefault", testChatExtractiveDefault},
		{"Validation", testChatValidation},
		{"Models", testModels},
		{"UpstreamAndPromptHook", testChatUpstreamAndPromptHook},
		{"Conversation", testChatConversation},
		{"StreamFailures", testChatStreamFailures},
		{"DisconnectCancelsUpstream", testChatDisconnectCancelsUpstream},
		{"TokenBudget", testChatTokenBudget},
		{"CutStreamCountsTokens", testChatCutStreamCountsTokens},
		{"OpenAIClient", testOpenAIClient},
		{"GuestLLMCalls", testGuestLLMCalls},
		{"GuestLLMCallsSpendTokenBudget", testGuestLLMTokens},
		{"GuestStreams", testGuestStreams},
		{"GuestLeavesNothingOpen", testGuestLeavesNothingOpen},
		{"GuestClientDisconnect", testGuestClientDisconnect},
	} {
		t.Run(c.name, func(t *testing.T) { c.f(t, env) })
	}
}
