package server

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/plinth-dev/plinth/abi"
	"github.com/plinth-dev/plinth/host/llm"
	"github.com/plinth-dev/plinth/host/search"
	"github.com/plinth-dev/plinth/host/store"
)

// POST /v1/chat/completions: OpenAI's chat completions, with retrieval and the tenant's prompt hook.
//
//	prepare (before the ratelimit hook): parse and validate, resolve the model, estimate tokens
//	serve: conversation history → retrieval (rag) → prompt hook (or the default prompt)
//	       → LLM stream → JSON response, or server-sent events
//
// docs/chat.md is the reference. Token budgets: the estimate set in prepare is what the ratelimit
// plugin reserves; every path through serve settles it exactly once with the tokens really used
// (settleTokens), a streamed response when its stream ends, however it ends.

func init() {
	endpointRegistrars = append(endpointRegistrars, func(s *Server) {
		ep := s.route("POST", "/v1/chat/completions", "chat.completions", s.serveChat)
		ep.prepare = s.prepareChat
	})
}

// Chat limits and defaults.
const (
	maxChatMessages     = 1000
	defaultRAGResults   = 5
	maxRAGResults       = 50
	maxHistoryItems     = 100 // conversation items read as history; the prompt keeps the most recent
	completionAllowance = 512 // tokens reserved for the answer when the request sets no max_tokens
	ragTokenAllowance   = 250 // tokens reserved per retrieved chunk
	citationExcerpt     = 400 // bytes of chunk text in a citation
)

// Streaming timings. fasthttp reports a disconnected client only through a failed write. Where it can,
// the server watches the connection itself and cancels the upstream request the moment the client
// closes it (watchDisconnect). Everywhere, a stream idle for heartbeat writes SSE comments
// (": keep-alive"), which keep proxies from timing the stream out and notice a client that left: one
// write is not enough for that (the first write after the client left still succeeds; the peer answers
// it with a reset, and fasthttp's body pipe adds one more write before the failure reaches the stream
// writer), so a heartbeat is a burst of probes writes probeGap apart. statusWait is how long a streamed
// request waits for its first event before it commits to 200: an upstream that fails fast still gets an
// HTTP status and a JSON error.
var (
	heartbeat  = 250 * time.Millisecond
	probeGap   = 10 * time.Millisecond
	statusWait = 300 * time.Millisecond
)

// probes is the number of writes in a heartbeat burst.
const probes = 3

// chatRequest is the request body. Fields of OpenAI's API that Plinth cannot honour are refused by
// name; others that only tune sampling on OpenAI (seed, penalties, logit_bias, user...) are accepted and
// ignored.
type chatRequest struct {
	Model         string           `json:"model"`
	Messages      []chatMessageIn  `json:"messages"`
	Stream        bool             `json:"stream"`
	StreamOptions *json.RawMessage `json:"stream_options"`
	Temperature   *float64         `json:"temperature"`
	TopP          *float64         `json:"top_p"`
	MaxTokens     *int64           `json:"max_tokens"`
	MaxCompletion *int64           `json:"max_completion_tokens"`
	Stop          json.RawMessage  `json:"stop"`
	N             *int             `json:"n"`
	Tools         json.RawMessage  `json:"tools"`
	Functions     json.RawMessage  `json:"functions"`
	Response      *struct {
		Type string `json:"type"`
	} `json:"response_format"`
	Audio        json.RawMessage `json:"audio"`
	Modalities   []string        `json:"modalities"`
	RAG          *ragOptions     `json:"rag"`
	Conversation json.RawMessage `json:"conversation"`
}

type chatMessageIn struct {
	Role      string          `json:"role"`
	Content   json.RawMessage `json:"content"`
	Name      string          `json:"name"`
	ToolCalls json.RawMessage `json:"tool_calls"`
}

// ragOptions is the "rag" extension: retrieval from the tenant's vector stores.
type ragOptions struct {
	VectorStoreIDs []string        `json:"vector_store_ids"`
	Filters        json.RawMessage `json:"filters"`
	MaxNumResults  int             `json:"max_num_results"`
}

