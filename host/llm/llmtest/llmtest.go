// Package llmtest is a fake OpenAI-compatible chat completions server for tests and benchmarks: a real
// HTTP server on 127.0.0.1 that streams server-sent events like OpenAI does, and can be told to fail
// before the stream, stall, fail midway or cut the connection. It counts requests and cancellations (a
// request whose client went away before the response ended) and records when each was cancelled.
package llmtest

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"time"

	"github.com/plinth-dev/plinth/abi"
)

// Behavior is what the server does for one request. The zero value streams DefaultTokens at once.
type Behavior struct {
	// Status, when set, answers with this status and an OpenAI error body instead of a stream.
	Status int
	// Tokens are the content deltas; nil means DefaultTokens.
	Tokens []string
	// FirstDelay is the wait before the first token; Delay the wait between tokens.
	FirstDelay, Delay time.Duration
	// Stall hangs after StallAfter tokens until the client goes away.
	Stall      bool
	StallAfter int
	// Fail ends the stream after FailAfter tokens: with an error event, or by cutting the connection
	// when Cut is set.
	Fail      bool
	FailAfter int
	Cut       bool
	// NoUsage leaves out the usage chunk even when the request asks for it.
	NoUsage bool
	// Model is the model name reported in chunks; "" echoes the request's.
	Model string
	// Usage is the usage reported; zero means 11 prompt tokens and one completion token per token.
	Usage abi.Usage
}

// DefaultTokens are streamed when a Behavior names none.
var DefaultTokens = []string{"Hello", " from", " the", " fake", " upstream", "."}

// Request is a request the server received.
type Request struct {
	Model         string
	Messages      []abi.Message
	Stream        bool
	IncludeUsage  bool
	MaxTokens     int64
	Temperature   *float64
	Authorization string
	// Key identifies the request in CancelledAt: the content of its last message.
	Key string
}

// Upstream is the fake server.
type Upstream struct {
	// URL is the API base URL (ending in /v1), as a provider's base_url.
	URL string
	srv *httptest.Server

	// Requests counts requests; Cancelled those whose client went away before the response ended;
	// Completed those answered to the end; Active those in progress.
	Requests, Cancelled, Completed, Active atomic.Int64

	mu          sync.Mutex
	script      func(n int, r *Request) Behavior // guarded by mu
	received    []*Request                       // guarded by mu
	cancelledAt map[string]time.Time             // by Request.Key; guarded by mu
}

// New starts a server on 127.0.0.1 and stops it when the test ends. script decides each request's
// behaviour from its sequence number (from 1) and content; nil streams DefaultTokens.
func New(t interface{ Cleanup(func()) }, script func(n int, r *Request) Behavior) *Upstream {
	u := Start(script)
	t.Cleanup(u.Close)
	return u
}

// Start starts a server; Close stops it.
func Start(script func(n int, r *Request) Behavior) *Upstream {
	u := &Upstream{script: script, cancelledAt: map[string]time.Time{}}
	u.srv = httptest.NewUnstartedServer(http.HandlerFunc(u.serve))
	u.srv.Config.ReadHeaderTimeout = 10 * time.Second
	u.srv.Start()
	u.URL = u.srv.URL + "/v1"
	return u
}

// Close stops the server, closing open connections.
func (u *Upstream) Close() {
	u.srv.CloseClientConnections()
	u.srv.Close()
}

// SetScript replaces the script.
func (u *Upstream) SetScript(script func(n int, r *Request) Behavior) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.script = script
}

// Received returns the requests received so far.
func (u *Upstream) Received() []*Request {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]*Request(nil), u.received...)
}

// Last returns the last request received, or nil.
func (u *Upstream) Last() *Request {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.received) == 0 {
		return nil
	}
	return u.received[len(u.received)-1]
}

// CancelledAt returns when the request with the given key saw its client go away.
func (u *Upstream) CancelledAt(key string) (time.Time, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	t, ok := u.cancelledAt[key]
	return t, ok
}

type wireRequest struct {
	Model    string `json:"model"`
	Messages []struct {
		Role    string `json:"role"`
		Content any    `json:"content"`
		Name    string `json:"name"`
	} `json:"messages"`
	Stream        bool `json:"stream"`
	StreamOptions *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	MaxTokens   int64    `json:"max_tokens"`
	Temperature *float64 `json:"temperature"`
}

