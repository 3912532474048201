package server

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/abi"
	"github.com/plinth-dev/plinth/abi/gcra"
	"github.com/plinth-dev/plinth/host/llm"
	"github.com/plinth-dev/plinth/host/llm/llmtest"
)

// Tests of the LLM and response-streaming host calls, through the streamguest fixture plugin of tenant
// g (see host/llm/llmtest/streamguest). They run as subtests of TestChat, which builds the plugins once.

func testGuestLLMCalls(t *testing.T, env *chatEnv) {
	env.up.SetScript(nil)
	answer := strings.Join(llmtest.DefaultTokens, "")
	r := do(t, "POST", env.url+"/v1/guest/complete", keyG, "guest question")
	if r.status != 200 || r.body != answer || r.header.Get("X-Completion-Tokens") != "6" {
		t.Fatalf("complete: %d %q %v", r.status, r.body, r.header)
	}
	if last := env.up.Last(); last.Key != "guest question" || last.Model != "fake" {
		t.Fatalf("upstream saw %+v", last)
	}
	// The extractive model through a plugin: no sources in the messages, so it says so.
	r = do(t, "POST", env.url+"/v1/guest/complete?"+llm.ExtractiveModel, keyG, "q")
	if r.status != 200 || !strings.Contains(r.body, "I found no retrieved documents") {
		t.Fatalf("extractive: %d %q", r.status, r.body)
	}
	// An unknown model is llm_open's StatusNotFound, reported by the plugin.
	r = do(t, "POST", env.url+"/v1/guest/complete?gpt-9", keyG, "q")
	if r.status != 500 || r.err.Code != "plugin_handler_error" || !strings.Contains(r.err.Message, "llm: not found") {
		t.Fatalf("unknown model: %d %s", r.status, r.body)
	}
}

// testGuestLLMTokens: the tokens of a plugin's own LLM calls (from the prompt hook of a chat completion
// and from a handle hook) are charged to the key's token budget when the call ends, and a request
// arriving with the budget overdrawn is refused.
func testGuestLLMTokens(t *testing.T, env *chatEnv) {
	env.up.SetScript(nil)
	rl := env.cur.Load().tenants["h"].hooks[abi.HookRateLimit]
	remaining := func() int64 {
		hc := hostCall{s: env.Server, plugin: rl}
		return env.limiter.Take(hc.scopedKey([]byte("tokens:kh")), gcra.Params{Limit: guestTokenBudget, Period: time.Minute}).Remaining
	}
	const perCall = 11 + 6 // the fake upstream's usage report for the default tokens
	// A chat completion whose prompt hook rewrites the question with a completion of its own: the
	// reservation is settled with both.
	r, c := chat(t, env.url, keyH, `{"max_tokens": 5, "messages": [{"role": "user", "content": "rewrite: spend"}]}`)
	if r.status != 200 || c.Usage.TotalTokens != perCall {
		t.Fatalf("chat: %d %s", r.status, r.body)
	}
	if last := env.up.Last(); last.Key != strings.Join(llmtest.DefaultTokens, "") {
		t.Fatalf("the completion was asked %q, not the rewritten question", last.Key)
	}
	if got := remaining(); got != guestTokenBudget-2*perCall {
		t.Fatalf("after the chat completion: %d tokens left, want %d", got, guestTokenBudget-2*perCall)
	}
	// A request for the handle hook is admitted while the budget is not overdrawn and charged its call's.
	r = do(t, "POST", env.url+"/v1/guest/complete", keyH, "spend")
	if r.status != 200 || r.header.Get("X-Completion-Tokens") != "6" {
		t.Fatalf("guest completion: %d %s", r.status, r.body)
	}
	if got := remaining(); got != 0 {
		t.Fatalf("after the guest completion: %d tokens left, want 0 (overdrawn)", got)
	}
	// 51 of 40 spent: the budget is overdrawn, and requests are refused until it refills.
	r = do(t, "POST", env.url+"/v1/guest/complete", keyH, "one more")
	if r.status != 429 || !strings.Contains(r.err.Message, "tokens") || r.header.Get("Retry-After") == "" {
		t.Fatalf("overdrawn budget: %d %v %s", r.status, r.header, r.body)
	}
	// Requests of another tenant's plugin are not charged here.
	if r := do(t, "POST", env.url+"/v1/guest/complete", keyG, "elsewhere"); r.status != 200 || remaining() != 0 {
		t.Fatalf("tenant g: %d, tenant h's budget at %d", r.status, remaining())
	}
}

