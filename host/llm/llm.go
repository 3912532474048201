// Package llm runs the chat completions of tenants: streaming providers, the per-tenant configuration
// that maps model names to providers, timeouts, retries and fallback before the first token, token
// estimates, the default RAG prompt, and the offline extractive provider that answers when a tenant has
// configured nothing.
//
// # Lifecycle of a completion
//
// Service.Tenant parses (and caches) a tenant's configuration; Tenant.Resolve maps the requested model
// to a Route: the primary provider and an optional fallback. Service.Open starts a Stream at once and
// runs the completion on one goroutine:
//
//  1. for each target of the route (primary, then fallback) and each try (1 + retries), open the
//     upstream request and wait for its first event under the first-token timeout;
//  2. the first content token commits the stream to that attempt: from then on nothing is retried, an
//     idle timeout bounds the gap between events, and a failure ends the stream with an error event;
//  3. the stream's last event has FinishReason and Usage, or Error; then the channel closes.
//
// Stream.Close cancels the upstream request at once (the HTTP request's context) and waits for the
// goroutine to exit, so nothing outlives a Close. Stream.Usage then reports the tokens the upstream
// produced, including those streamed before a cut, for token budgets.
package llm

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/plinth-dev/plinth/abi"
)

// Request is one completion as a provider receives it.
type Request struct {
	// Model is the provider's name for the model (the route's upstream model).
	Model    string
	Messages []abi.Message
	Params   abi.Params
	// Sources are the retrieved chunks the messages number [1], [2]... in order. The extractive provider
	// answers from them; other providers ignore them (the prompt carries their text).
	Sources []abi.SearchHit
}

// Upstream is one provider response being read. It is used by one goroutine.
type Upstream interface {
	// Recv blocks for the next event. Events carry Delta text (never empty) until a final event with
	// FinishReason (and Usage when the provider reports it); after the final event Recv returns io.EOF.
	// A failure returns an error; the Upstream is then done.
	Recv() (abi.LLMEvent, error)
	// Close releases the response. Cancelling the context passed to Open also ends it.
	Close() error
}

// Provider starts streamed completions.
type Provider interface {
	// Open starts a completion and returns once the provider has accepted it (for HTTP providers: the
	// response status arrived), or with an error. The context bounds the whole response: cancelling it
	// cancels the upstream request.
	Open(ctx context.Context, req *Request) (Upstream, error)
}

// ErrorKind classifies a completion failure: it decides retries, fallback and the status a client gets.
type ErrorKind uint8

// Error kinds.
const (
	// KindUpstream: the provider failed (5xx, a broken or malformed stream). Retried.
	KindUpstream ErrorKind = iota
	// KindConnect: the provider could not be reached. Retried.
	KindConnect
	// KindTimeout: the connect, first-token or idle timeout passed. Retried before the first token.
	KindTimeout
	// KindRateLimited: the provider answered 429. Retried after a pause.
	KindRateLimited
	// KindProvider: the provider refused the request for a reason of its own configuration (401, 403,
	// 404 model, a missing secret). Not retried; the fallback is tried.
	KindProvider
	// KindInvalid: the provider refused the request itself (400, 413, 422): the client must change it.
	// Neither retried nor sent to the fallback.
	KindInvalid
	// KindCanceled: the stream was closed (the client went away).
	KindCanceled
)

// Error is a completion failure. Its message is safe to show a client: it names the provider and what
// happened, never a secret.
type Error struct {
	Kind     ErrorKind
	Provider string // the provider's name in the tenant configuration
	Status   int    // the upstream's HTTP status, 0 when there was none
	Message  string
}

func (e *Error) Error() string { return e.Message }

// retryable reports whether the same provider may be tried again.
func (e *Error) retryable() bool {
	switch e.Kind {
	case KindUpstream, KindConnect, KindTimeout, KindRateLimited:
		return true
	}
	return false
}

// fallback reports whether the next target of the route may be tried.
func (e *Error) fallback() bool { return e.Kind != KindInvalid && e.Kind != KindCanceled }

// HTTPStatus is the status a client gets for the error when it happens before the response started.
func (e *Error) HTTPStatus() int {
	switch e.Kind {
	case KindTimeout:
		return 504
	case KindRateLimited:
		return 429
	case KindInvalid:
		if e.Status >= 400 && e.Status < 500 {
			return e.Status
		}
		return 400
	case KindCanceled:
		return 499
	}
	return 502
}

// Code is the error code a client gets (the "code" of an OpenAI error object).
func (e *Error) Code() string {
	switch e.Kind {
	case KindConnect:
		return "provider_unreachable"
	case KindTimeout:
		return "provider_timeout"
	case KindRateLimited:
		return "provider_rate_limited"
	case KindProvider:
		return "provider_refused"
	case KindInvalid:
		return "provider_invalid_request"
	case KindCanceled:
		return "canceled"
	}
	return "provider_error"
}

// Type is the OpenAI error type for the error.
func (e *Error) Type() string {
	switch e.Kind {
	case KindInvalid:
		return "invalid_request_error"
	case KindRateLimited:
		return "rate_limit_error"
	}
	return "server_error"
}

func errorf(kind ErrorKind, provider string, status int, format string, args ...any) *Error {
	return &Error{Kind: kind, Provider: provider, Status: status,
		Message: fmt.Sprintf("provider %q: ", provider) + fmt.Sprintf(format, args...)}
}

// asError returns err as an *Error, classifying it as an upstream failure when it is not one.
func asError(provider string, err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return errorf(KindUpstream, provider, 0, "the response ended abruptly")
	}
	return errorf(KindUpstream, provider, 0, "%v", err)
}
