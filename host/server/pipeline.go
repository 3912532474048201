package server

import (
	"bytes"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/plinth-dev/plinth/abi"
	"github.com/plinth-dev/plinth/abi/gcra"
	"github.com/plinth-dev/plinth/host/tenant"
)

// reqCtx is the state of one API request through the pipeline. Pooled; reset between requests.
type reqCtx struct {
	s     *Server
	ctx   *fasthttp.RequestCtx
	st    *state
	key   *tenant.Key
	trt   *tenantRT
	rid   []byte
	route abi.RouteDecision
	ep    *endpoint // target endpoint for RouteBuiltin
	// tokens is the estimated LLM tokens of the request, for the ratelimit hook (chat only).
	tokens       int64
	reservations []abi.TokenReservation
	// ratelimit is the plugin that made the reservations (their keys are in its key space).
	ratelimit *pluginRT
	// pluginTokens counts the tokens of LLM streams the chat completion's prompt hook opened; they are
	// settled with the completion's own.
	pluginTokens int64
	// data is what the endpoint's prepare step parsed, for its serve step.
	data any

	in       []byte // encoded hook input
	routeOut []byte // route hook result; route.Response.Body aliases it
	out      []byte // other hook results
}

var reqCtxPool = sync.Pool{New: func() any { return new(reqCtx) }}

// param returns a path parameter of the route.
func (rc *reqCtx) param(name string) string {
	v, _ := abi.Lookup(rc.route.Params, name)
	return v
}

// tenantID returns the authenticated tenant's id.
func (rc *reqCtx) tenantID() string { return rc.trt.t.ID }

// serveAPI runs the pipeline for /v1 requests: authenticate → route hook → ratelimit hook → target.
func (s *Server) serveAPI(ctx *fasthttp.RequestCtx, start time.Time) {
	rc := reqCtxPool.Get().(*reqCtx)
	rc.s, rc.ctx = s, ctx
	rc.st = s.acquire()
	rc.rid = s.requestID(rc.rid[:0])
	ctx.Response.Header.SetBytesV("X-Request-Id", rc.rid)

	stats := &s.metrics.anonymous
	if int64(len(ctx.Request.Body())) > s.opts.MaxBodyBytes {
		writeError(ctx, &APIError{Status: fasthttp.StatusRequestEntityTooLarge, Type: typeInvalidRequest, Code: "request_too_large",
			Message: "request body exceeds the limit of " + strconv.FormatInt(s.opts.MaxBodyBytes, 10) + " bytes"})
	} else if err := s.authenticate(rc); err != nil {
		writeError(ctx, err)
	} else {
		stats = rc.trt.stats
		s.pipeline(rc)
	}
	stats.observe(ctx.Response.StatusCode(), time.Since(start))

	rc.st.release()
	*rc = reqCtx{rid: rc.rid[:0], in: rc.in[:0], routeOut: rc.routeOut[:0], out: rc.out[:0],
		route: abi.RouteDecision{Params: rc.route.Params[:0], Tags: rc.route.Tags[:0]}}
	if cap(rc.in) > 1<<20 || cap(rc.out) > 1<<20 || cap(rc.routeOut) > 1<<20 {
		*rc = reqCtx{} // do not pool huge buffers
	}
	reqCtxPool.Put(rc)
}

// apiKey extracts the API key: "Authorization: Bearer <key>" (OpenAI), or the api-key / x-api-key
// headers other SDKs send.
func apiKey(ctx *fasthttp.RequestCtx) []byte {
	if auth := ctx.Request.Header.Peek(fasthttp.HeaderAuthorization); len(auth) > 0 {
		if len(auth) > 7 && strings.EqualFold(string(auth[:7]), "bearer ") {
			return bytes.TrimSpace(auth[7:])
		}
		return nil
	}
	if k := ctx.Request.Header.Peek("Api-Key"); len(k) > 0 {
		return k
	}
	return ctx.Request.Header.Peek("X-Api-Key")
}

