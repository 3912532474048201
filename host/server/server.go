// Package server is Plinth's HTTP server: authentication, the per-tenant plugin pipeline (route →
// ratelimit → target), the built-in endpoints, health and metrics.
//
// A request's whole path starts at Server.handle: follow the calls from there.
package server

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/plinth-dev/plinth/abi"
	"github.com/plinth-dev/plinth/host/llm"
	"github.com/plinth-dev/plinth/host/ratelimit"
	"github.com/plinth-dev/plinth/host/search"
	"github.com/plinth-dev/plinth/host/store"
	"github.com/plinth-dev/plinth/runtime"
)

// Options configure a Server. Engine, and Modules or Store, are required; zero values elsewhere take the documented
// defaults.
type Options struct {
	Engine  *runtime.Engine
	Modules ModuleSource
	// Logger; nil means slog.Default().
	Logger *slog.Logger
	// MaxBodyBytes caps request bodies. Zero means 8 MiB.
	MaxBodyBytes int64
	// ReadTimeout, WriteTimeout and IdleTimeout configure connections. Zero means 30s, 60s, 2m.
	ReadTimeout, WriteTimeout, IdleTimeout time.Duration
	// Limiter holds rate-limit state; nil means a new one.
	Limiter *ratelimit.Limiter
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Store holds tenant data (plugin KV, conversations, documents). Nil disables the endpoints and host
	// calls that need it (they answer "unavailable").
	Store *store.Store
	// OperatorKeyHash is the SHA-256 of the operator key, which authorises the whole admin API. Zero
	// disables the operator's endpoints (tenant-admin keys still work).
	OperatorKeyHash [32]byte
	// MaxPluginBytes caps uploaded plugin modules. Zero means 64 MiB.
	MaxPluginBytes int64
	// Retriever runs searches for the search host call and for chat retrieval. Nil disables them.
	Retriever Retriever
	// Search serves the vector stores API (usually also the Retriever). Nil disables it.
	Search *search.Service
	// LLM runs chat completions for the chat endpoint and the llm_* host calls. Nil means a Service
	// with default options (each tenant's "llm" configuration, or the offline extractive model).
	LLM *llm.Service
}

// Retriever runs one search over a tenant's vector stores (host/search implements it).
type Retriever interface {
	Search(ctx context.Context, tenant string, req *abi.SearchRequest) (*abi.SearchResult, error)
}

// Server serves the Plinth API. Create it with New, load tenants with Apply, then Serve.
type Server struct {
	opts      Options
	log       *slog.Logger
	engine    *runtime.Engine
	modules   ModuleSource
	limiter   *ratelimit.Limiter
	store     *store.Store
	retriever Retriever
	search    *search.Service
	metrics   *metrics
	now       func() time.Time
	started   int64 // Unix seconds when the server was created
	http      *fasthttp.Server

	endpoints []*endpoint          // built-in endpoints in match order
	byName    map[string]*endpoint // by endpoint name

	cur     atomic.Pointer[state] // the state new requests use; never nil after New
	stateMu sync.Mutex            // serialises Apply and retire
	live    map[pluginKey]*pluginRT

	ready        atomic.Bool
	ridPrefix    [8]byte
	ridSeq       atomic.Uint64
	extraMetrics []func(io.Writer)
	admin        []adminRoute
	// otherHandlers serve paths outside /v1 (admin API, OpenAPI document); each reports whether it
	// handled the request.
	otherHandlers []func(*fasthttp.RequestCtx) bool

	stop     chan struct{}
	stopOnce sync.Once
}