// chatPlan is what prepare hands to serve.
type chatPlan struct {
	messages     []abi.Message
	params       abi.Params
	model        string // as the client asked ("" for the default)
	tenant       *llm.Tenant
	stream       bool
	includeUsage bool
	rag          *ragOptions
	query        string // the retrieval query: the last user message
	conversation string
}

func param(code, name, msg string) *APIError {
	return &APIError{Status: fasthttp.StatusBadRequest, Type: typeInvalidRequest, Code: code, Param: name, Message: msg}
}

// prepareChat parses and validates the request, resolves the model and estimates its tokens.
func (s *Server) prepareChat(rc *reqCtx) *APIError {
	var req chatRequest
	body := rc.ctx.PostBody()
	if len(bytes.TrimSpace(body)) == 0 {
		return errInvalid("invalid_json", "the request needs a JSON body")
	}
	if err := json.Unmarshal(body, &req); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) && typeErr.Field != "" {
			return param("invalid_type", typeErr.Field, "invalid type for '"+typeErr.Field+"': expected "+typeErr.Type.String())
		}
		return errInvalid("invalid_json", "malformed JSON body: "+err.Error())
	}
	p := &chatPlan{model: req.Model, stream: req.Stream, rag: req.RAG}
	if len(req.Messages) == 0 {
		return param("missing_required_parameter", "messages", "messages must hold at least one message")
	}
	if len(req.Messages) > maxChatMessages {
		return param("invalid_value", "messages", "at most "+strconv.Itoa(maxChatMessages)+" messages per request")
	}
	for i := range req.Messages {
		m, e := chatMessage(&req.Messages[i], i)
		if e != nil {
			return e
		}
		p.messages = append(p.messages, m)
		if m.Role == "user" {
			p.query = m.Content
		}
	}
	if e := unsupported(&req); e != nil {
		return e
	}
	if req.StreamOptions != nil && string(*req.StreamOptions) != "null" {
		if !req.Stream {
			return param("invalid_value", "stream_options", "stream_options are only allowed when stream is true")
		}
		var so struct {
			IncludeUsage bool `json:"include_usage"`
		}
		if err := json.Unmarshal(*req.StreamOptions, &so); err != nil {
			return param("invalid_type", "stream_options", "stream_options must be an object")
		}
		p.includeUsage = so.IncludeUsage
	}
	var e *APIError
	if p.params, e = chatParams(&req); e != nil {
		return e
	}
	if len(req.Conversation) > 0 && string(req.Conversation) != "null" {
		var id string
		if json.Unmarshal(req.Conversation, &id) != nil {
			var obj struct {
				ID string `json:"id"`
			}
			if json.Unmarshal(req.Conversation, &obj) != nil || obj.ID == "" {
				return param("invalid_type", "conversation", "conversation must be a conversation id or {\"id\": ...}")
			}
			id = obj.ID
		}
		if s.store == nil {
			return &APIError{Status: fasthttp.StatusServiceUnavailable, Type: typeUnavailable, Code: "store_unavailable",
				Param: "conversation", Message: "this server runs without a data store: conversations are unavailable"}
		}
		p.conversation = id
	}
	if r := req.RAG; r != nil {
		if len(r.VectorStoreIDs) == 0 {
			return param("missing_required_parameter", "rag.vector_store_ids", "rag needs at least one vector store id")
		}
		if r.MaxNumResults == 0 {
			r.MaxNumResults = defaultRAGResults
		}
		if r.MaxNumResults < 1 || r.MaxNumResults > maxRAGResults {
			return param("invalid_value", "rag.max_num_results", "rag.max_num_results must be from 1 to "+strconv.Itoa(maxRAGResults))
		}
		if len(r.Filters) > 0 && string(r.Filters) == "null" {
			r.Filters = nil
		}
		if p.query == "" {
			return param("invalid_value", "messages", "rag needs a user message to search for")
		}
		if s.retriever == nil {
			return &APIError{Status: fasthttp.StatusServiceUnavailable, Type: typeUnavailable, Code: "retrieval_unavailable",
				Param: "rag", Message: "this server has no search service: the rag option is unavailable"}
		}
	}
	tn, err := s.llmService().Tenant(rc.trt.t.ID, rc.trt.t.LLM)
	if err != nil {
		s.log.Error("invalid tenant LLM configuration", "tenant", rc.trt.t.ID, "err", err)
		return &APIError{Status: fasthttp.StatusInternalServerError, Type: typeServer, Code: "llm_config_invalid",
			Message: "the tenant's LLM configuration is invalid: " + err.Error()}
	}
	if _, ok := tn.Resolve(req.Model); !ok {
		return errModelNotFound(req.Model)
	}
	p.tenant = tn

	// The token estimate the ratelimit hook reserves: the prompt as sent, an allowance per retrieved
	// chunk, and the answer's budget.
	tokens := llm.EstimateMessages(p.messages)
	if p.rag != nil {
		tokens += int64(p.rag.MaxNumResults) * ragTokenAllowance
	}
	if p.params.MaxTokens > 0 {
		tokens += p.params.MaxTokens
	} else {
		tokens += completionAllowance
	}
	rc.tokens = tokens
	rc.data = p
	return nil
}