func (s *Server) authenticate(rc *reqCtx) *APIError {
	snap := rc.st.snap
	if snap == nil {
		return &APIError{Status: fasthttp.StatusUnauthorized, Type: typeAuthentication, Code: "invalid_api_key",
			Message: tenant.ErrBadKey.Error()}
	}
	key, t, err := snap.Authenticate(apiKey(rc.ctx), s.now)
	if err != nil {
		e := &APIError{Status: fasthttp.StatusUnauthorized, Type: typeAuthentication, Code: "invalid_api_key", Message: err.Error()}
		if err == tenant.ErrTenantDisabled {
			e.Status, e.Type, e.Code = fasthttp.StatusForbidden, typePermission, "tenant_disabled"
		}
		return e
	}
	rc.key, rc.trt = key, rc.st.tenants[t.ID]
	if limit := rc.trt.limits.RequestBytes; limit > 0 && int64(len(rc.ctx.Request.Body())) > limit {
		return &APIError{Status: fasthttp.StatusRequestEntityTooLarge, Type: typeInvalidRequest, Code: "request_too_large",
			Message: "request body exceeds the tenant's limit of " + strconv.FormatInt(limit, 10) + " bytes"}
	}
	return nil
}

// pipeline runs the route and ratelimit hooks and serves the target.
func (s *Server) pipeline(rc *reqCtx) {
	ctx := rc.ctx
	trt := rc.trt

	// 1. Route: the tenant's route plugin decides, or the built-in routing does.
	if p := trt.hooks[abi.HookRoute]; p != nil {
		out, err := s.call(ctx, p, abi.HookRoute, string(rc.rid), rc.encodeRequest(false, false), rc.routeOut)
		rc.routeOut = out
		if err != nil {
			writeError(ctx, pluginError(err))
			return
		}
		if err := rc.route.Decode(out); err != nil {
			writeError(ctx, abiViolation(p, abi.HookRoute, err))
			return
		}
		if rc.route.Error != "" {
			writeError(ctx, handlerError(p.label, "route", rc.route.Error))
			return
		}
	}
	var handler *pluginRT
	switch rc.route.Action {
	case abi.RouteDefault:
		ep, params, allowed := s.match(ctx.Method(), ctx.Path())
		if ep == nil {
			if len(allowed) > 0 {
				ctx.Response.Header.Set("Allow", strings.Join(allowed, ", "))
				writeError(ctx, &APIError{Status: fasthttp.StatusMethodNotAllowed, Type: typeInvalidRequest,
					Code: "method_not_allowed", Message: string(ctx.Method()) + " is not allowed on " + string(ctx.Path())})
				return
			}
			writeError(ctx, errNotFound("no route for "+string(ctx.Method())+" "+string(ctx.Path())))
			return
		}
		rc.ep = ep
		rc.route.Action, rc.route.Target = abi.RouteBuiltin, ep.name
		rc.route.Params = append(rc.route.Params, params...)
	case abi.RouteBuiltin:
		if rc.ep = s.byName[rc.route.Target]; rc.ep == nil {
			writeError(ctx, &APIError{Status: fasthttp.StatusInternalServerError, Type: typePlugin, Code: "unknown_endpoint",
				Message: "plugin " + trt.hooks[abi.HookRoute].label + " routed to unknown built-in endpoint " +
					strconv.Quote(rc.route.Target) + " (see docs/api.md for the names)"})
			return
		}
	case abi.RoutePlugin:
		handler = trt.plugins[rc.route.Target]
		if handler == nil || !handler.mayHandle() {
			writeError(ctx, &APIError{Status: fasthttp.StatusInternalServerError, Type: typePlugin, Code: "unknown_plugin",
				Message: "plugin " + trt.hooks[abi.HookRoute].label + " routed to plugin " + strconv.Quote(rc.route.Target) +
					", which the tenant does not have or which has no handle hook"})
			return
		}
	}

	if rc.ep != nil && rc.ep.prepare != nil && rc.route.Action == abi.RouteBuiltin {
		if err := rc.ep.prepare(rc); err != nil {
			writeError(ctx, err)
			return
		}
	}

	// 2. Rate limit.
	if p := trt.hooks[abi.HookRateLimit]; p != nil {
		out, err := s.call(ctx, p, abi.HookRateLimit, string(rc.rid), rc.encodeRequest(true, false), rc.out)
		rc.out = out
		if err != nil {
			writeError(ctx, pluginError(err))
			return
		}
		var d abi.RateLimitDecision
		if err := d.Decode(out); err != nil {
			writeError(ctx, abiViolation(p, abi.HookRateLimit, err))
			return
		}
		if d.Error != "" {
			writeError(ctx, handlerError(p.label, "ratelimit", d.Error))
			return
		}
		setRateLimitHeaders(ctx, d.Policies)
		if d.Deny {
			trt.stats.rateLimited.Add(1)
			writeError(ctx, rateLimitError(&d))
			return
		}
		rc.reservations, rc.ratelimit = d.Reservations, p
	}

	// 3. Target.
	switch rc.route.Action {
	case abi.RouteBuiltin:
		rc.ep.serve(rc)
	case abi.RoutePlugin:
		s.serveHandle(rc, handler)
	case abi.RouteRespond:
		writeResponse(ctx, &rc.route.Response)
	}
}