func testGuestStreams(t *testing.T, env *chatEnv) {
	env.up.SetScript(nil)
	r := do(t, "POST", env.url+"/v1/guest/sse", keyG, "stream me")
	want := ""
	for _, tok := range llmtest.DefaultTokens {
		want += "data: " + tok + "\n\n"
	}
	want += "data: finish: stop\n\ndata: [DONE]\n\n"
	if r.status != 200 || r.header.Get("Content-Type") != "text/event-stream" || r.body != want {
		t.Fatalf("sse: %d %v\n%q", r.status, r.header, r.body)
	}
	// Raw chunks with a status and headers of the plugin's choosing; connection-level headers are dropped.
	r = do(t, "GET", env.url+"/v1/guest/raw", keyG, "")
	if r.status != 201 || r.header.Get("X-Kind") != "raw" || r.body != "one\ntwo\nthree\n" {
		t.Fatalf("raw: %d %v %q", r.status, r.header, r.body)
	}
	// resp_start may be called once.
	r = do(t, "GET", env.url+"/v1/guest/twice", keyG, "")
	if r.status != 200 || r.body != "second start: start response: invalid argument" {
		t.Fatalf("twice: %d %q", r.status, r.body)
	}
}

// testGuestLeavesNothingOpen: streams a plugin leaves open are closed when its call returns, cancelling
// their upstream requests.
func testGuestLeavesNothingOpen(t *testing.T, env *chatEnv) {
	env.up.SetScript(func(int, *llmtest.Request) llmtest.Behavior {
		return llmtest.Behavior{Stall: true, StallAfter: 1}
	})
	received := func(key string) bool {
		for _, r := range env.up.Received() {
			if r.Key == key {
				return true
			}
		}
		return false
	}
	for _, path := range []string{"abandon", "noread"} {
		key := "leave open " + path
		r := do(t, "POST", env.url+"/v1/guest/"+path, keyG, key)
		if r.status != 200 {
			t.Fatalf("%s: %d %s", path, r.status, r.body)
		}
		// abandon read a token, so its request reached the upstream; noread's may have been cancelled
		// before it was sent. Either way none may still be running.
		waitUntil(t, func() bool { return env.up.Active.Load() == 0 }, path+": no upstream request running")
		if _, cancelled := env.up.CancelledAt(key); received(key) != cancelled || (path == "abandon" && !cancelled) {
			t.Fatalf("%s: received %v, cancelled %v", path, received(key), cancelled)
		}
	}
}

// testGuestClientDisconnect: a client that leaves a plugin's streamed response ends the plugin's
// writes (ErrClientGone) and cancels the upstream.
func testGuestClientDisconnect(t *testing.T, env *chatEnv) {
	tokens := make([]string, 100)
	for i := range tokens {
		tokens[i] = fmt.Sprintf(" t%d", i)
	}
	env.up.SetScript(func(int, *llmtest.Request) llmtest.Behavior {
		return llmtest.Behavior{Tokens: tokens, Delay: 50 * time.Millisecond}
	})
	conn, err := net.Dial("tcp", strings.TrimPrefix(env.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	const key = "guest disconnect"
	fmt.Fprintf(conn, "POST /v1/guest/sse HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s", keyG, len(key), key)
	buf := make([]byte, 4096)
	var got strings.Builder
	for !strings.Contains(got.String(), "data:  t2") {
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("reading: %v (%q)", err, got.String())
		}
		got.Write(buf[:n])
	}
	if !strings.Contains(got.String(), "Transfer-Encoding: chunked") {
		t.Fatalf("not streamed: %q", got.String())
	}
	cut := time.Now()
	conn.Close()
	waitUntil(t, func() bool { _, ok := env.up.CancelledAt(key); return ok }, "the upstream request to be cancelled")
	at, _ := env.up.CancelledAt(key)
	if d := at.Sub(cut); d > time.Second {
		t.Fatalf("upstream cancelled %v after the client left", d)
	}
	// The server keeps serving the tenant.
	env.up.SetScript(nil)
	if r := do(t, "POST", env.url+"/v1/guest/complete", keyG, "after"); r.status != 200 {
		t.Fatalf("after a disconnect: %d %s", r.status, r.body)
	}
}
