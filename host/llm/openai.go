package llm

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/packages/ssestream"

	"github.com/plinth-dev/plinth/abi"
)

// openAIProvider speaks the OpenAI chat completions API with streaming, through the official client
// library. Only what every OpenAI-compatible server understands is sent: messages (developer becomes
// system, which local servers know), temperature, top_p, max_tokens, stop, and stream_options with
// include_usage so the final chunk reports real usage.
//
// The client is built from explicit options only: the library's defaults read OPENAI_API_KEY,
// OPENAI_BASE_URL and friends from the environment, and a tenant must never get the operator's key by
// omission. Retries are ours (before the first token, with fallback), so the library's are off.
type openAIProvider struct {
	name      string
	baseURL   string
	hasKey    bool
	keyEnv    string // for messages: the variable's name, never its value
	tr        *http.Transport
	completer openai.ChatCompletionService
}

func (p *openAIProvider) transport() *http.Transport { return p.tr }

func newOpenAIProvider(name string, pc ProviderConfig, connect time.Duration, getenv func(string) string) *openAIProvider {
	base := pc.BaseURL
	if base == "" {
		base = "https://api.openai.com/v1"
	}
	if !strings.HasSuffix(base, "/") {
		base += "/"
	}
	dialer := &net.Dialer{Timeout: connect, KeepAlive: 30 * time.Second}
	transport := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dialer.DialContext,
		TLSHandshakeTimeout:   connect,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
	opts := []option.RequestOption{
		option.WithBaseURL(base),
		option.WithHTTPClient(&http.Client{Transport: transport}),
		option.WithMaxRetries(0),
	}
	p := &openAIProvider{name: name, baseURL: base, keyEnv: pc.APIKeyEnv, tr: transport}
	if pc.APIKeyEnv != "" {
		if key := getenv(pc.APIKeyEnv); key != "" {
			opts = append(opts, option.WithAPIKey(key))
			p.hasKey = true
		}
	}
	p.completer = openai.NewChatCompletionService(opts...)
	return p
}

// Open implements Provider.
func (p *openAIProvider) Open(ctx context.Context, req *Request) (Upstream, error) {
	if p.keyEnv != "" && !p.hasKey {
		return nil, errorf(KindProvider, p.name, 0, "the API key variable %s is not set in the server's environment", p.keyEnv)
	}
	params := openai.ChatCompletionNewParams{Model: req.Model}
	params.Messages = make([]openai.ChatCompletionMessageParamUnion, 0, len(req.Messages))
	for _, m := range req.Messages {
		params.Messages = append(params.Messages, openAIMessage(m))
	}
	if req.Params.Temperature != nil {
		params.Temperature = openai.Float(*req.Params.Temperature)
	}
	if req.Params.TopP != nil {
		params.TopP = openai.Float(*req.Params.TopP)
	}
	if req.Params.MaxTokens > 0 {
		params.MaxTokens = openai.Int(req.Params.MaxTokens)
	}
	if len(req.Params.Stop) > 0 {
		params.Stop.OfStringArray = req.Params.Stop
	}
	params.StreamOptions.IncludeUsage = openai.Bool(true)
	s := p.completer.NewStreaming(ctx, params)
	if err := s.Err(); err != nil {
		s.Close()
		return nil, p.classify(ctx, err)
	}
	return &openAIUpstream{p: p, ctx: ctx, s: s}, nil
}

func openAIMessage(m abi.Message) openai.ChatCompletionMessageParamUnion {
	switch m.Role {
	case "system", "developer":
		msg := openai.ChatCompletionSystemMessageParam{}
		msg.Content.OfString = openai.String(m.Content)
		if m.Name != "" {
			msg.Name = openai.String(m.Name)
		}
		return openai.ChatCompletionMessageParamUnion{OfSystem: &msg}
	case "assistant":
		msg := openai.ChatCompletionAssistantMessageParam{}
		msg.Content.OfString = openai.String(m.Content)
		if m.Name != "" {
			msg.Name = openai.String(m.Name)
		}
		return openai.ChatCompletionMessageParamUnion{OfAssistant: &msg}
	default:
		msg := openai.ChatCompletionUserMessageParam{}
		msg.Content.OfString = openai.String(m.Content)
		if m.Name != "" {
			msg.Name = openai.String(m.Name)
		}
		return openai.ChatCompletionMessageParamUnion{OfUser: &msg}
	}
}