// chatMessage converts one request message.
func chatMessage(in *chatMessageIn, i int) (abi.Message, *APIError) {
	where := "messages[" + strconv.Itoa(i) + "]"
	m := abi.Message{Role: in.Role, Name: in.Name}
	switch in.Role {
	case "system", "developer", "user", "assistant":
	case "tool", "function":
		return m, param("unsupported_value", where+".role", "tool and function messages are not supported")
	case "":
		return m, param("missing_required_parameter", where+".role", where+" needs a role")
	default:
		return m, param("invalid_value", where+".role", "unknown role '"+in.Role+"' (system, developer, user or assistant)")
	}
	if len(in.ToolCalls) > 0 && string(in.ToolCalls) != "null" {
		return m, param("unsupported_value", where+".tool_calls", "tool calls are not supported")
	}
	if len(in.Content) == 0 || string(in.Content) == "null" {
		if in.Role == "assistant" {
			return m, nil
		}
		return m, param("missing_required_parameter", where+".content", where+" needs content")
	}
	if json.Unmarshal(in.Content, &m.Content) == nil {
		return m, nil
	}
	var parts []struct {
		Type    string `json:"type"`
		Text    string `json:"text"`
		Refusal string `json:"refusal"`
	}
	if err := json.Unmarshal(in.Content, &parts); err != nil {
		return m, param("invalid_type", where+".content", "content must be a string or an array of content parts")
	}
	var texts []string
	for j, part := range parts {
		switch part.Type {
		case "text":
			texts = append(texts, part.Text)
		case "refusal":
			texts = append(texts, part.Refusal)
		default:
			return m, param("unsupported_value", where+".content["+strconv.Itoa(j)+"].type",
				"content parts of type '"+part.Type+"' are not supported (text only)")
		}
	}
	m.Content = strings.Join(texts, "\n")
	return m, nil
}

// unsupported refuses the parts of OpenAI's API that Plinth does not implement.
func unsupported(req *chatRequest) *APIError {
	switch {
	case req.N != nil && *req.N != 1:
		return param("unsupported_value", "n", "only n=1 is supported")
	case len(req.Tools) > 0 && string(req.Tools) != "null" && string(req.Tools) != "[]":
		return param("unsupported_parameter", "tools", "tools are not supported")
	case len(req.Functions) > 0 && string(req.Functions) != "null" && string(req.Functions) != "[]":
		return param("unsupported_parameter", "functions", "functions are not supported")
	case req.Response != nil && req.Response.Type != "" && req.Response.Type != "text":
		return param("unsupported_value", "response_format", "only the text response format is supported")
	case len(req.Audio) > 0 && string(req.Audio) != "null":
		return param("unsupported_parameter", "audio", "audio output is not supported")
	}
	for _, m := range req.Modalities {
		if m != "text" {
			return param("unsupported_value", "modalities", "only the text modality is supported")
		}
	}
	return nil
}

