package server

import (
	_ "embed"

	"github.com/valyala/fasthttp"
)

// The API reference: openapi.json (OpenAPI 3.1) describes every endpoint of the server, and GET
// /openapi.json serves it. openapi_test.go keeps it true: it compares the document's paths with the
// registered routes and validates real responses against its schemas. docs/api.md is the readable guide.

//go:embed openapi.json
var openAPIDocument []byte

// registerOpenAPI adds the handler of /openapi.json to the paths served outside /v1.
func (s *Server) registerOpenAPI() {
	s.otherHandlers = append(s.otherHandlers, serveOpenAPI)
}

// serveOpenAPI answers GET (and HEAD) /openapi.json with the document; it reports whether the path was
// its own.
func serveOpenAPI(ctx *fasthttp.RequestCtx) bool {
	if string(ctx.Path()) != "/openapi.json" {
		return false
	}
	if !ctx.IsGet() && !ctx.IsHead() {
		refuseMethod(ctx)
		return true
	}
	ctx.SetContentType("application/json")
	ctx.Response.Header.Set("Cache-Control", "no-cache")
	ctx.SetBody(openAPIDocument)
	return true
}
