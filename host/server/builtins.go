package server

import (
	"bytes"
	"encoding/json"
	"strings"

	"github.com/valyala/fasthttp"

	"github.com/plinth-dev/plinth/abi"
)

// endpoint is a built-in endpoint: a name a route decision can target, and the method and path pattern
// the default routing matches.
type endpoint struct {
	name   string
	method string
	segs   []string // pattern segments; "{name}" captures one segment
	serve  func(rc *reqCtx)
	// prepare, when set, runs after routing and before the ratelimit hook: it parses and validates the
	// request (a malformed request then costs no quota) and may set rc.tokens for token budgets and
	// rc.data for serve.
	prepare func(rc *reqCtx) *APIError
}

// route registers a built-in endpoint and returns it (to set prepare). Patterns are matched in
// registration order.
func (s *Server) route(method, pattern, name string, serve func(rc *reqCtx)) *endpoint {
	ep := &endpoint{name: name, method: method, segs: strings.Split(strings.Trim(pattern, "/"), "/"), serve: serve}
	if _, dup := s.byName[name]; dup {
		panic("server: duplicate endpoint " + name)
	}
	s.endpoints = append(s.endpoints, ep)
	s.byName[name] = ep
	return ep
}

// registerEndpoints lists every built-in endpoint. Each feature's handlers live in their own file.
func (s *Server) registerEndpoints() {
	s.route("GET", "/v1/models", "models.list", s.listModels)
	for _, register := range endpointRegistrars {
		register(s)
	}
}

// endpointRegistrars are the registration functions of the feature files (conversations, vector
// stores, chat...), each adding its routes with Server.route.
var endpointRegistrars []func(*Server)

// EndpointNames returns the names of all built-in endpoints, for documentation and validation.
func (s *Server) EndpointNames() []string {
	names := make([]string, len(s.endpoints))
	for i, ep := range s.endpoints {
		names[i] = ep.name
	}
	return names
}

// match finds the built-in endpoint for a method and path, with its path parameters. When the path
// matches only under other methods, allowed lists them (for 405).
func (s *Server) match(method, path []byte) (ep *endpoint, params []abi.Pair, allowed []string) {
	p := bytes.Trim(path, "/")
	for _, e := range s.endpoints {
		if !matchSegs(e.segs, p) {
			continue
		}
		if string(method) != e.method {
			allowed = append(allowed, e.method)
			continue
		}
		return e, captures(e.segs, p), nil
	}
	return nil, nil, allowed
}

// matchSegs reports whether path (without leading and trailing slashes) matches the pattern segments.
// It does not allocate.
func matchSegs(segs []string, path []byte) bool {
	for i, seg := range segs {
		j := bytes.IndexByte(path, '/')
		var part []byte
		if j < 0 {
			part, path = path, nil
			if i != len(segs)-1 {
				return false
			}
		} else {
			part, path = path[:j], path[j+1:]
		}
		if len(part) == 0 {
			return false
		}
		if seg[0] != '{' && string(part) != seg {
			return false
		}
	}
	return path == nil
}

// captures returns the values of a matched pattern's {name} segments.
func captures(segs []string, path []byte) []abi.Pair {
	var out []abi.Pair
	for _, seg := range segs {
		j := bytes.IndexByte(path, '/')
		part := path
		if j >= 0 {
			part, path = path[:j], path[j+1:]
		}
		if seg[0] == '{' {
			out = append(out, abi.Pair{Key: seg[1 : len(seg)-1], Value: string(part)})
		}
	}
	return out
}

// listModels serves GET /v1/models: the models the tenant's chat completions can use. The answer only
// changes with the tenant's configuration, which only changes with a new state, so it is rendered once
// per tenant and state.
func (s *Server) listModels(rc *reqCtx) {
	if b := rc.trt.modelsJSON.Load(); b != nil {
		rc.ctx.SetContentType("application/json")
		rc.ctx.SetBody(*b)
		return
	}
	type model struct {
		ID      string `json:"id"`
		Object  string `json:"object"`
		Created int64  `json:"created"`
		OwnedBy string `json:"owned_by"`
	}
	list := struct {
		Object string  `json:"object"`
		Data   []model `json:"data"`
	}{Object: "list", Data: []model{}}
	for _, m := range s.models(rc) {
		list.Data = append(list.Data, model{ID: m.ID, Object: "model", Created: m.Created, OwnedBy: m.OwnedBy})
	}
	b, err := json.Marshal(list)
	if err != nil {
		writeError(rc.ctx, errInternal("encoding the response: "+err.Error()))
		return
	}
	rc.trt.modelsJSON.Store(&b)
	rc.ctx.SetContentType("application/json")
	rc.ctx.SetBody(b)
}

// writeJSON answers with v as JSON.
func writeJSON(ctx *fasthttp.RequestCtx, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		writeError(ctx, errInternal("encoding the response: "+err.Error()))
		return
	}
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json")
	ctx.SetBody(b)
}
