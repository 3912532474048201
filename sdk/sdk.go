// Package sdk is the Go SDK for Plinth plugins.
//
// A plugin is a `package main` that registers its handlers in init() and has an empty main:
//
//	package main
//
//	import "github.com/plinth-dev/plinth/sdk"
//
//	func init() {
//		sdk.OnRoute(func(req *sdk.Request) (sdk.Route, error) {
//			if req.Path == "/hello" {
//				return sdk.Respond(200, []byte("hello\n")), nil
//			}
//			return sdk.Default(), nil
//		})
//	}
//
//	func main() {}
//
// Build it with
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o plugin.wasm .
//
// Under GOOS=wasip1 the SDK exports the hook functions of the Plinth ABI (see docs/abi.md) and calls the
// host through //go:wasmimport functions. In any other build the same calls go to an abi.Host installed by
// sdk/sdktest, so a plugin's handlers run in a plain `go test` with in-memory state.
//
// Handlers run one call at a time per instance; a plugin may keep state in package variables, but an
// instance can be discarded at any moment (after a trap, a timeout, or when idle), so anything that must
// last belongs in the KV store. Nothing may outlive a hook call: no goroutines left running.
package sdk

import (
	"fmt"
	"unsafe"

	"github.com/plinth-dev/plinth/abi"
)

// Types shared with the host, defined by the ABI.
type (
	// Request is the client's HTTP request as the host authenticated it.
	Request = abi.Request
	// Pair is a header, tag or path parameter.
	Pair = abi.Pair
	// Route is the result of a route handler.
	Route = abi.RouteDecision
	// RateLimit is the result of a ratelimit handler; its zero value allows the request.
	RateLimit = abi.RateLimitDecision
	// RatePolicy reports one limit in the RateLimit response headers.
	RatePolicy = abi.RatePolicy
	// Response is the result of a handle handler.
	Response = abi.Response
	// TokenReservation is a token budget taken at admission, settled by the host with real usage.
	TokenReservation = abi.TokenReservation
	// RouteAction is a route decision's kind.
	RouteAction = abi.RouteAction
)

// Route actions, as found in Route.Action (and in Request.Route for later hooks).
const (
	RouteDefault = abi.RouteDefault
	RouteBuiltin = abi.RouteBuiltin
	RoutePlugin  = abi.RoutePlugin
	RouteRespond = abi.RouteRespond
)

// Handler types of each hook.
type (
	RouteHandler     func(req *Request) (Route, error)
	RateLimitHandler func(req *Request) (RateLimit, error)
	HandleHandler    func(req *Request) (Response, error)
)

// The registered handlers. Registration happens in init(), before any hook call, so no lock is needed.
var handlers struct {
	configure func(config []byte) error
	route     RouteHandler
	ratelimit RateLimitHandler
	handle    HandleHandler
	prompt    PromptHandler
}

// OnConfigure registers a function that receives the plugin's configuration (as the tenant set it;
// JSON by convention) once per instance, before the instance's first hook call. An error it returns
// fails every hook call of the instance with that message, so a tenant sees a broken configuration in
// the first response. Parse and validate configuration here rather than in each handler.
func OnConfigure(f func(config []byte) error) { handlers.configure = f }

// configured and configErr record the OnConfigure call of this instance.
var (
	configured bool
	configErr  error
)

func ensureConfigured() error {
	if !configured {
		configured = true
		if handlers.configure != nil {
			if err := handlers.configure(Config()); err != nil {
				configErr = fmt.Errorf("plugin configuration: %w", err)
			}
		}
	}
	return configErr
}

// OnRoute registers the route handler: it decides where a request goes (a built-in endpoint, a plugin's
// handle hook or a direct response). Call it from init().
func OnRoute(h RouteHandler) { handlers.route = h }

// OnRateLimit registers the ratelimit handler: it admits or refuses a request after routing, usually with
// RateLimitTake. Call it from init().
func OnRateLimit(h RateLimitHandler) { handlers.ratelimit = h }

// OnHandle registers the handle handler: it serves requests that a route decision sent to this plugin.
// Call it from init().
func OnHandle(h HandleHandler) { handlers.handle = h }

// registered returns the set of hooks with a handler, as the plinth_hooks export reports it.
func registered() abi.HookSet {
	var s abi.HookSet
	if handlers.route != nil {
		s = s.With(abi.HookRoute)
	}
	if handlers.ratelimit != nil {
		s = s.With(abi.HookRateLimit)
	}
	if handlers.handle != nil {
		s = s.With(abi.HookHandle)
	}
	if handlers.prompt != nil {
		s = s.With(abi.HookPrompt)
	}
	return s
}

// Default leaves the request to the host's built-in routing.
func Default() Route { return Route{Action: abi.RouteDefault} }