func (u *Upstream) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/v1/chat/completions" {
		writeError(w, http.StatusNotFound, "no route "+r.URL.Path)
		return
	}
	body, _ := io.ReadAll(r.Body)
	var wr wireRequest
	if err := json.Unmarshal(body, &wr); err != nil {
		writeError(w, http.StatusBadRequest, "malformed JSON: "+err.Error())
		return
	}
	req := &Request{Model: wr.Model, Stream: wr.Stream, MaxTokens: wr.MaxTokens, Temperature: wr.Temperature,
		Authorization: r.Header.Get("Authorization")}
	req.IncludeUsage = wr.StreamOptions != nil && wr.StreamOptions.IncludeUsage
	for _, m := range wr.Messages {
		text, _ := m.Content.(string)
		req.Messages = append(req.Messages, abi.Message{Role: m.Role, Content: text, Name: m.Name})
	}
	if n := len(req.Messages); n > 0 {
		req.Key = req.Messages[n-1].Content
	}
	n := int(u.Requests.Add(1))
	u.Active.Add(1)
	defer u.Active.Add(-1)
	u.mu.Lock()
	u.received = append(u.received, req)
	script := u.script
	u.mu.Unlock()
	var b Behavior
	if script != nil {
		b = script(n, req)
	}
	if b.Status != 0 {
		writeError(w, b.Status, fmt.Sprintf("scripted failure %d", b.Status))
		u.Completed.Add(1)
		return
	}
	tokens := b.Tokens
	if tokens == nil {
		tokens = DefaultTokens
	}
	model := b.Model
	if model == "" {
		model = req.Model
	}
	usage := b.Usage
	if usage == (abi.Usage{}) {
		usage = abi.Usage{PromptTokens: 11, CompletionTokens: int64(len(tokens))}
	}
	if !req.Stream {
		u.serveWhole(w, r, req, &b, tokens, model, usage)
		return
	}
	u.serveStream(w, r, req, &b, tokens, model, usage)
}

// wait sleeps for d or until the client goes away; false means it went away (and was counted).
func (u *Upstream) wait(r *http.Request, req *Request, d time.Duration) bool {
	if d <= 0 {
		select {
		case <-r.Context().Done():
			u.cancelled(req)
			return false
		default:
			return true
		}
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-r.Context().Done():
		u.cancelled(req)
		return false
	case <-t.C:
		return true
	}
}

func (u *Upstream) cancelled(req *Request) {
	u.Cancelled.Add(1)
	u.mu.Lock()
	u.cancelledAt[req.Key] = time.Now()
	u.mu.Unlock()
}

func (u *Upstream) serveStream(w http.ResponseWriter, r *http.Request, req *Request, b *Behavior, tokens []string, model string, usage abi.Usage) {
	flusher := w.(http.Flusher)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	id := fmt.Sprintf("chatcmpl-fake%d", u.Requests.Load())
	created := time.Now().Unix()
	send := func(v any) bool {
		data, _ := json.Marshal(v)
		if _, err := fmt.Fprintf(w, "data: %s\n\n", data); err != nil {
			u.cancelled(req)
			return false
		}
		flusher.Flush()
		return true
	}
	chunk := func(delta map[string]any, finish any) map[string]any {
		c := map[string]any{"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
			"choices": []any{map[string]any{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": nil}}}
		if req.IncludeUsage {
			c["usage"] = nil
		}
		return c
	}
	if !send(chunk(map[string]any{"role": "assistant", "content": ""}, nil)) {
		return
	}
	if !u.wait(r, req, b.FirstDelay) {
		return
	}
	for i, tok := range tokens {
		if b.Stall && i == b.StallAfter {
			<-r.Context().Done()
			u.cancelled(req)
			return
		}
		if b.Fail && i == b.FailAfter {
			u.fail(w, b)
			return
		}
		if i > 0 && !u.wait(r, req, b.Delay) {
			return
		}
		if !send(chunk(map[string]any{"content": tok}, nil)) {
			return
		}
	}
	if b.Stall && b.StallAfter >= len(tokens) {
		<-r.Context().Done()
		u.cancelled(req)
		return
	}
	if b.Fail && b.FailAfter >= len(tokens) {
		u.fail(w, b)
		return
	}
	if !send(chunk(map[string]any{}, "stop")) {
		return
	}
	if req.IncludeUsage && !b.NoUsage {
		if !send(map[string]any{"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
			"choices": []any{}, "usage": map[string]any{"prompt_tokens": usage.PromptTokens,
				"completion_tokens": usage.CompletionTokens, "total_tokens": usage.PromptTokens + usage.CompletionTokens}}) {
			return
		}
	}
	fmt.Fprint(w, "data: [DONE]\n\n")
	flusher.Flush()
	u.Completed.Add(1)
}

func (u *Upstream) fail(w http.ResponseWriter, b *Behavior) {
	if b.Cut {
		if hj, ok := w.(http.Hijacker); ok {
			if conn, _, err := hj.Hijack(); err == nil {
				conn.Close()
				return
			}
		}
		panic(http.ErrAbortHandler)
	}
	fmt.Fprint(w, `data: {"error":{"message":"scripted failure midway","type":"server_error","param":null,"code":null}}`+"\n\n")
	w.(http.Flusher).Flush()
}

func (u *Upstream) serveWhole(w http.ResponseWriter, r *http.Request, req *Request, b *Behavior, tokens []string, model string, usage abi.Usage) {
	if !u.wait(r, req, b.FirstDelay+time.Duration(len(tokens))*b.Delay) {
		return
	}
	text := ""
	for _, t := range tokens {
		text += t
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"id": "chatcmpl-fake", "object": "chat.completion",
		"created": time.Now().Unix(), "model": model,
		"choices": []any{map[string]any{"index": 0, "message": map[string]any{"role": "assistant", "content": text},
			"finish_reason": "stop"}},
		"usage": map[string]any{"prompt_tokens": usage.PromptTokens, "completion_tokens": usage.CompletionTokens,
			"total_tokens": usage.PromptTokens + usage.CompletionTokens}})
	u.Completed.Add(1)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{"message": msg, "type": "server_error",
		"param": nil, "code": nil}})
}