// chatParams reads and checks the generation parameters.
func chatParams(req *chatRequest) (abi.Params, *APIError) {
	var p abi.Params
	if t := req.Temperature; t != nil {
		if *t < 0 || *t > 2 {
			return p, param("invalid_value", "temperature", "temperature must be from 0 to 2")
		}
		p.Temperature = t
	}
	if t := req.TopP; t != nil {
		if *t < 0 || *t > 1 {
			return p, param("invalid_value", "top_p", "top_p must be from 0 to 1")
		}
		p.TopP = t
	}
	for _, c := range []struct {
		name string
		v    *int64
	}{{"max_tokens", req.MaxTokens}, {"max_completion_tokens", req.MaxCompletion}} {
		if c.v != nil {
			if *c.v < 1 {
				return p, param("invalid_value", c.name, c.name+" must be at least 1")
			}
			p.MaxTokens = *c.v
		}
	}
	if len(req.Stop) > 0 && string(req.Stop) != "null" {
		var one string
		if json.Unmarshal(req.Stop, &one) == nil {
			p.Stop = []string{one}
		} else if err := json.Unmarshal(req.Stop, &p.Stop); err != nil {
			return p, param("invalid_type", "stop", "stop must be a string or an array of strings")
		}
		if len(p.Stop) > 4 {
			return p, param("invalid_value", "stop", "at most 4 stop sequences")
		}
	}
	return p, nil
}

// llmError is the client's error for a completion that failed before its response started.
func llmError(e *llm.Error) *APIError {
	return &APIError{Status: e.HTTPStatus(), Type: e.Type(), Code: e.Code(), Message: e.Message}
}

// chatTurn is everything a completion needs once its request context is gone: a streamed response
// outlives the handler, whose reqCtx goes back to the pool.
type chatTurn struct {
	s            *Server
	id           string
	created      int64
	model        string // the route's model; replaced by the name the provider reports
	tenant       string
	rid          string
	quota        store.Quota
	conversation string
	newItems     []abi.Message // the client's messages, appended to the conversation with the answer
	hits         []abi.SearchHit
	cite         bool // the request used rag: responses list citations
	includeUsage bool

	st *llm.Stream
	// The token reservations of the ratelimit hook, settled when the stream ends with the completion's
	// tokens and pluginTokens (see reqCtx).
	reservations []abi.TokenReservation
	ratelimit    *pluginRT
	pluginTokens int64
}