// Builtin sends the request to a built-in endpoint by name ("models.list", "chat.completions"...; see
// docs/api.md for the list), with optional path parameters.
func Builtin(endpoint string, params ...Pair) Route {
	return Route{Action: abi.RouteBuiltin, Target: endpoint, Params: params}
}

// ToPlugin sends the request to the handle hook of the tenant's plugin with the given name.
func ToPlugin(plugin string, params ...Pair) Route {
	return Route{Action: abi.RoutePlugin, Target: plugin, Params: params}
}

// Respond answers the request directly with status, body and headers.
func Respond(status int, body []byte, headers ...Pair) Route {
	return Route{Action: abi.RouteRespond, Response: Response{Status: int32(status), Body: body, Headers: headers}}
}

// Allow admits the request, reporting the given policies in the RateLimit headers.
func Allow(policies ...RatePolicy) RateLimit { return RateLimit{Policies: policies} }

// Deny refuses the request with 429, a Retry-After and the given message.
func Deny(retryAfterMs int64, message string, policies ...RatePolicy) RateLimit {
	return RateLimit{Deny: true, RetryAfterMs: retryAfterMs, Message: message, Policies: policies}
}

// view returns the bytes of s without copying, for passing a string to a host call: hosts only read
// their arguments during the call (abi.Host), so the string's immutability is kept.
func view(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }

// requestBuf is the Request of the call in progress, reused so its slices keep their capacity. A
// handler must not keep req (or its Headers slice) beyond its call; the strings in it are immutable and
// may be kept.
var requestBuf Request

// arena holds copies of hook inputs: each input is copied into the free tail of the current chunk and
// decoded as a string over that copy. Chunk bytes are never written twice, so the strings are truly
// immutable and a handler may keep any of them; a chunk is freed by the GC once no string points into
// it. Allocation is slow in Go on Wasm (~0.2-2 µs), and this makes it one allocation per chunk instead
// of one per call.
var arena []byte

const arenaChunk = 64 << 10

func inputString(b []byte) string {
	if len(b) > arenaChunk/4 {
		return string(b)
	}
	if cap(arena)-len(arena) < len(b) {
		arena = make([]byte, 0, arenaChunk)
	}
	start := len(arena)
	arena = append(arena, b...)
	return unsafe.String(unsafe.SliceData(arena[start:]), len(b))
}

// callHook decodes a hook's input, runs the registered handler and appends the encoded result to out.
// A handler's error and a recovered panic are reported in the result's Error field, so the host can
// answer with a message naming the plugin; the instance stays usable because the Go runtime recovered.
func callHook(hook abi.Hook, input []byte, out []byte) []byte {
	switch hook {
	case abi.HookRoute, abi.HookRateLimit, abi.HookHandle:
		// One string holds the whole input and every string field is a substring of it: decoding then
		// costs one allocation, which matters because allocation is slow in Go on Wasm (~0.2 µs each).
		req := &requestBuf
		if err := req.DecodeString(inputString(input)); err != nil {
			return encodeError(hook, out, err)
		}
		return runRequestHook(hook, req, out)
	case abi.HookPrompt:
		return runPromptHook(input, out)
	}
	return encodeError(hook, out, fmt.Errorf("unknown hook %d", hook))
}

func runRequestHook(hook abi.Hook, req *Request, out []byte) (res []byte) {
	defer func() {
		if p := recover(); p != nil {
			res = encodeError(hook, out, fmt.Errorf("panic: %v", p))
		}
	}()
	if err := ensureConfigured(); err != nil {
		return encodeError(hook, out, err)
	}
	switch hook {
	case abi.HookRoute:
		if handlers.route == nil {
			return encodeError(hook, out, errNoHandler(hook))
		}
		d, err := handlers.route(req)
		if err != nil {
			d = Route{Error: err.Error()}
		}
		return d.AppendTo(out)
	case abi.HookRateLimit:
		if handlers.ratelimit == nil {
			return encodeError(hook, out, errNoHandler(hook))
		}
		d, err := handlers.ratelimit(req)
		if err != nil {
			d = RateLimit{Error: err.Error()}
		}
		return d.AppendTo(out)
	default:
		if handlers.handle == nil {
			return encodeError(hook, out, errNoHandler(hook))
		}
		r, err := handlers.handle(req)
		if err != nil {
			r = Response{Error: err.Error(), Streamed: r.Streamed}
		}
		return r.AppendTo(out)
	}
}

func errNoHandler(hook abi.Hook) error {
	return fmt.Errorf("no %s handler registered", hook)
}

// encodeError encodes a result carrying only an error; every result message keeps Error in field 15, so
// one encoding serves all hooks.
func encodeError(_ abi.Hook, out []byte, err error) []byte {
	e := abi.Encoder{B: out}
	e.String(15, err.Error())
	return e.B
}
