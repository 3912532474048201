package llm

import (
	"context"
	"crypto/sha256"
	"log/slog"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/plinth-dev/plinth/abi"
)

// Options configure a Service. Zero values take the documented defaults.
type Options struct {
	// Getenv reads the providers' API keys (ProviderConfig.APIKeyEnv). Nil means os.Getenv.
	Getenv func(string) string
	// Logger receives retries and fallbacks (provider names and error kinds, never request data or
	// secrets). Nil means slog.Default().
	Logger *slog.Logger
	// Backoff is the pause before the first retry of a provider, doubled for each further retry.
	// Zero means 250ms.
	Backoff time.Duration
}

// Service runs completions for every tenant. It caches each tenant's parsed configuration and its
// providers (with their connection pools) until the configuration changes. Safe for concurrent use.
type Service struct {
	opts Options

	mu      sync.Mutex
	tenants map[string]*Tenant // by tenant id; guarded by mu
}

// New returns a Service.
func New(opts Options) *Service {
	if opts.Getenv == nil {
		opts.Getenv = os.Getenv
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Backoff <= 0 {
		opts.Backoff = 250 * time.Millisecond
	}
	return &Service{opts: opts, tenants: map[string]*Tenant{}}
}

// Tenant is a tenant's parsed LLM configuration: its models, routes and providers.
type Tenant struct {
	id           string
	sum          [32]byte
	err          error
	routes       map[string]*Route
	defaultModel string
	providers    []*openAIProvider
}

// Model describes a model a tenant can use.
type Model struct {
	ID string
	// Provider is the name of the model's primary provider.
	Provider string
}

// Route is how a model's completions run: the primary provider, then the fallback.
type Route struct {
	// Model is the name clients use.
	Model   string
	tenant  string
	targets []target
}

type target struct {
	provider   string // its name in the configuration
	p          Provider
	model      string // the provider's name for the model
	retries    int
	firstToken time.Duration
	idle       time.Duration
}

// Tenant returns the parsed configuration of a tenant whose raw "llm" configuration is raw. The result
// is cached until raw changes; an invalid configuration returns its error (which names the field).
func (s *Service) Tenant(id string, raw []byte) (*Tenant, error) {
	sum := sha256.Sum256(raw)
	s.mu.Lock()
	defer s.mu.Unlock()
	if t := s.tenants[id]; t != nil && t.sum == sum {
		return t, t.err
	}
	t := s.build(id, raw)
	t.sum = sum
	if old := s.tenants[id]; old != nil {
		for _, p := range old.providers {
			// Streams in flight keep their connections; idle ones are of no further use.
			p.transport().CloseIdleConnections()
		}
	}
	s.tenants[id] = t
	return t, t.err
}

func (s *Service) build(id string, raw []byte) *Tenant {
	t := &Tenant{id: id, routes: map[string]*Route{}, defaultModel: ExtractiveModel}
	cfg, err := ParseConfig(raw)
	if err != nil {
		t.err = err
		return t
	}
	providers := map[string]Provider{ExtractiveProvider: extractiveProvider{}}
	settings := map[string]ProviderConfig{ExtractiveProvider: {Type: ExtractiveProvider}}
	for name, pc := range cfg.Providers {
		settings[name] = pc
		switch pc.Type {
		case ExtractiveProvider:
			providers[name] = extractiveProvider{}
		case "openai":
			p := newOpenAIProvider(name, pc, durationOr(pc.Timeout.Connect, DefaultConnectTimeout), s.opts.Getenv)
			providers[name] = p
			t.providers = append(t.providers, p)
		}
	}
	mk := func(provider, model string) target {
		pc := settings[provider]
		retries := DefaultRetries
		if pc.Retries != nil {
			retries = *pc.Retries
		}
		return target{provider: provider, p: providers[provider], model: model, retries: retries,
			firstToken: durationOr(pc.Timeout.FirstToken, DefaultFirstTokenTimeout),
			idle:       durationOr(pc.Timeout.Idle, DefaultIdleTimeout)}
	}
	t.routes[ExtractiveModel] = &Route{Model: ExtractiveModel, tenant: id,
		targets: []target{mk(ExtractiveProvider, ExtractiveModel)}}
	for name, mc := range cfg.Models {
		upstream := mc.Model
		if upstream == "" {
			upstream = name
		}
		r := &Route{Model: name, tenant: id, targets: []target{mk(mc.Provider, upstream)}}
		if fb := mc.Fallback; fb != nil {
			m := fb.Model
			if m == "" {
				m = upstream
			}
			r.targets = append(r.targets, mk(fb.Provider, m))
		}
		t.routes[name] = r
	}
	if cfg.DefaultModel != "" {
		t.defaultModel = cfg.DefaultModel
	}
	return t
}

func durationOr(d Duration, def time.Duration) time.Duration {
	if d > 0 {
		return time.Duration(d)
	}
	return def
}

// Models returns the tenant's models, sorted by name.
func (t *Tenant) Models() []Model {
	out := make([]Model, 0, len(t.routes))
	for name, r := range t.routes {
		out = append(out, Model{ID: name, Provider: r.targets[0].provider})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// DefaultModel is the model of requests that name none.
func (t *Tenant) DefaultModel() string { return t.defaultModel }

// Resolve returns the route of a model ("" means the default model).
func (t *Tenant) Resolve(model string) (*Route, bool) {
	if model == "" {
		model = t.defaultModel
	}
	r, ok := t.routes[model]
	return r, ok
}

// Stream is a running completion. Read its events from Events until the channel closes; the last event
// has FinishReason or Error. Close it when done (also after the channel closed): Close cancels the
// upstream request if it still runs and returns when nothing of the stream is left running.
type Stream struct {
	events chan abi.LLMEvent
	cancel context.CancelCauseFunc
	done   chan struct{} // closed when the producer goroutine has returned

	promptEstimate int64

	// Written by the producer goroutine only; read by others after done is closed.
	err             *Error
	usage           abi.Usage // as the provider reported it
	completionTally int64     // estimated tokens of the deltas received
	committed       bool      // a token (or the final event) arrived from some attempt
	model           string
	provider        string
}

// streamBuffer is how many events the producer reads ahead of the consumer. Beyond it the producer
// stops reading, and TCP flow control slows the upstream.
const streamBuffer = 32

// Open starts a completion on the route and returns at once; the events follow on the stream. The
// context bounds the completion: cancelling it cancels the upstream request.
func (s *Service) Open(ctx context.Context, r *Route, req Request) *Stream {
	ctx, cancel := context.WithCancelCause(ctx)
	st := &Stream{events: make(chan abi.LLMEvent, streamBuffer), cancel: cancel, done: make(chan struct{}),
		promptEstimate: EstimateMessages(req.Messages)}
	go s.run(ctx, st, r, req)
	return st
}

// Events returns the stream's events. The channel closes after the last event.
func (st *Stream) Events() <-chan abi.LLMEvent { return st.events }

// Done is closed once the stream has ended and its goroutine has returned.
func (st *Stream) Done() <-chan struct{} { return st.done }

var errClosed = &Error{Kind: KindCanceled, Message: "the completion was cancelled"}

// Close cancels the completion if it still runs and waits until its goroutine has returned.
func (st *Stream) Close() {
	st.cancel(errClosed)
	<-st.done
}

// Err returns why the stream failed, or nil. Valid once Done is closed.
func (st *Stream) Err() *Error { return st.err }

// Model returns the name of the model that answered (as the provider reports it). Valid once Done is
// closed, or once an event arrived.
func (st *Stream) Model() string { return st.model }

// Usage returns the tokens the completion used, for budgets: the provider's report when it sent one,
// otherwise estimates of the prompt and of the text received, which counts tokens streamed before a
// cut. A completion that failed before its first token used none. Valid once Done is closed.
func (st *Stream) Usage() abi.Usage {
	if !st.committed {
		return abi.Usage{}
	}
	u := st.usage
	if u.PromptTokens == 0 {
		u.PromptTokens = st.promptEstimate
	}
	if u.CompletionTokens == 0 {
		u.CompletionTokens = st.completionTally
	}
	return u
}

// PromptEstimate is the estimated prompt tokens of the request.
func (st *Stream) PromptEstimate() int64 { return st.promptEstimate }

// run is the stream's goroutine: attempts in order until one commits, then the rest of that one.
func (s *Service) run(ctx context.Context, st *Stream, r *Route, req Request) {
	defer close(st.done)
	defer close(st.events)
	var last *Error
targets:
	for ti, t := range r.targets {
		if ti > 0 {
			s.opts.Logger.Warn("llm: trying the fallback provider", "tenant", r.tenant, "model", r.Model,
				"failed", r.targets[ti-1].provider, "fallback", t.provider, "err", last.Message)
		}
		for try := 0; try <= t.retries; try++ {
			if try > 0 {
				s.opts.Logger.Info("llm: retrying", "tenant", r.tenant, "model", r.Model, "provider", t.provider,
					"try", try+1, "err", last.Message)
				pause := time.NewTimer(s.opts.Backoff << (try - 1))
				select {
				case <-ctx.Done():
					pause.Stop()
					st.fail(ctx, cancelled(ctx))
					return
				case <-pause.C:
				}
			}
			treq := req
			treq.Model = t.model
			err := st.attempt(ctx, &t, &treq)
			if err == nil {
				return
			}
			last = err
			if ctx.Err() != nil {
				st.fail(ctx, cancelled(ctx))
				return
			}
			if !err.retryable() {
				break
			}
		}
		if !last.fallback() {
			break targets
		}
	}
	st.fail(ctx, last)
}

func cancelled(ctx context.Context) *Error {
	if e, ok := context.Cause(ctx).(*Error); ok {
		return e
	}
	return errClosed
}

// fail ends the stream with an error event (unless nobody will read it).
func (st *Stream) fail(ctx context.Context, e *Error) {
	st.err = e
	select {
	case st.events <- abi.LLMEvent{Error: e.Message}:
	case <-ctx.Done():
	}
}

// attempt runs one try on one target. It returns nil when the stream is finished (committed to this
// attempt, whatever happened after), or the error that ended it before its first token.
func (st *Stream) attempt(ctx context.Context, t *target, req *Request) *Error {
	actx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var started atomic.Bool
	timer := time.AfterFunc(t.firstToken, func() {
		if started.Load() {
			cancel(errorf(KindTimeout, t.provider, 0, "no token for %v (the idle timeout)", t.idle))
		} else {
			cancel(errorf(KindTimeout, t.provider, 0, "no first token within %v (the first-token timeout)", t.firstToken))
		}
	})
	defer timer.Stop()

	up, err := t.p.Open(actx, req)
	if err != nil {
		return timeoutOr(actx, asError(t.provider, err))
	}
	defer up.Close()
	for {
		ev, err := up.Recv()
		if err != nil {
			e := timeoutOr(actx, asError(t.provider, err))
			if !started.Load() {
				return e
			}
			if ctx.Err() != nil {
				e = cancelled(ctx)
			}
			st.fail(ctx, e)
			return nil
		}
		timer.Stop()
		if !started.Load() {
			started.Store(true)
			st.committed = true
			st.provider = t.provider
			st.model = ev.Model
			if st.model == "" {
				st.model = t.model
			}
			ev.Model = st.model // the first event names the model
		} else {
			ev.Model = ""
		}
		st.completionTally += EstimateText(ev.Delta)
		final := ev.FinishReason != ""
		if final && ev.Usage != (abi.Usage{}) {
			st.usage = ev.Usage
		}
		select {
		case st.events <- ev:
		case <-ctx.Done():
			st.err = cancelled(ctx)
			return nil
		}
		if final {
			return nil
		}
		timer.Reset(t.idle)
	}
}

// timeoutOr prefers the timeout recorded as the context's cause over the error the transport saw
// when the timer cancelled the request.
func timeoutOr(ctx context.Context, e *Error) *Error {
	if cause, ok := context.Cause(ctx).(*Error); ok && ctx.Err() != nil {
		return cause
	}
	return e
}