// serveChat serves a prepared chat completion.
func (s *Server) serveChat(rc *reqCtx) {
	p := rc.data.(*chatPlan)
	fail := func(e *APIError) {
		s.settleTokens(rc, 0)
		writeError(rc.ctx, e)
	}
	t := &chatTurn{s: s, id: newCompletionID(), created: s.now().Unix(), tenant: rc.tenantID(), rid: string(rc.rid),
		quota: rc.quota(), conversation: p.conversation, newItems: p.messages, cite: p.rag != nil,
		includeUsage: p.includeUsage}

	// 1. History.
	var history []abi.Message
	if p.conversation != "" {
		items, _, err := s.store.ListItems(t.tenant, p.conversation, "", maxHistoryItems, true)
		if err != nil {
			e := s.storeError(rc, "conversation", err)
			e.Param = "conversation"
			fail(e)
			return
		}
		for i := len(items) - 1; i >= 0; i-- {
			if m, ok := itemMessage(items[i].JSON); ok {
				history = append(history, m)
			}
		}
	}

	// 2. Retrieval.
	if r := p.rag; r != nil {
		res, err := s.retriever.Search(context.Background(), t.tenant, &abi.SearchRequest{StoreIDs: r.VectorStoreIDs,
			Query: p.query, MaxResults: uint32(r.MaxNumResults), Filters: r.Filters})
		var inErr *search.InputError
		var embErr *search.EmbedderError
		switch {
		case errors.As(err, &inErr) && inErr.Code == "vector_store_not_found", errors.Is(err, store.ErrNotFound):
			fail(&APIError{Status: fasthttp.StatusNotFound, Type: typeNotFound, Code: "vector_store_not_found",
				Param: "rag.vector_store_ids", Message: "retrieval: " + err.Error()})
			return
		case errors.As(err, &inErr):
			fail(param(inErr.Code, "rag."+inErr.Param, "retrieval: "+inErr.Msg))
			return
		case errors.As(err, &embErr):
			fail(&APIError{Status: fasthttp.StatusBadGateway, Type: typeServer, Code: "embedder_error", Param: "rag",
				Message: "retrieval: " + embErr.Error()})
			return
		case err != nil:
			s.log.Error("chat retrieval failed", "tenant", t.tenant, "request_id", t.rid, "err", err)
			fail(errInternal("retrieval failed; the request id identifies it in the server log"))
			return
		case res.Error != "":
			fail(param("invalid_request", "rag", "retrieval: "+res.Error))
			return
		}
		t.hits = res.Hits
	}

	// 3. The prompt: the tenant's prompt plugin, or the default prompt.
	in := abi.PromptInput{Messages: p.messages, History: history, Chunks: t.hits, Tags: rc.route.Tags,
		Model: p.model, Params: p.params, KeyLabel: rc.key.Label}
	var out abi.PromptOutput
	hp := rc.trt.hooks[abi.HookPrompt]
	if hp != nil {
		res, tokens, err := s.callCountingTokens(rc.ctx, hp, abi.HookPrompt, t.rid, in.AppendTo(rc.in[:0]), rc.out)
		rc.out, rc.pluginTokens = res, tokens
		if err != nil {
			fail(pluginError(err))
			return
		}
		if err := out.Decode(res); err != nil {
			fail(abiViolation(hp, abi.HookPrompt, err))
			return
		}
		if out.Error != "" {
			fail(handlerError(hp.label, "prompt", out.Error))
			return
		}
		if len(out.Messages) == 0 {
			fail(abiViolation(hp, abi.HookPrompt, errors.New("no messages to send")))
			return
		}
	} else {
		out = llm.BuildPrompt(&in, llm.PromptOptions{})
	}
	model := p.model
	if out.Model != "" {
		model = out.Model
	}
	route, ok := p.tenant.Resolve(model)
	if !ok && hp == nil {
		fail(errModelNotFound(model))
		return
	}
	if !ok {
		fail(&APIError{Status: fasthttp.StatusInternalServerError, Type: typePlugin, Code: "plugin_handler_error",
			Message: "plugin " + hp.label + " prompt hook chose the model " + strconv.Quote(model) + ", which the tenant does not have"})
		return
	}
	t.model = route.Model

	// 4. The completion.
	t.st = s.llmService().Open(context.Background(), route, llm.Request{Messages: out.Messages,
		Params: p.params.Merge(out.Params), Sources: t.hits})
	if !p.stream {
		s.completeWhole(rc, t)
		return
	}
	s.startStream(rc, t)
}

func newCompletionID() string {
	var b [12]byte
	rand.Read(b[:])
	return "chatcmpl-" + hex.EncodeToString(b[:])
}

// completeWhole answers a non-streamed completion.
func (s *Server) completeWhole(rc *reqCtx, t *chatTurn) {
	// Nothing is written until the completion ends: watch for a client that leaves meanwhile.
	stopWatch, _ := watchDisconnect(rc.ctx.Conn(), t.st.Close)
	var text strings.Builder
	finish := ""
	for ev := range t.st.Events() {
		if ev.Model != "" {
			t.model = ev.Model
		}
		text.WriteString(ev.Delta)
		if ev.FinishReason != "" {
			finish = ev.FinishReason
		}
	}
	stopWatch()
	t.st.Close()
	usage := t.st.Usage()
	s.settleTokens(rc, usage.PromptTokens+usage.CompletionTokens)
	if e := t.st.Err(); e != nil {
		t.logFailure(e)
		ae := llmError(e)
		if text.Len() > 0 {
			// It failed midway: a partial answer is no answer.
			ae = &APIError{Status: fasthttp.StatusBadGateway, Type: typeServer, Code: e.Code(),
				Message: "the completion failed midway: " + e.Message}
		}
		writeError(rc.ctx, ae)
		return
	}
	answer := text.String()
	t.remember(answer)
	type message struct {
		Role    string  `json:"role"`
		Content string  `json:"content"`
		Refusal *string `json:"refusal"`
	}
	type choice struct {
		Index        int     `json:"index"`
		Message      message `json:"message"`
		Logprobs     *int    `json:"logprobs"`
		FinishReason string  `json:"finish_reason"`
	}
	resp := struct {
		ID        string         `json:"id"`
		Object    string         `json:"object"`
		Created   int64          `json:"created"`
		Model     string         `json:"model"`
		Choices   []choice       `json:"choices"`
		Usage     usageJSON      `json:"usage"`
		Citations []citationJSON `json:"citations,omitempty"`
	}{ID: t.id, Object: "chat.completion", Created: t.created, Model: t.model,
		Choices: []choice{{Message: message{Role: "assistant", Content: answer}, FinishReason: finish}},
		Usage:   usageOf(usage), Citations: t.citations(answer)}
	if t.cite && resp.Citations == nil {
		resp.Citations = []citationJSON{}
	}
	writeJSON(rc.ctx, fasthttp.StatusOK, resp)
}