// classify turns a client library or transport error into an *Error. The cause of a cancelled context
// (our timeouts) wins over the transport's view of it.
func (p *openAIProvider) classify(ctx context.Context, err error) *Error {
	if cause := context.Cause(ctx); cause != nil {
		var e *Error
		if errors.As(cause, &e) {
			return e
		}
		return errorf(KindCanceled, p.name, 0, "request cancelled")
	}
	var apiErr *openai.Error
	if errors.As(err, &apiErr) {
		msg := apiErr.Message
		if len(msg) > 500 {
			msg = msg[:500] + "..."
		}
		status := apiErr.StatusCode
		switch {
		case status == http.StatusTooManyRequests:
			return errorf(KindRateLimited, p.name, status, "rate limited by the provider (429)")
		case status == http.StatusUnauthorized || status == http.StatusForbidden:
			return errorf(KindProvider, p.name, status, "the provider refused the credentials (%d); check api_key_env", status)
		case status == http.StatusNotFound:
			return errorf(KindProvider, p.name, status, "the provider does not know the model or path (404): %s", msg)
		case status == http.StatusBadRequest || status == http.StatusRequestEntityTooLarge || status == http.StatusUnprocessableEntity:
			return errorf(KindInvalid, p.name, status, "the provider refused the request (%d): %s", status, msg)
		case status >= 500:
			return errorf(KindUpstream, p.name, status, "the provider failed (%d)", status)
		}
		return errorf(KindProvider, p.name, status, "the provider answered %d", status)
	}
	var streamErr *ssestream.StreamError
	if errors.As(err, &streamErr) {
		return errorf(KindUpstream, p.name, 0, "the provider reported an error in the stream")
	}
	var netErr net.Error
	if errors.As(err, &netErr) && netErr.Timeout() {
		return errorf(KindTimeout, p.name, 0, "connection timed out")
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) && opErr.Op == "dial" {
		return errorf(KindConnect, p.name, 0, "cannot connect to %s", p.baseURL)
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return errorf(KindUpstream, p.name, 0, "the connection closed before the response ended")
	}
	return errorf(KindUpstream, p.name, 0, "request failed: %s", safeTransportError(err))
}

// safeTransportError keeps the last part of a transport error: the library's wrapping repeats the URL,
// which is configuration the client need not see.
func safeTransportError(err error) string {
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 {
		s = s[i+2:]
	}
	if len(s) > 200 {
		s = s[:200]
	}
	return s
}

// openAIUpstream turns chat completion chunks into events: one event per chunk with content, then a
// final event carrying the finish reason and the usage of the include_usage chunk (which follows the
// finish chunk).
type openAIUpstream struct {
	p      *openAIProvider
	ctx    context.Context
	s      *ssestream.Stream[openai.ChatCompletionChunk]
	model  string
	finish string
	usage  abi.Usage
	ended  bool
}

// Recv implements Upstream.
func (u *openAIUpstream) Recv() (abi.LLMEvent, error) {
	if u.ended {
		return abi.LLMEvent{}, io.EOF
	}
	for u.s.Next() {
		c := u.s.Current()
		if u.model == "" && c.Model != "" {
			u.model = c.Model
		}
		if c.Usage.PromptTokens > 0 || c.Usage.CompletionTokens > 0 {
			u.usage = abi.Usage{PromptTokens: c.Usage.PromptTokens, CompletionTokens: c.Usage.CompletionTokens}
		}
		var ev abi.LLMEvent
		for _, ch := range c.Choices {
			if ch.Index != 0 {
				continue
			}
			ev.Delta += ch.Delta.Content
			if ch.FinishReason != "" {
				u.finish = ch.FinishReason
			}
		}
		if ev.Delta != "" {
			ev.Model = u.model
			return ev, nil
		}
	}
	if err := u.s.Err(); err != nil {
		return abi.LLMEvent{}, u.p.classify(u.ctx, err)
	}
	if err := u.ctx.Err(); err != nil {
		return abi.LLMEvent{}, u.p.classify(u.ctx, err)
	}
	u.ended = true
	if u.finish == "" {
		return abi.LLMEvent{}, errorf(KindUpstream, u.p.name, 0, "the stream ended without a finish reason")
	}
	return abi.LLMEvent{FinishReason: u.finish, Usage: u.usage, Model: u.model}, nil
}

// Close implements Upstream.
func (u *openAIUpstream) Close() error { return u.s.Close() }
