package llm

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/abi"
	"github.com/plinth-dev/plinth/host/llm/llmtest"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func newService(env map[string]string) *Service {
	return New(Options{Logger: quiet(), Backoff: 10 * time.Millisecond, Getenv: func(k string) string { return env[k] }})
}

// drain reads a stream to its end and returns the text, the last event and every event.
func drain(t *testing.T, st *Stream) (string, abi.LLMEvent, []abi.LLMEvent) {
	t.Helper()
	var text strings.Builder
	var last abi.LLMEvent
	var all []abi.LLMEvent
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev, ok := <-st.Events():
			if !ok {
				st.Close()
				return text.String(), last, all
			}
			text.WriteString(ev.Delta)
			last = ev
			all = append(all, ev)
		case <-timeout:
			t.Fatal("stream did not end")
		}
	}
}

func tenantCfg(t *testing.T, s *Service, cfg string) *Tenant {
	t.Helper()
	tn, err := s.Tenant("t1", []byte(cfg))
	if err != nil {
		t.Fatal(err)
	}
	return tn
}

func route(t *testing.T, tn *Tenant, model string) *Route {
	t.Helper()
	r, ok := tn.Resolve(model)
	if !ok {
		t.Fatalf("no route for %q", model)
	}
	return r
}

func userReq(q string) Request {
	return Request{Messages: []abi.Message{{Role: "user", Content: q}}}
}