type usageJSON struct {
	PromptTokens     int64 `json:"prompt_tokens"`
	CompletionTokens int64 `json:"completion_tokens"`
	TotalTokens      int64 `json:"total_tokens"`
}

func usageOf(u abi.Usage) usageJSON {
	return usageJSON{PromptTokens: u.PromptTokens, CompletionTokens: u.CompletionTokens, TotalTokens: u.PromptTokens + u.CompletionTokens}
}

// citationJSON is one retrieved chunk in a response: source n is the chunk the prompt numbered [n].
type citationJSON struct {
	Index         int             `json:"index"`
	FileID        string          `json:"file_id"`
	Filename      string          `json:"filename"`
	VectorStoreID string          `json:"vector_store_id"`
	Score         float64         `json:"score"`
	Text          string          `json:"text"`
	Attributes    json.RawMessage `json:"attributes,omitempty"`
	Cited         bool            `json:"cited"`
}

// citations lists the retrieved chunks, each marked cited when the answer cites its number.
func (t *chatTurn) citations(answer string) []citationJSON {
	if !t.cite || len(t.hits) == 0 {
		return nil
	}
	cited := map[int]bool{}
	for _, n := range llm.CitedSources(answer, len(t.hits)) {
		cited[n] = true
	}
	out := make([]citationJSON, len(t.hits))
	for i, h := range t.hits {
		text := h.Text
		if len(text) > citationExcerpt {
			text = text[:citationExcerpt]
			for len(text) > 0 && text[len(text)-1]&0xC0 == 0x80 {
				text = text[:len(text)-1]
			}
			if len(text) > 0 && text[len(text)-1] >= 0xC0 {
				text = text[:len(text)-1]
			}
			text += "..."
		}
		var attrs json.RawMessage
		if len(h.Attributes) > 0 && json.Valid(h.Attributes) {
			attrs = h.Attributes
		}
		out[i] = citationJSON{Index: i + 1, FileID: h.DocumentID, Filename: h.Filename, VectorStoreID: h.StoreID,
			Score: h.Score, Text: text, Attributes: attrs, Cited: cited[i+1]}
	}
	return out
}

// remember appends the turn to its conversation: the client's messages and the answer. A failure
// (quota, a conversation deleted meanwhile) does not fail the completion: it is logged.
func (t *chatTurn) remember(answer string) {
	if t.conversation == "" {
		return
	}
	items := make([]json.RawMessage, 0, len(t.newItems)+1)
	for _, m := range t.newItems {
		items = append(items, messageItem(m))
	}
	items = append(items, messageItem(abi.Message{Role: "assistant", Content: answer}))
	if _, err := t.s.store.AppendItems(t.tenant, t.conversation, items, t.quota); err != nil {
		t.s.log.Warn("chat turn not appended to its conversation", "tenant", t.tenant, "conversation", t.conversation,
			"request_id", t.rid, "err", err)
	}
}

func (t *chatTurn) logFailure(e *llm.Error) {
	if e.Kind == llm.KindCanceled {
		return
	}
	t.s.log.Warn("chat completion failed", "tenant", t.tenant, "model", t.model, "provider", e.Provider,
		"request_id", t.rid, "err", e.Message)
}