// New returns a Server with no tenants.
func New(opts Options) (*Server, error) {
	if opts.Modules == nil && opts.Store != nil {
		opts.Modules = storeModules{opts.Store}
	}
	if opts.Engine == nil || opts.Modules == nil {
		return nil, errors.New("server: Engine and Modules (or Store) are required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = 8 << 20
	}
	if opts.ReadTimeout <= 0 {
		opts.ReadTimeout = 30 * time.Second
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = 60 * time.Second
	}
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = 2 * time.Minute
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Limiter == nil {
		opts.Limiter = ratelimit.New(opts.Now)
	}
	if opts.MaxPluginBytes <= 0 {
		opts.MaxPluginBytes = 64 << 20
	}
	s := &Server{
		opts:      opts,
		log:       opts.Logger,
		engine:    opts.Engine,
		modules:   opts.Modules,
		limiter:   opts.Limiter,
		store:     opts.Store,
		retriever: opts.Retriever,
		search:    opts.Search,
		metrics:   newMetrics(),
		now:       opts.Now,
		started:   opts.Now().Unix(),
		byName:    map[string]*endpoint{},
		live:      map[pluginKey]*pluginRT{},
		stop:      make(chan struct{}),
	}
	rand.Read(s.ridPrefix[:])
	s.cur.Store(&state{tenants: map[string]*tenantRT{}})
	s.registerEndpoints()
	s.admin = s.adminRoutes()
	s.otherHandlers = append(s.otherHandlers, s.serveAdmin)
	s.registerOpenAPI()
	s.http = &fasthttp.Server{
		Handler:      s.handle,
		ErrorHandler: s.handleParseError,
		Name:         "plinth",
		// Plugin uploads may be larger than API requests: bodyLimit picks the limit from the request
		// line as soon as the headers are in, so an oversized body is refused before it is read.
		MaxRequestBodySize: int(max(opts.MaxBodyBytes, opts.MaxPluginBytes)),
		HeaderReceived: func(h *fasthttp.RequestHeader) fasthttp.RequestConfig {
			return fasthttp.RequestConfig{MaxRequestBodySize: int(s.bodyLimit(h))}
		},
		ReadTimeout:                        opts.ReadTimeout,
		WriteTimeout:                       opts.WriteTimeout,
		IdleTimeout:                        opts.IdleTimeout,
		ReadBufferSize:                     16 << 10,
		NoDefaultContentType:               true,
		CloseOnShutdown:                    true,
		StreamRequestBody:                  false,
		Logger:                             fasthttpLogger{s.log},
		SleepWhenConcurrencyLimitsExceeded: time.Millisecond,
	}
	go s.sweepLimiter()
	if s.store != nil {
		go s.maintainStore(time.Minute)
	}
	return s, nil
}

// Serve accepts connections on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	s.ready.Store(true)
	return s.http.Serve(ln)
}

// Shutdown stops accepting connections, waits for in-flight requests (up to ctx), then closes the
// plugin pools.
func (s *Server) Shutdown(ctx context.Context) error {
	s.ready.Store(false)
	s.stopOnce.Do(func() { close(s.stop) })
	err := s.http.ShutdownWithContext(ctx)
	s.closePlugins()
	return err
}

// sweepLimiter forgets replenished rate-limit keys once a minute, bounding the limiter's memory by the
// keys active within their period.
func (s *Server) sweepLimiter() {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.limiter.Sweep()
		}
	}
}

// handle is the entry point of every request.
func (s *Server) handle(ctx *fasthttp.RequestCtx) {
	start := time.Now()
	path := ctx.Path()
	switch {
	case bytes.HasPrefix(path, []byte("/v1/")):
		s.serveAPI(ctx, start)
		return
	case !ctx.IsGet() && !ctx.IsHead() && isOperational(path):
		refuseMethod(ctx)
	case bytes.Equal(path, []byte("/healthz")):
		ctx.SetContentType("application/json")
		ctx.SetBodyString(`{"status":"ok"}`)
	case bytes.Equal(path, []byte("/readyz")):
		ctx.SetContentType("application/json")
		if s.ready.Load() {
			ctx.SetBodyString(`{"status":"ready"}`)
		} else {
			ctx.SetStatusCode(fasthttp.StatusServiceUnavailable)
			ctx.SetBodyString(`{"status":"not ready"}`)
		}
	case bytes.Equal(path, []byte("/metrics")):
		ctx.SetContentType("text/plain; version=0.0.4; charset=utf-8")
		s.metrics.write(ctx, s)
	default:
		if s.serveOther(ctx) {
			break
		}
		writeError(ctx, errNotFound("no route for "+string(ctx.Method())+" "+string(path)))
	}
	s.metrics.anonymous.observe(ctx.Response.StatusCode(), time.Since(start))
}