func abiViolation(p *pluginRT, hook abi.Hook, err error) *APIError {
	return &APIError{Status: fasthttp.StatusInternalServerError, Type: typePlugin, Code: "plugin_abi_violation",
		Message: "plugin " + p.label + " " + hook.String() + " hook returned an invalid result: " + err.Error()}
}

// hopByHop are headers a plugin may not set: they belong to the connection, which the host owns.
var hopByHop = map[string]bool{
	"connection": true, "keep-alive": true, "transfer-encoding": true, "content-length": true, "upgrade": true,
	"te": true, "trailer": true, "proxy-authenticate": true, "proxy-authorization": true,
}

// writeResponse writes a plugin's response. Invalid or connection-level headers are dropped.
func writeResponse(ctx *fasthttp.RequestCtx, r *abi.Response) {
	status := int(r.Status)
	if status == 0 {
		status = fasthttp.StatusOK
	}
	if status < 100 || status > 599 {
		status = fasthttp.StatusInternalServerError
	}
	ctx.SetStatusCode(status)
	contentType := false
	for _, h := range r.Headers {
		name := strings.ToLower(h.Key)
		if hopByHop[name] || !validHeader(h.Key, h.Value) {
			continue
		}
		if name == "content-type" {
			contentType = true
		}
		ctx.Response.Header.Add(h.Key, h.Value)
	}
	if !contentType {
		ctx.SetContentType("text/plain; charset=utf-8")
	}
	ctx.SetBody(r.Body)
}