// startStream commits a streamed completion: it waits up to statusWait for the first event (so an early
// failure still gets a status and a JSON error), then hands the stream to a stream writer.
func (s *Server) startStream(rc *reqCtx, t *chatTurn) {
	var first *abi.LLMEvent
	wait := time.NewTimer(statusWait)
	select {
	case ev, ok := <-t.st.Events():
		wait.Stop()
		if !ok || ev.Error != "" {
			t.st.Close()
			u := t.st.Usage()
			s.settleTokens(rc, u.PromptTokens+u.CompletionTokens)
			e := t.st.Err()
			if e == nil {
				e = &llm.Error{Kind: llm.KindUpstream, Message: "the completion ended without an answer"}
			}
			t.logFailure(e)
			writeError(rc.ctx, llmError(e))
			return
		}
		first = &ev
	case <-wait.C:
	}
	// The reservations are settled by the writer from here on.
	t.reservations, t.ratelimit, t.pluginTokens = rc.reservations, rc.ratelimit, rc.pluginTokens
	rc.reservations = nil

	rc.ctx.SetStatusCode(fasthttp.StatusOK)
	rc.ctx.SetContentType("text/event-stream; charset=utf-8")
	rc.ctx.Response.Header.Set("Cache-Control", "no-cache")
	rc.ctx.Response.Header.Set("X-Accel-Buffering", "no")
	conn := rc.ctx.Conn()
	stall := s.opts.WriteTimeout
	// A deadline set by the handler keeps fasthttp from applying WriteTimeout to the whole stream; the
	// writer moves it forward before each flush.
	rc.ctx.SetWriteDeadline(time.Now().Add(stall))
	rc.ctx.Response.ImmediateHeaderFlush = true
	rc.ctx.SetBodyStreamWriter(func(w *bufio.Writer) { t.write(w, conn, stall, first) })
}

// write is the stream writer of a streamed completion (it runs on fasthttp's goroutine, after the
// handler returned). It turns events into chunks, writes a heartbeat comment when the stream is idle,
// and on the first failed write or flush closes the stream, which cancels the upstream request. It
// always ends the stream, settles the token budget and, on success, records the turn.
func (t *chatTurn) write(w *bufio.Writer, conn net.Conn, stall time.Duration, first *abi.LLMEvent) {
	c := chunkWriter{t: t, w: w}
	flush := func() bool {
		conn.SetWriteDeadline(time.Now().Add(stall))
		if c.err == nil {
			c.err = w.Flush()
		}
		return c.err == nil
	}
	var text strings.Builder
	var final abi.LLMEvent
	handle := func(ev *abi.LLMEvent) {
		if ev.Model != "" {
			t.model = ev.Model
		}
		text.WriteString(ev.Delta)
		c.event(ev)
		if ev.FinishReason != "" || ev.Error != "" {
			final = *ev
		}
	}
	if first != nil {
		handle(first)
		flush()
	}
	stopWatch, _ := watchDisconnect(conn, t.st.Close)
	idle := time.NewTimer(heartbeat)
	defer idle.Stop()
	probe := 0 // writes of the current heartbeat burst
	events := t.st.Events()
loop:
	for c.err == nil {
		select {
		case ev, ok := <-events:
			if !ok {
				break loop
			}
			handle(&ev)
			// Coalesce what is already waiting into one flush.
		drain:
			for {
				select {
				case ev, ok := <-events:
					if !ok {
						break drain
					}
					handle(&ev)
				default:
					break drain
				}
			}
			flush()
			probe = 0
			idle.Reset(heartbeat)
		case <-idle.C:
			c.raw(": keep-alive\n\n")
			flush()
			if probe++; probe < probes {
				idle.Reset(probeGap)
			} else {
				probe = 0
				idle.Reset(heartbeat)
			}
		}
	}
	stopWatch()
	t.st.Close() // cancels the upstream request at once if the client went away
	err := t.st.Err()
	if c.err == nil {
		switch {
		case err != nil:
			c.errorEvent(err)
		case final.FinishReason == "":
			c.errorEvent(&llm.Error{Kind: llm.KindUpstream, Message: "the completion ended without a finish reason"})
		default:
			if cites := t.citations(text.String()); cites != nil || t.cite {
				c.citations(cites)
			}
			if t.includeUsage {
				c.usage(t.st.Usage())
			}
		}
		c.raw("data: [DONE]\n\n")
		flush()
	}
	u := t.st.Usage()
	t.s.settle(t.ratelimit, t.reservations, u.PromptTokens+u.CompletionTokens+t.pluginTokens)
	switch {
	case err != nil:
		t.logFailure(err)
	case c.err != nil:
		t.s.log.Debug("chat stream: client went away", "tenant", t.tenant, "request_id", t.rid)
	default:
		t.remember(text.String())
	}
}