// isOperational reports whether path is one of the read-only operational endpoints.
func isOperational(path []byte) bool {
	switch string(path) {
	case "/healthz", "/readyz", "/metrics":
		return true
	}
	return false
}

// refuseMethod answers a request to a read-only endpoint (GET and HEAD only) with 405.
func refuseMethod(ctx *fasthttp.RequestCtx) {
	ctx.Response.Header.Set("Allow", "GET, HEAD")
	writeError(ctx, &APIError{Status: fasthttp.StatusMethodNotAllowed, Type: typeInvalidRequest, Code: "method_not_allowed",
		Message: string(ctx.Method()) + " is not allowed on " + string(ctx.Path())})
}

// serveOther serves the paths outside /v1 that later parts of the server register (admin, OpenAPI).
// It reports whether it handled the request.
func (s *Server) serveOther(ctx *fasthttp.RequestCtx) bool {
	for _, h := range s.otherHandlers {
		if h(ctx) {
			return true
		}
	}
	return false
}

// bodyLimit is the body size limit of a request: MaxPluginBytes for plugin uploads, MaxBodyBytes for
// everything else.
func (s *Server) bodyLimit(h *fasthttp.RequestHeader) int64 {
	if h.IsPut() && bytes.HasPrefix(h.RequestURI(), []byte("/admin/v1/tenants/")) &&
		bytes.HasSuffix(bytes.TrimRight(pathOnly(h.RequestURI()), "/"), []byte("/versions")) {
		return s.opts.MaxPluginBytes
	}
	return s.opts.MaxBodyBytes
}

// pathOnly cuts the query string off a request URI.
func pathOnly(uri []byte) []byte {
	if i := bytes.IndexByte(uri, '?'); i >= 0 {
		return uri[:i]
	}
	return uri
}

// handleParseError answers requests fasthttp could not read (too large, malformed, slow) with JSON.
func (s *Server) handleParseError(ctx *fasthttp.RequestCtx, err error) {
	var e *APIError
	switch {
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		e = &APIError{Status: fasthttp.StatusRequestEntityTooLarge, Type: typeInvalidRequest, Code: "request_too_large",
			Message: "request body exceeds the limit of " + strconv.FormatInt(s.bodyLimit(&ctx.Request.Header), 10) + " bytes"}
	default:
		var netErr net.Error
		if errors.As(err, &netErr) && netErr.Timeout() {
			e = &APIError{Status: fasthttp.StatusRequestTimeout, Type: typeInvalidRequest, Code: "request_timeout",
				Message: "the request was not received in time"}
		} else {
			e = errInvalid("malformed_request", "malformed HTTP request: "+err.Error())
		}
	}
	writeError(ctx, e)
	s.metrics.anonymous.observe(e.Status, 0)
}

// requestID returns a new request id: a per-process random prefix and a sequence number.
func (s *Server) requestID(dst []byte) []byte {
	dst = append(dst, "req_"...)
	dst = hex.AppendEncode(dst, s.ridPrefix[:4])
	return strconv.AppendUint(dst, s.ridSeq.Add(1), 36)
}

type fasthttpLogger struct{ l *slog.Logger }

func (f fasthttpLogger) Printf(format string, args ...any) {
	f.l.Debug("fasthttp", "msg", fmt.Sprintf(format, args...))
}