func TestParseConfig(t *testing.T) {
	good := `{"providers": {"oa": {"type": "openai", "base_url": "http://127.0.0.1:1/v1", "api_key_env": "OPENAI_API_KEY",
		"timeout": {"connect": "1s", "first_token": 5, "idle": "2s"}, "retries": 2},
		"local": {"type": "openai", "base_url": "http://localhost:11434/v1", "timeout": "3s"}},
		"models": {"gpt": {"provider": "oa", "fallback": "local"}, "small": {"provider": "local", "model": "llama3.2:1b",
		"fallback": {"provider": "extractive", "model": "plinth-extractive-v1"}}},
		"default_model": "gpt"}`
	c, err := ParseConfig([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if c.Providers["local"].Timeout.Idle != Duration(3*time.Second) || *c.Providers["oa"].Retries != 2 ||
		c.Models["gpt"].Fallback.Provider != "local" || c.Models["small"].Fallback.Model != ExtractiveModel {
		t.Fatalf("%+v", c)
	}
	for _, c := range []struct{ cfg, want string }{
		{`{"providers": {"x": {"type": "gemini"}}}`, "want openai or extractive"},
		{`{"providers": {"x": {"type": "openai", "base_url": "ftp://h"}}}`, "base_url"},
		{`{"providers": {"x": {"type": "openai", "base_url": "https://u:p@h/v1"}}}`, "credentials in the URL"},
		{`{"providers": {"x": {"type": "openai", "api_key_env": "PLINTH_OPERATOR_KEY"}}}`, "server's own settings"},
		{`{"providers": {"x": {"type": "openai", "api_key_env": "A B"}}}`, "not an environment variable"},
		{`{"providers": {"x": {"type": "openai", "retries": 9}}}`, "retries"},
		{`{"models": {"m": {"provider": "nope"}}}`, `no provider "nope"`},
		{`{"models": {"m": {"provider": "extractive", "fallback": "nope"}}}`, `fallback: no provider`},
		{`{"default_model": "m"}`, `default_model: no model "m"`},
		{`{"providers": {"x": {"type": "openai", "apikey": "sk-123"}}}`, "unknown field"},
	} {
		_, err := ParseConfig([]byte(c.cfg))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err %v, want %q", c.cfg, err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), "sk-123") {
			t.Errorf("error repeats a secret: %v", err)
		}
	}
	if _, err := ParseConfig([]byte(`{"providers": {"x": {"type": "openai", "api_key_env": "PLINTH_LLM_KEY"}}}`)); err != nil {
		t.Fatalf("PLINTH_LLM_* refused: %v", err)
	}
	if c, err := ParseConfig(nil); err != nil || len(c.Models) != 0 {
		t.Fatalf("empty config: %v", err)
	}
}

func TestModelsAndDefaults(t *testing.T) {
	s := newService(nil)
	tn := tenantCfg(t, s, ``)
	if m := tn.Models(); len(m) != 1 || m[0].ID != ExtractiveModel || tn.DefaultModel() != ExtractiveModel {
		t.Fatalf("unconfigured tenant: %+v %s", m, tn.DefaultModel())
	}
	tn = tenantCfg(t, s, `{"providers": {"p": {"type": "openai"}}, "models": {"b": {"provider": "p"}, "a": {"provider": "p"}}, "default_model": "b"}`)
	m := tn.Models()
	if len(m) != 3 || m[0].ID != "a" || m[2].ID != ExtractiveModel || m[0].Provider != "p" {
		t.Fatalf("models %+v", m)
	}
	if r, _ := tn.Resolve(""); r.Model != "b" {
		t.Fatalf("default route %q", r.Model)
	}
	if _, ok := tn.Resolve("zzz"); ok {
		t.Fatal("unknown model resolved")
	}
	// The cache is per configuration: the same bytes give the same Tenant, new bytes a new one.
	if again := tenantCfg(t, s, `{"providers": {"p": {"type": "openai"}}, "models": {"b": {"provider": "p"}, "a": {"provider": "p"}}, "default_model": "b"}`); again != tn {
		t.Fatal("configuration re-parsed")
	}
	if _, err := s.Tenant("t1", []byte(`{"default_model": "x"}`)); err == nil {
		t.Fatal("bad configuration accepted")
	}
}

func TestEstimates(t *testing.T) {
	for _, c := range []struct {
		s    string
		want int64
	}{{"", 0}, {"hello", 1}, {"Hello, world!", 4}, {"a b c d", 4}, {"internationalization", 4}, {"日本語", 3}} {
		if got := EstimateText(c.s); got != c.want {
			t.Errorf("EstimateText(%q) = %d, want %d", c.s, got, c.want)
		}
	}
	if n := EstimateMessages([]abi.Message{{Role: "user", Content: "hello"}}); n != 3+4+1 {
		t.Errorf("EstimateMessages = %d", n)
	}
	if got := CitedSources("A [1] b [2][3], c [1, 4] d [9] [x] [0]", 5); fmt.Sprint(got) != "[1 2 3 4]" {
		t.Errorf("CitedSources = %v", got)
	}
}

var chunks = []abi.SearchHit{
	{DocumentID: "doc-1", Filename: "cats.md", Score: 0.9, Text: "Cats sleep up to sixteen hours a day. They are crepuscular hunters."},
	{DocumentID: "doc-2", Filename: "dogs.md", Score: 0.5, Text: "Dogs were domesticated from wolves. Most dogs sleep about twelve hours a day."},
}

func TestExtractive(t *testing.T) {
	req := Request{Messages: []abi.Message{{Role: "user", Content: "How many hours do cats sleep?"}}, Sources: chunks}
	a := ExtractiveAnswer(&req)
	want := "Cats sleep up to sixteen hours a day. [1] Most dogs sleep about twelve hours a day. [2]"
	if a != want {
		t.Fatalf("answer %q\nwant   %q", a, want)
	}
	// The same sources, numbered in a system message as the default prompt writes them.
	out := BuildPrompt(&abi.PromptInput{Messages: req.Messages, Chunks: chunks}, PromptOptions{})
	if b := ExtractiveAnswer(&Request{Messages: out.Messages}); b != want {
		t.Fatalf("answer from the prompt's sources %q", b)
	}
	if c := ExtractiveAnswer(&Request{Messages: req.Messages}); c != noSourcesAnswer {
		t.Fatalf("answer without sources %q", c)
	}
	if d := ExtractiveAnswer(&Request{Messages: []abi.Message{{Role: "user", Content: "zebras?"}}, Sources: chunks}); !strings.HasPrefix(d, "The retrieved documents do not answer") || !strings.Contains(d, "[2]") {
		t.Fatalf("unmatched question %q", d)
	}

	// Through the service: streamed word by word, the model named, usage reported, deterministic.
	s := newService(nil)
	r := route(t, tenantCfg(t, s, ""), "")
	text1, last, all := drain(t, s.Open(context.Background(), r, req))
	text2, _, _ := drain(t, s.Open(context.Background(), r, req))
	if text1 != want || text2 != want || len(all) < 10 || all[0].Model != ExtractiveModel || last.FinishReason != "stop" ||
		last.Usage.CompletionTokens == 0 || last.Usage.PromptTokens == 0 {
		t.Fatalf("stream %q %+v (%d events)", text1, last, len(all))
	}
	req.Params.MaxTokens = 5
	text3, last, _ := drain(t, s.Open(context.Background(), r, req))
	if last.FinishReason != "length" || !strings.HasPrefix(want, text3) || len(text3) >= len(want) {
		t.Fatalf("max_tokens: %q %+v", text3, last)
	}
}

func TestBuildPrompt(t *testing.T) {
	in := &abi.PromptInput{
		Messages: []abi.Message{{Role: "user", Content: "q?"}},
		History:  []abi.Message{{Role: "user", Content: "h1"}, {Role: "assistant", Content: "h2"}, {Role: "user", Content: "h3"}},
		Chunks:   chunks,
	}
	out := BuildPrompt(in, PromptOptions{MaxHistory: 2})
	if len(out.Messages) != 4 || out.Messages[1].Content != "h2" || out.Messages[3].Content != "q?" {
		t.Fatalf("%+v", out.Messages)
	}
	sys := out.Messages[0].Content
	if !strings.HasPrefix(sys, DefaultInstructions+"\n\nSources:\n\n[1] cats.md\nCats sleep") || !strings.Contains(sys, "\n\n[2] dogs.md\nDogs") {
		t.Fatalf("system message:\n%s", sys)
	}
	// Without chunks, the client's messages pass through after the history.
	out = BuildPrompt(&abi.PromptInput{Messages: in.Messages}, PromptOptions{})
	if len(out.Messages) != 1 || out.Messages[0].Content != "q?" {
		t.Fatalf("%+v", out.Messages)
	}
	// The source budget cuts the text.
	sys = SourcesMessage("I", chunks, 20)
	if strings.Contains(sys, "[2]") || !strings.HasSuffix(sys, "...") {
		t.Fatalf("budget: %q", sys)
	}
}

func upstreamCfg(urls ...string) string {
	c := map[string]any{"providers": map[string]any{}, "models": map[string]any{}}
	for i, u := range urls {
		c["providers"].(map[string]any)[fmt.Sprintf("p%d", i+1)] = map[string]any{"type": "openai", "base_url": u,
			"retries": 1, "timeout": map[string]any{"first_token": "300ms", "idle": "300ms", "connect": "1s"}}
	}
	m := map[string]any{"provider": "p1"}
	if len(urls) > 1 {
		m["fallback"] = map[string]any{"provider": "p2", "model": "fb-model"}
	}
	c["models"].(map[string]any)["m"] = m
	b, _ := json.Marshal(c)
	return string(b)
}

func TestOpenAIProviderStream(t *testing.T) {
	up := llmtest.New(t, nil)
	s := newService(map[string]string{"KEY": "sk-test-secret"})
	cfg := strings.Replace(upstreamCfg(up.URL), `"type":"openai"`, `"type":"openai","api_key_env":"KEY"`, 1)
	r := route(t, tenantCfg(t, s, cfg), "m")
	temp := 0.25
	st := s.Open(context.Background(), r, Request{Messages: []abi.Message{{Role: "system", Content: "sys"},
		{Role: "developer", Content: "dev"}, {Role: "user", Content: "hi", Name: "ann"}},
		Params: abi.Params{Temperature: &temp, MaxTokens: 50}})
	text, last, all := drain(t, st)
	if text != strings.Join(llmtest.DefaultTokens, "") || last.FinishReason != "stop" || all[0].Model != "m" {
		t.Fatalf("%q %+v %+v", text, last, all[0])
	}
	if last.Usage != (abi.Usage{PromptTokens: 11, CompletionTokens: 6}) || st.Usage() != last.Usage || st.Err() != nil {
		t.Fatalf("usage %+v %+v err %v", last.Usage, st.Usage(), st.Err())
	}
	got := up.Last()
	if got.Authorization != "Bearer sk-test-secret" || !got.Stream || !got.IncludeUsage || got.MaxTokens != 50 ||
		*got.Temperature != 0.25 || got.Messages[1].Role != "system" || got.Messages[2].Name != "ann" {
		t.Fatalf("upstream saw %+v", got)
	}
}

func TestRetriesAndFallbackBeforeFirstToken(t *testing.T) {
	// p1 fails twice (first try and its one retry) with 503, so the fallback p2 answers.
	up1 := llmtest.New(t, func(int, *llmtest.Request) llmtest.Behavior { return llmtest.Behavior{Status: 503} })
	up2 := llmtest.New(t, func(int, *llmtest.Request) llmtest.Behavior {
		return llmtest.Behavior{Tokens: []string{"from", " fallback"}}
	})
	s := newService(nil)
	r := route(t, tenantCfg(t, s, upstreamCfg(up1.URL, up2.URL)), "m")
	text, last, all := drain(t, s.Open(context.Background(), r, userReq("q")))
	if text != "from fallback" || last.FinishReason != "stop" || all[0].Model != "fb-model" {
		t.Fatalf("%q %+v", text, all)
	}
	if up1.Requests.Load() != 2 || up2.Requests.Load() != 1 || up2.Last().Model != "fb-model" {
		t.Fatalf("requests: p1 %d, p2 %d", up1.Requests.Load(), up2.Requests.Load())
	}

	// A first try that stalls before its first token hits the first-token timeout and is retried.
	up3 := llmtest.New(t, func(n int, _ *llmtest.Request) llmtest.Behavior {
		if n == 1 {
			return llmtest.Behavior{Stall: true}
		}
		return llmtest.Behavior{}
	})
	r = route(t, tenantCfg(t, s, upstreamCfg(up3.URL)), "m")
	start := time.Now()
	text, _, _ = drain(t, s.Open(context.Background(), r, userReq("q")))
	if text != strings.Join(llmtest.DefaultTokens, "") || up3.Requests.Load() != 2 || time.Since(start) < 300*time.Millisecond {
		t.Fatalf("after a stalled try: %q, %d requests", text, up3.Requests.Load())
	}
	waitFor(t, func() bool { return up3.Cancelled.Load() == 1 }, "the stalled request to be cancelled")

	// A 400 is the client's problem: neither retried nor sent to the fallback, and its status survives.
	up4 := llmtest.New(t, func(int, *llmtest.Request) llmtest.Behavior { return llmtest.Behavior{Status: 400} })
	r = route(t, tenantCfg(t, s, upstreamCfg(up4.URL, up2.URL)), "m")
	st := s.Open(context.Background(), r, userReq("q"))
	_, last, _ = drain(t, st)
	if e := st.Err(); e == nil || e.Kind != KindInvalid || e.HTTPStatus() != 400 || last.Error == "" || up4.Requests.Load() != 1 {
		t.Fatalf("400: %+v %+v, %d requests", e, last, up4.Requests.Load())
	}
	if st.Usage() != (abi.Usage{}) {
		t.Fatalf("a completion that never started used %+v", st.Usage())
	}

	// A missing API key is the provider's configuration problem: the fallback answers.
	cfg := strings.Replace(upstreamCfg(up4.URL, up2.URL), `"type":"openai"`, `"type":"openai","api_key_env":"UNSET_KEY"`, 1)
	r = route(t, tenantCfg(t, s, cfg), "m")
	before := up4.Requests.Load()
	if text, _, _ := drain(t, s.Open(context.Background(), r, userReq("q"))); text != "from fallback" || up4.Requests.Load() != before {
		t.Fatalf("missing key: %q", text)
	}

	// Nothing listening: a connect error, retried, then reported as such.
	r = route(t, tenantCfg(t, s, upstreamCfg("http://127.0.0.1:1/v1")), "m")
	st = s.Open(context.Background(), r, userReq("q"))
	drain(t, st)
	if e := st.Err(); e == nil || e.Kind != KindConnect || e.HTTPStatus() != 502 {
		t.Fatalf("connect: %+v", e)
	}
}

func TestNoRetryAfterFirstToken(t *testing.T) {
	s := newService(nil)
	for _, b := range []llmtest.Behavior{
		{Fail: true, FailAfter: 2},            // an error event midway
		{Fail: true, FailAfter: 2, Cut: true}, // the connection cut midway
		{Stall: true, StallAfter: 2},          // the idle timeout midway
		{Tokens: []string{"a", "b"}, NoUsage: true, Fail: true, FailAfter: 2, Cut: true},
	} {
		up := llmtest.New(t, func(int, *llmtest.Request) llmtest.Behavior { return b })
		r := route(t, tenantCfg(t, s, upstreamCfg(up.URL)), "m")
		st := s.Open(context.Background(), r, userReq("q"))
		text, last, _ := drain(t, st)
		if text != strings.Join(llmtest.DefaultTokens[:2], "") && text != "ab" {
			t.Errorf("%+v: text %q", b, text)
		}
		if last.Error == "" || st.Err() == nil || up.Requests.Load() != 1 {
			t.Errorf("%+v: last %+v err %v, %d requests", b, last, st.Err(), up.Requests.Load())
		}
		// Tokens streamed before the failure count.
		if u := st.Usage(); u.CompletionTokens != 2 || u.PromptTokens != st.PromptEstimate() {
			t.Errorf("%+v: usage %+v", b, u)
		}
	}
}

func TestCloseCancelsUpstream(t *testing.T) {
	up := llmtest.New(t, func(int, *llmtest.Request) llmtest.Behavior {
		return llmtest.Behavior{Tokens: []string{"a", "b", "c"}, Stall: true, StallAfter: 1}
	})
	s := newService(nil)
	r := route(t, tenantCfg(t, s, strings.ReplaceAll(upstreamCfg(up.URL), "300ms", "30s")), "m")
	st := s.Open(context.Background(), r, userReq("q"))
	if ev := <-st.Events(); ev.Delta != "a" {
		t.Fatalf("first event %+v", ev)
	}
	start := time.Now()
	st.Close()
	waitFor(t, func() bool { return up.Cancelled.Load() == 1 }, "the upstream request to be cancelled")
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Fatalf("cancellation took %v", d)
	}
	if st.Err() == nil || st.Err().Kind != KindCanceled || st.Usage().CompletionTokens != 1 {
		t.Fatalf("after Close: %+v %+v", st.Err(), st.Usage())
	}
	// Cancelling the context does the same.
	ctx, cancel := context.WithCancel(context.Background())
	st = s.Open(ctx, r, userReq("q2"))
	<-st.Events()
	cancel()
	waitFor(t, func() bool { return up.Cancelled.Load() == 2 }, "the second upstream request to be cancelled")
	st.Close()
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