// chunkWriter writes the SSE events of a completion. Writes after an error do nothing.
type chunkWriter struct {
	t        *chatTurn
	w        *bufio.Writer
	err      error
	sentRole bool
	buf      []byte
}

func (c *chunkWriter) raw(s string) {
	if c.err == nil {
		_, c.err = c.w.WriteString(s)
	}
}

// head starts a chunk object up to its choices.
func (c *chunkWriter) head() {
	b := append(c.buf[:0], `data: {"id":"`...)
	b = append(b, c.t.id...)
	b = append(b, `","object":"chat.completion.chunk","created":`...)
	b = strconv.AppendInt(b, c.t.created, 10)
	b = append(b, `,"model":`...)
	b = appendJSONString(b, c.t.model)
	c.buf = b
}

// choice writes a chunk with one choice: a delta (role and/or content) or the finish reason.
func (c *chunkWriter) choice(role bool, content *string, finish string) {
	c.head()
	b := append(c.buf, `,"choices":[{"index":0,"delta":{`...)
	if role {
		b = append(b, `"role":"assistant"`...)
		if content != nil {
			b = append(b, ',')
		}
	}
	if content != nil {
		b = append(b, `"content":`...)
		b = appendJSONString(b, *content)
	}
	b = append(b, `},"logprobs":null,"finish_reason":`...)
	if finish == "" {
		b = append(b, "null"...)
	} else {
		b = appendJSONString(b, finish)
	}
	b = append(b, "}]"...)
	if c.t.includeUsage {
		b = append(b, `,"usage":null`...)
	}
	b = append(b, "}\n\n"...)
	c.buf = b
	if c.err == nil {
		_, c.err = c.w.Write(b)
	}
}

// event writes the chunks of one stream event.
func (c *chunkWriter) event(ev *abi.LLMEvent) {
	if ev.Error != "" {
		return // written by errorEvent at the end, once
	}
	if !c.sentRole {
		c.sentRole = true
		empty := ""
		c.choice(true, &empty, "")
	}
	if ev.Delta != "" {
		c.choice(false, &ev.Delta, "")
	}
	if ev.FinishReason != "" {
		c.choice(false, nil, ev.FinishReason)
	}
}

// citations writes the citations chunk: no choices, a "citations" list.
func (c *chunkWriter) citations(cites []citationJSON) {
	if cites == nil {
		cites = []citationJSON{}
	}
	list, _ := json.Marshal(cites)
	c.head()
	b := append(c.buf, `,"choices":[]`...)
	if c.t.includeUsage {
		b = append(b, `,"usage":null`...)
	}
	b = append(b, `,"citations":`...)
	b = append(b, list...)
	b = append(b, "}\n\n"...)
	c.buf = b
	if c.err == nil {
		_, c.err = c.w.Write(b)
	}
}

// usage writes the final usage chunk of stream_options.include_usage.
func (c *chunkWriter) usage(u abi.Usage) {
	js, _ := json.Marshal(usageOf(u))
	c.head()
	b := append(c.buf, `,"choices":[],"usage":`...)
	b = append(b, js...)
	b = append(b, "}\n\n"...)
	c.buf = b
	if c.err == nil {
		_, c.err = c.w.Write(b)
	}
}

// errorEvent ends a failed stream: an OpenAI error object as the data of an event.
func (c *chunkWriter) errorEvent(e *llm.Error) {
	body, _ := json.Marshal(errorBody{Error: errorFields{Message: e.Message, Type: e.Type(), Code: e.Code()}})
	b := append(c.buf[:0], "data: "...)
	b = append(b, body...)
	b = append(b, "\n\n"...)
	c.buf = b
	if c.err == nil {
		_, c.err = c.w.Write(b)
	}
}

// appendJSONString appends s as a JSON string.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c != 0x7f {
			continue
		}
		b = append(b, s[start:i]...)
		switch c {
		case '"', '\\':
			b = append(b, '\\', c)
		case '\n':
			b = append(b, '\\', 'n')
		case '\r':
			b = append(b, '\\', 'r')
		case '\t':
			b = append(b, '\\', 't')
		default:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		}
		start = i + 1
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