// validHeader reports whether a header name is an HTTP token and its value has no control characters
// other than tab (no response splitting).
func validHeader(name, value string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	for i := 0; i < len(value); i++ {
		if c := value[i]; (c < ' ' && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

// setRateLimitHeaders writes the IETF RateLimit and RateLimit-Policy headers
// (draft-ietf-httpapi-ratelimit-headers): one list item per policy the plugin reported.
func setRateLimitHeaders(ctx *fasthttp.RequestCtx, policies []abi.RatePolicy) {
	if len(policies) == 0 {
		return
	}
	var pol, cur []byte
	for i, p := range policies {
		if i > 0 {
			pol = append(pol, ", "...)
			cur = append(cur, ", "...)
		}
		name := p.Name
		if name == "" {
			name = "default"
		}
		pol = strconv.AppendQuote(pol, name)
		pol = append(pol, ";q="...)
		pol = strconv.AppendInt(pol, p.Limit, 10)
		if p.WindowMs > 0 {
			pol = append(pol, ";w="...)
			pol = strconv.AppendInt(pol, ceilSeconds(p.WindowMs), 10)
		}
		cur = strconv.AppendQuote(cur, name)
		cur = append(cur, ";r="...)
		cur = strconv.AppendInt(cur, p.Remaining, 10)
		cur = append(cur, ";t="...)
		cur = strconv.AppendInt(cur, ceilSeconds(p.ResetMs), 10)
	}
	// Keep the draft's spelling (fasthttp would write Ratelimit-Policy; names are case-insensitive, but
	// clients grep for them).
	ctx.Response.Header.DisableNormalizing()
	ctx.Response.Header.SetBytesV("RateLimit-Policy", pol)
	ctx.Response.Header.SetBytesV("RateLimit", cur)
}

func ceilSeconds(ms int64) int64 {
	if ms <= 0 {
		return 0
	}
	return (ms + 999) / 1000
}

// rateLimitError is the 429 (or the plugin's status) for a denial.
func rateLimitError(d *abi.RateLimitDecision) *APIError {
	status := int(d.Status)
	if status < 400 || status > 599 {
		status = fasthttp.StatusTooManyRequests
	}
	msg := d.Message
	if msg == "" {
		msg = "rate limit exceeded"
	}
	if d.RetryAfterMs > 0 {
		msg += "; retry after " + strconv.FormatInt(ceilSeconds(d.RetryAfterMs), 10) + "s"
	}
	retry := d.RetryAfterMs
	if retry < 0 {
		retry = 0
	}
	return &APIError{Status: status, Type: typeRateLimit, Code: "rate_limit_exceeded", Message: msg, RetryAfterMs: retry}
}

// forwardedHeader reports whether a request header may be shown to plugins: credentials never are.
func forwardedHeader(name []byte) bool {
	switch len(name) {
	case 7:
		return !strings.EqualFold(string(name), "api-key")
	case 9:
		return !strings.EqualFold(string(name), "x-api-key")
	case 13:
		return !strings.EqualFold(string(name), "authorization")
	}
	return true
}

// encodeRequest encodes the request for a hook, straight from fasthttp's buffers into rc.in.
func (rc *reqCtx) encodeRequest(withRoute, withBody bool) []byte {
	ctx := rc.ctx
	e := abi.Encoder{B: rc.in[:0]}
	e.Bytes(1, rc.rid)
	e.Bytes(2, ctx.Method())
	e.Bytes(3, ctx.Path())
	e.Bytes(4, ctx.URI().QueryString())
	for k, v := range ctx.Request.Header.All() {
		if !forwardedHeader(k) {
			continue
		}
		at := e.PairBytes(5, k, v)
		lowerASCII(e.B[at : at+len(k)])
	}
	if ip, ok := netip.AddrFromSlice(ctx.RemoteIP()); ok {
		m := len(e.B)
		e.B = append(e.B, 0x32, 0) // field 6, length patched below (an IP is < 128 bytes)
		e.B = ip.Unmap().AppendTo(e.B)
		e.B[m+1] = byte(len(e.B) - m - 2)
	}
	e.String(7, rc.trt.t.ID)
	e.String(8, rc.key.ID)
	e.String(9, rc.key.Label)
	if withBody {
		e.Bytes(10, ctx.PostBody())
	}
	if withRoute {
		m := e.Begin(11)
		e.B = rc.route.AppendTo(e.B)
		e.End(m)
	}
	e.Int(12, rc.tokens)
	rc.in = e.B
	return e.B
}

func lowerASCII(b []byte) {
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
}

// settleTokens reconciles the token reservations of the ratelimit hook with the tokens the request
// really used: the difference is taken from (or returned to) each reserved budget. Tokens streamed before
// a client disconnected count as used. It is safe to call once per request; later calls do nothing.
func (s *Server) settleTokens(rc *reqCtx, used int64) {
	s.settle(rc.ratelimit, rc.reservations, used+rc.pluginTokens)
	rc.reservations = nil
}

// settle reconciles the reservations a ratelimit plugin made with the tokens used.
func (s *Server) settle(ratelimit *pluginRT, reservations []abi.TokenReservation, used int64) {
	if ratelimit == nil {
		return
	}
	hc := hostCall{s: s, plugin: ratelimit}
	for _, r := range reservations {
		p := gcra.Params{Limit: r.Limit, Period: time.Duration(r.PeriodMs) * time.Millisecond, Burst: r.Burst}
		if !p.Valid() {
			continue
		}
		s.limiter.Adjust(hc.scopedKey([]byte(r.Key)), p, used-r.Reserved)
	}
}
