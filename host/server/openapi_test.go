package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"mime"
	"mime/multipart"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/plinth-dev/plinth/host/tenant"
	"github.com/plinth-dev/plinth/runtime/wasmbuild"
)

// The tests of openapi.json: it is a valid OpenAPI 3.1 document, it lists exactly the server's routes, and
// real responses of a running server (real store, search service, plugins) match its schemas.

const openAPIBase = "https://plinth.test/openapi.json"

var openAPIMethods = []string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}

// openAPISpec is the parsed document, with schemas compiled on demand for validating requests and
// responses, and a record of the (method, path, status) triples validated.
type openAPISpec struct {
	doc      map[string]any // as parsed
	compiler *jsonschema.Compiler
	mu       sync.Mutex
	compiled map[string]*jsonschema.Schema
	covered  map[string]bool // "GET /v1/models 200"
}

func parseOpenAPI(t testing.TB) map[string]any {
	t.Helper()
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(openAPIDocument))
	if err != nil {
		t.Fatalf("openapi.json does not parse: %v", err)
	}
	doc, ok := v.(map[string]any)
	if !ok {
		t.Fatal("openapi.json is not an object")
	}
	return doc
}

// loadOpenAPI returns the document prepared for validating responses strictly: every object schema that
// lists its properties and says nothing of others gets "unevaluatedProperties": false, so a field the
// server sends that the document does not describe fails the test (the published document stays open to
// additions, as OpenAI's objects are).
func loadOpenAPI(t testing.TB) *openAPISpec {
	t.Helper()
	strict := parseOpenAPI(t)
	closeObjects(strict)
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	if err := c.AddResource(openAPIBase, strict); err != nil {
		t.Fatal(err)
	}
	return &openAPISpec{doc: parseOpenAPI(t), compiler: c, compiled: map[string]*jsonschema.Schema{}, covered: map[string]bool{}}
}

func closeObjects(v any) {
	switch v := v.(type) {
	case map[string]any:
		_, props := v["properties"].(map[string]any)
		_, add := v["additionalProperties"]
		_, uneval := v["unevaluatedProperties"]
		if v["type"] == "object" && props && !add && !uneval {
			v["unevaluatedProperties"] = false
		}
		for _, e := range v {
			closeObjects(e)
		}
	case []any:
		for _, e := range v {
			closeObjects(e)
		}
	}
}

// jsonPointer resolves a JSON pointer ("#/a/b") in doc.
func jsonPointer(doc any, ptr string) (any, bool) {
	if !strings.HasPrefix(ptr, "#") {
		return nil, false
	}
	cur := doc
	for _, tok := range strings.Split(strings.TrimPrefix(ptr, "#"), "/")[1:] {
		tok = strings.ReplaceAll(strings.ReplaceAll(tok, "~1", "/"), "~0", "~")
		switch c := cur.(type) {
		case map[string]any:
			v, ok := c[tok]
			if !ok {
				return nil, false
			}
			cur = v
		case []any:
			i, err := strconv.Atoi(tok)
			if err != nil || i < 0 || i >= len(c) {
				return nil, false
			}
			cur = c[i]
		default:
			return nil, false
		}
	}
	return cur, true
}

func pointerToken(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
}

// deref follows the $ref of the node at ptr (components may refer on), returning the final node and its
// pointer.
func (sp *openAPISpec) deref(ptr string) (map[string]any, string, error) {
	for range 10 {
		v, ok := jsonPointer(sp.doc, ptr)
		if !ok {
			return nil, ptr, fmt.Errorf("%s does not resolve", ptr)
		}
		m, ok := v.(map[string]any)
		if !ok {
			return nil, ptr, fmt.Errorf("%s is not an object", ptr)
		}
		r, ok := m["$ref"].(string)
		if !ok {
			return m, ptr, nil
		}
		ptr = r
	}
	return nil, ptr, fmt.Errorf("%s: $ref chain too long", ptr)
}

func (sp *openAPISpec) schema(ptr string) (*jsonschema.Schema, error) {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if s, ok := sp.compiled[ptr]; ok {
		return s, nil
	}
	s, err := sp.compiler.Compile(openAPIBase + ptr)
	if err != nil {
		return nil, err
	}
	sp.compiled[ptr] = s
	return s, nil
}

// template returns the document's path template that matches a request path (the one with the most literal
// segments when several do).
func (sp *openAPISpec) template(path string) string {
	segs := strings.Split(strings.Trim(path, "/"), "/")
	best, bestLiterals := "", -1
	for tmpl := range sp.doc["paths"].(map[string]any) {
		ts := strings.Split(strings.Trim(tmpl, "/"), "/")
		if len(ts) != len(segs) {
			continue
		}
		literals := 0
		match := true
		for i, s := range ts {
			switch {
			case strings.HasPrefix(s, "{"):
				match = match && segs[i] != ""
			case s == segs[i]:
				literals++
			default:
				match = false
			}
		}
		if match && literals > bestLiterals {
			best, bestLiterals = tmpl, literals
		}
	}
	return best
}

// operation returns the operation of a method and path template, with its pointer.
func (sp *openAPISpec) operation(method, tmpl string) (map[string]any, string) {
	ptr := "#/paths/" + pointerToken(tmpl) + "/" + strings.ToLower(method)
	op, ok := jsonPointer(sp.doc, ptr)
	if !ok {
		return nil, ptr
	}
	return op.(map[string]any), ptr
}

func decodeInstance(t testing.TB, b []byte) any {
	t.Helper()
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("not JSON: %v: %.300s", err, b)
	}
	return v
}

func (sp *openAPISpec) validate(t testing.TB, what, ptr string, v any) {
	t.Helper()
	s, err := sp.schema(ptr)
	if err != nil {
		t.Fatalf("%s: compiling %s: %v", what, ptr, err)
	}
	if err := s.Validate(v); err != nil {
		b, _ := json.Marshal(v)
		t.Errorf("%s does not match the document (%s):\n%v\nvalue: %.2000s", what, ptr, err, b)
	}
}

// checkRequest validates a JSON request body against the operation's request schema: the document must
// accept the requests the tests send to the server.
func (sp *openAPISpec) checkRequest(t testing.TB, method, rawURL, contentType string, body []byte) {
	t.Helper()
	u, _ := url.Parse(rawURL)
	tmpl := sp.template(u.Path)
	op, ptr := sp.operation(method, tmpl)
	if op == nil || len(body) == 0 {
		return
	}
	if _, ok := op["requestBody"]; !ok {
		t.Errorf("%s %s sends a body but the document has no requestBody", method, tmpl)
		return
	}
	rb, rbPtr, err := sp.deref(ptr + "/requestBody")
	if err != nil {
		t.Fatal(err)
	}
	mt, _, _ := mime.ParseMediaType(contentType)
	if mt == "" {
		mt = "application/json"
	}
	content, _ := rb["content"].(map[string]any)
	if _, ok := content[mt]; !ok {
		t.Errorf("%s %s: the document's requestBody has no %s", method, tmpl, mt)
		return
	}
	if mt == "application/json" {
		sp.validate(t, "request of "+method+" "+tmpl, rbPtr+"/content/"+pointerToken(mt)+"/schema", decodeInstance(t, body))
	}
}

// checkResponse validates a response against the document: the status must be documented for the path
// and method, required headers present, and the body must match the media type's schema.
func (sp *openAPISpec) checkResponse(t testing.TB, method, rawURL string, r resp) {
	t.Helper()
	u, _ := url.Parse(rawURL)
	tmpl := sp.template(u.Path)
	var respPtr string
	op, opPtr := sp.operation(method, tmpl)
	switch {
	case tmpl == "" && r.status == 404:
		respPtr = "#/components/responses/NoRoute"
	case op == nil && r.status == 405:
		respPtr = "#/components/responses/MethodNotAllowed"
	case op == nil:
		t.Errorf("%s %s answered %d, but the document has no such operation", method, u.Path, r.status)
		return
	default:
		status := strconv.Itoa(r.status)
		responses := op["responses"].(map[string]any)
		if _, ok := responses[status]; !ok {
			t.Errorf("%s %s answered %d, which the document does not list (%s): %.300s", method, tmpl, r.status, opPtr, r.body)
			return
		}
		respPtr = opPtr + "/responses/" + status
	}
	res, resPtr, err := sp.deref(respPtr)
	if err != nil {
		t.Fatal(err)
	}
	where := fmt.Sprintf("%s %s %d", method, tmpl, r.status)
	if hs, ok := res["headers"].(map[string]any); ok {
		for name := range hs {
			h, _, err := sp.deref(resPtr + "/headers/" + pointerToken(name))
			if err != nil {
				t.Fatal(err)
			}
			if h["required"] == true && r.header.Get(name) == "" {
				t.Errorf("%s: the required header %s is missing", where, name)
			}
		}
	}
	content, _ := res["content"].(map[string]any)
	ct := r.header.Get("Content-Type")
	mt, _, _ := mime.ParseMediaType(ct)
	if len(content) == 0 {
		if r.body != "" {
			t.Errorf("%s: a body, but the document describes none", where)
		}
	} else if _, ok := content[mt]; !ok {
		t.Errorf("%s: Content-Type %q is not among the document's media types", where, ct)
		return
	}
	mtPtr := resPtr + "/content/" + pointerToken(mt)
	switch mt {
	case "application/json":
		sp.validate(t, "response of "+where, mtPtr+"/schema", decodeInstance(t, []byte(r.body)))
	case "text/event-stream":
		events := openAPIEvents(t, r.body)
		if len(events) == 0 || events[len(events)-1] != "[DONE]" {
			t.Errorf("%s: the stream does not end with [DONE]", where)
		}
		for _, ev := range events {
			if ev == "[DONE]" || strings.HasPrefix(ev, ":") {
				continue
			}
			sp.validate(t, "event of "+where, mtPtr+"/x-sse-data", decodeInstance(t, []byte(ev)))
		}
	}
	sp.mu.Lock()
	sp.covered[fmt.Sprintf("%s %s %d", strings.ToUpper(method), tmpl, r.status)] = true
	sp.mu.Unlock()
}

// do sends a request with a JSON (or empty) body through the helper of server_test.go and validates the
// request and the response.
func (sp *openAPISpec) do(t testing.TB, method, url, key, body string) resp {
	t.Helper()
	sp.checkRequest(t, method, url, "application/json", []byte(body))
	r := do(t, method, url, key, body)
	sp.checkResponse(t, method, url, r)
	return r
}

// send is do with a Content-Type of its own (uploads).
func (sp *openAPISpec) send(t testing.TB, method, url, key, contentType string, body []byte) resp {
	t.Helper()
	sp.checkRequest(t, method, url, contentType, body)
	return sp.sendRaw(t, method, url, key, contentType, body)
}

// sendRaw is send without validating the request (one the document rightly refuses).
func (sp *openAPISpec) sendRaw(t testing.TB, method, url, key, contentType string, body []byte) resp {
	t.Helper()
	r := send(t, method, url, key, contentType, body)
	sp.checkResponse(t, method, url, r)
	return r
}

// wantStatus fails the test unless r has the status (and, for errors, the code).
func wantStatus(t testing.TB, what string, r resp, status int, code string) resp {
	t.Helper()
	if r.status != status || (code != "" && r.err.Code != code) {
		t.Fatalf("%s: %d %s, want %d %s", what, r.status, r.body, status, code)
	}
	return r
}

func jsonField(t testing.TB, r resp, name string) string {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(r.body), &m); err != nil {
		t.Fatalf("%v: %s", err, r.body)
	}
	s, _ := m[name].(string)
	return s
}

// --- The document itself -----------------------------------------------------------------------------

func TestOpenAPIDocumentIsValid(t *testing.T) {
	doc := parseOpenAPI(t)
	if doc["openapi"] != "3.1.0" {
		t.Errorf("openapi is %v, want 3.1.0", doc["openapi"])
	}
	info, _ := doc["info"].(map[string]any)
	if s, _ := info["title"].(string); s == "" {
		t.Error("info.title is missing")
	}
	if s, _ := info["version"].(string); s == "" {
		t.Error("info.version is missing")
	}
	comps, _ := doc["components"].(map[string]any)
	schemes, _ := comps["securitySchemes"].(map[string]any)
	for name, v := range schemes {
		s := v.(map[string]any)
		switch s["type"] {
		case "http":
			if s["scheme"] == nil {
				t.Errorf("security scheme %s: http without scheme", name)
			}
		case "apiKey":
			if s["in"] != "header" || s["name"] == nil {
				t.Errorf("security scheme %s: apiKey needs in and name", name)
			}
		default:
			t.Errorf("security scheme %s: type %v", name, s["type"])
		}
	}
	checkSecurity := func(where string, v any) {
		reqs, ok := v.([]any)
		if !ok {
			t.Errorf("%s: security is not an array", where)
			return
		}
		for _, req := range reqs {
			for name, scopes := range req.(map[string]any) {
				if schemes[name] == nil {
					t.Errorf("%s: security scheme %q is not defined", where, name)
				}
				if len(scopes.([]any)) != 0 {
					t.Errorf("%s: %s has scopes", where, name)
				}
			}
		}
	}
	checkSecurity("document", doc["security"])
	tags := map[string]bool{}
	for _, tg := range doc["tags"].([]any) {
		tags[tg.(map[string]any)["name"].(string)] = true
	}

	// Every $ref is local and resolves.
	var refs func(where string, v any)
	refs = func(where string, v any) {
		switch v := v.(type) {
		case map[string]any:
			if r, ok := v["$ref"].(string); ok {
				if _, ok := jsonPointer(doc, r); !ok {
					t.Errorf("%s: $ref %q does not resolve", where, r)
				}
			}
			for k, e := range v {
				refs(where+"/"+pointerToken(k), e)
			}
		case []any:
			for i, e := range v {
				refs(where+"/"+strconv.Itoa(i), e)
			}
		}
	}
	refs("#", doc)

	sp := &openAPISpec{doc: doc}
	resolve := func(ptr string) map[string]any {
		m, _, err := sp.deref(ptr)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	if err := c.AddResource(openAPIBase, doc); err != nil {
		t.Fatal(err)
	}
	compile := func(ptr string) {
		if _, err := c.Compile(openAPIBase + ptr); err != nil {
			t.Errorf("%s is not a valid JSON Schema 2020-12: %v", ptr, err)
		}
	}
	for name := range comps["schemas"].(map[string]any) {
		compile("#/components/schemas/" + pointerToken(name))
	}
	checkContent := func(where, ptr string, content map[string]any) {
		for mt, v := range content {
			if _, _, err := mime.ParseMediaType(mt); err != nil {
				t.Errorf("%s: media type %q: %v", where, mt, err)
			}
			m := v.(map[string]any)
			if _, ok := m["schema"]; ok {
				compile(ptr + "/content/" + pointerToken(mt) + "/schema")
			}
			if _, ok := m["x-sse-data"]; ok {
				compile(ptr + "/content/" + pointerToken(mt) + "/x-sse-data")
			}
		}
	}

	opKeys := map[string]bool{"tags": true, "summary": true, "description": true, "externalDocs": true, "operationId": true,
		"parameters": true, "requestBody": true, "responses": true, "callbacks": true, "deprecated": true, "security": true, "servers": true}
	pathKeys := map[string]bool{"$ref": true, "summary": true, "description": true, "servers": true, "parameters": true}
	for _, m := range openAPIMethods {
		pathKeys[m] = true
	}
	statusKey := regexp.MustCompile(`^([1-5][0-9][0-9]|[1-5]XX|default)$`)
	templateParam := regexp.MustCompile(`\{([^}]+)\}`)
	opIDs := map[string]string{}
	paths := doc["paths"].(map[string]any)
	if len(paths) == 0 {
		t.Fatal("no paths")
	}
	for tmpl, v := range paths {
		item := v.(map[string]any)
		if !strings.HasPrefix(tmpl, "/") {
			t.Errorf("path %q does not start with /", tmpl)
		}
		itemPtr := "#/paths/" + pointerToken(tmpl)
		for k := range item {
			if !pathKeys[k] && !strings.HasPrefix(k, "x-") {
				t.Errorf("%s: unknown path item field %q", tmpl, k)
			}
		}
		inTemplate := map[string]bool{}
		for _, m := range templateParam.FindAllStringSubmatch(tmpl, -1) {
			inTemplate[m[1]] = true
		}
		params := func(ptr string, list any) map[string]map[string]any {
			out := map[string]map[string]any{}
			l, _ := list.([]any)
			for i := range l {
				p := resolve(fmt.Sprintf("%s/parameters/%d", ptr, i))
				name, _ := p["name"].(string)
				in, _ := p["in"].(string)
				where := fmt.Sprintf("%s parameter %q", ptr, name)
				switch in {
				case "path":
					if p["required"] != true {
						t.Errorf("%s: path parameters must be required", where)
					}
				case "query", "header", "cookie":
				default:
					t.Errorf("%s: in is %q", where, in)
				}
				_, hasSchema := p["schema"]
				_, hasContent := p["content"]
				if name == "" || hasSchema == hasContent {
					t.Errorf("%s: needs a name and exactly one of schema and content", where)
				}
				if _, dup := out[in+":"+name]; dup {
					t.Errorf("%s: declared twice", where)
				}
				out[in+":"+name] = p
			}
			return out
		}
		pathLevel := params(itemPtr, item["parameters"])
		operations := 0
		for _, method := range openAPIMethods {
			v, ok := item[method]
			if !ok {
				continue
			}
			operations++
			op := v.(map[string]any)
			opPtr := itemPtr + "/" + method
			where := strings.ToUpper(method) + " " + tmpl
			for k := range op {
				if !opKeys[k] && !strings.HasPrefix(k, "x-") {
					t.Errorf("%s: unknown operation field %q", where, k)
				}
			}
			id, _ := op["operationId"].(string)
			if id == "" {
				t.Errorf("%s: no operationId", where)
			} else if other, dup := opIDs[id]; dup {
				t.Errorf("%s: operationId %q is also %s's", where, id, other)
			}
			opIDs[id] = where
			for _, tg := range op["tags"].([]any) {
				if !tags[tg.(string)] {
					t.Errorf("%s: tag %q is not declared", where, tg)
				}
			}
			if s, ok := op["security"]; ok {
				checkSecurity(where, s)
			}
			declared := map[string]bool{}
			all := params(opPtr, op["parameters"])
			for k, p := range pathLevel {
				if _, ok := all[k]; !ok {
					all[k] = p
				}
			}
			for _, p := range all {
				if p["in"] == "path" {
					declared[p["name"].(string)] = true
					if !inTemplate[p["name"].(string)] {
						t.Errorf("%s: path parameter %q is not in the template", where, p["name"])
					}
				}
			}
			for name := range inTemplate {
				if !declared[name] {
					t.Errorf("%s: the template's {%s} is not declared as a path parameter", where, name)
				}
			}
			if _, ok := op["requestBody"]; ok {
				rbPtr := opPtr + "/requestBody"
				rb := resolve(rbPtr)
				content, _ := rb["content"].(map[string]any)
				if len(content) == 0 {
					t.Errorf("%s: requestBody without content", where)
				}
				_, rbPtr, _ = sp.deref(rbPtr)
				checkContent(where, rbPtr, content)
			}
			responses, _ := op["responses"].(map[string]any)
			if len(responses) == 0 {
				t.Errorf("%s: no responses", where)
			}
			success := false
			for status := range responses {
				if !statusKey.MatchString(status) {
					t.Errorf("%s: response key %q", where, status)
				}
				success = success || strings.HasPrefix(status, "2")
				rPtr := opPtr + "/responses/" + status
				r := resolve(rPtr)
				if d, _ := r["description"].(string); d == "" {
					t.Errorf("%s %s: a response needs a description", where, status)
				}
				_, rPtr, _ = sp.deref(rPtr)
				content, _ := r["content"].(map[string]any)
				checkContent(where+" "+status, rPtr, content)
				if hs, ok := r["headers"].(map[string]any); ok {
					for name := range hs {
						h := resolve(rPtr + "/headers/" + pointerToken(name))
						if _, ok := h["schema"]; !ok {
							t.Errorf("%s %s: header %s has no schema", where, status, name)
						}
					}
				}
			}
			if !success {
				t.Errorf("%s: no success response", where)
			}
		}
		if operations == 0 {
			t.Errorf("%s: no operations", tmpl)
		}
	}
	for name := range comps["responses"].(map[string]any) {
		r := resolve("#/components/responses/" + pointerToken(name))
		if d, _ := r["description"].(string); d == "" {
			t.Errorf("response %s has no description", name)
		}
	}
}

// TestOpenAPIMatchesRoutes compares the document's paths and methods with the routes the server
// registers: a route missing from either side fails. It also checks the built-in endpoint names (the
// operation ids of /v1) and the roles of the admin operations, and that docs/api.md names every built-in
// endpoint.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	ts := startServer(t, Options{})
	server := map[string]string{} // "GET /v1/models" → endpoint name, admin role, or "" for fixed paths
	for _, ep := range ts.endpoints {
		server[ep.method+" /"+strings.Join(ep.segs, "/")] = ep.name
	}
	for _, r := range ts.admin {
		role := "tenant-admin"
		if r.operator {
			role = "operator"
		}
		server[r.method+" /"+strings.Join(r.segs, "/")] = role
	}
	for _, p := range []string{"/healthz", "/readyz", "/metrics", "/openapi.json"} {
		server["GET "+p] = ""
	}
	doc := parseOpenAPI(t)
	documented := map[string]map[string]any{}
	for tmpl, v := range doc["paths"].(map[string]any) {
		for _, m := range openAPIMethods {
			if op, ok := v.(map[string]any)[m]; ok {
				documented[strings.ToUpper(m)+" "+tmpl] = op.(map[string]any)
			}
		}
	}
	for route, name := range server {
		op, ok := documented[route]
		if !ok {
			t.Errorf("the server serves %s, which openapi.json does not document", route)
			continue
		}
		switch {
		case strings.Contains(route, " /v1/"):
			if op["operationId"] != name || op["x-plinth-endpoint"] != name {
				t.Errorf("%s: operationId %v and x-plinth-endpoint %v, want the endpoint name %q", route, op["operationId"], op["x-plinth-endpoint"], name)
			}
		case strings.Contains(route, " /admin/"):
			sec, _ := json.Marshal(op["security"])
			wantSec := `[{"operatorKey":[]},{"tenantAdminKey":[]}]`
			if name == "operator" {
				wantSec = `[{"operatorKey":[]}]`
			}
			if op["x-plinth-role"] != name || string(sec) != wantSec {
				t.Errorf("%s: x-plinth-role %v and security %s, want %s and %s", route, op["x-plinth-role"], sec, name, wantSec)
			}
		default:
			if sec, ok := op["security"].([]any); !ok || len(sec) != 0 {
				t.Errorf("%s needs no key: its security must be []", route)
			}
		}
	}
	for route := range documented {
		if _, ok := server[route]; !ok {
			t.Errorf("openapi.json documents %s, which the server does not serve", route)
		}
	}

	apiDoc, err := os.ReadFile("../../docs/api.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range ts.EndpointNames() {
		if !strings.Contains(string(apiDoc), "`"+name+"`") {
			t.Errorf("docs/api.md does not name the built-in endpoint %q", name)
		}
	}
}

// errorRecorder collects the errors a check reports.
type errorRecorder struct {
	testing.TB
	errs []string
}

func (r *errorRecorder) Helper() {}

func (r *errorRecorder) Errorf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

// TestOpenAPIValidatorCatchesMismatches shows the checks of the tests below fail where they should: a
// response or request the document does not describe is an error.
func TestOpenAPIValidatorCatchesMismatches(t *testing.T) {
	sp := loadOpenAPI(t)
	hdr := func(contentType string, requestID bool) http.Header {
		h := http.Header{"Content-Type": {contentType}}
		if requestID {
			h.Set("X-Request-Id", "req_0123abcd1")
		}
		return h
	}
	models := `{"object":"list","data":[{"id":"m","object":"model","created":0,"owned_by":"plinth"}]}`
	chunk := `{"id":"chatcmpl-000000000000000000000000","object":"chat.completion.chunk","created":1,"model":"m",` +
		`"choices":[{"index":0,"delta":{"content":"Hi"},"logprobs":null,"finish_reason":null}]}`
	notFound := `{"error":{"message":"x","type":"invalid_request_error","param":"model","code":"model_not_found"}}`
	cases := []struct {
		name, method, path string
		r                  resp
		bad                bool
	}{
		{"a valid model list", "GET", "/v1/models", resp{status: 200, header: hdr("application/json", true), body: models}, false},
		{"an undocumented field", "GET", "/v1/models", resp{status: 200, header: hdr("application/json", true),
			body: strings.Replace(models, `"owned_by"`, `"extra":1,"owned_by"`, 1)}, true},
		{"a wrong type", "GET", "/v1/models", resp{status: 200, header: hdr("application/json", true),
			body: strings.Replace(models, `"created":0`, `"created":"0"`, 1)}, true},
		{"a missing field", "GET", "/v1/models", resp{status: 200, header: hdr("application/json", true),
			body: strings.Replace(models, `,"owned_by":"plinth"`, "", 1)}, true},
		{"a missing required header", "GET", "/v1/models", resp{status: 200, header: hdr("application/json", false), body: models}, true},
		{"an undocumented media type", "GET", "/v1/models", resp{status: 200, header: hdr("text/html", true), body: "<p>"}, true},
		{"an undocumented status", "GET", "/v1/models", resp{status: 418, header: hdr("application/json", true), body: notFound}, true},
		{"an undocumented operation", "PATCH", "/v1/models", resp{status: 200, header: hdr("application/json", true), body: models}, true},
		{"a valid error", "GET", "/v1/models/m", resp{status: 404, header: hdr("application/json", true), body: notFound}, false},
		{"an error without its code", "GET", "/v1/models/m", resp{status: 404, header: hdr("application/json", true),
			body: strings.Replace(notFound, `,"code":"model_not_found"`, "", 1)}, true},
		{"an error of an unknown type", "GET", "/v1/models/m", resp{status: 404, header: hdr("application/json", true),
			body: strings.Replace(notFound, "invalid_request_error", "oops", 1)}, true},
		{"a valid stream", "POST", "/v1/chat/completions", resp{status: 200, header: hdr("text/event-stream; charset=utf-8", true),
			body: "data: " + chunk + "\n\n: keep-alive\n\ndata: [DONE]\n\n"}, false},
		{"a stream chunk without its id", "POST", "/v1/chat/completions", resp{status: 200, header: hdr("text/event-stream; charset=utf-8", true),
			body: "data: " + strings.Replace(chunk, `"id":"chatcmpl-000000000000000000000000",`, "", 1) + "\n\ndata: [DONE]\n\n"}, true},
		{"a stream without [DONE]", "POST", "/v1/chat/completions", resp{status: 200, header: hdr("text/event-stream; charset=utf-8", true),
			body: "data: " + chunk + "\n\n"}, true},
	}
	for _, c := range cases {
		rec := &errorRecorder{TB: t}
		sp.checkResponse(rec, c.method, "http://127.0.0.1"+c.path, c.r)
		if (len(rec.errs) > 0) != c.bad {
			t.Errorf("%s: errors %q, want errors: %v", c.name, rec.errs, c.bad)
		}
	}
	for _, c := range []struct {
		path, body string
		bad        bool
	}{
		{"/admin/v1/tenants", `{"id":"acme","name":"Acme"}`, false},
		{"/admin/v1/tenants", `{"id":"acme","colour":"red"}`, true},
		{"/v1/vector_stores/vs_1/search", `{"query":"x","ranking_options":{"mode":"fuzzy"}}`, true},
	} {
		rec := &errorRecorder{TB: t}
		sp.checkRequest(rec, "POST", "http://127.0.0.1"+c.path, "application/json", []byte(c.body))
		if (len(rec.errs) > 0) != c.bad {
			t.Errorf("request %s %s: errors %q, want errors: %v", c.path, c.body, rec.errs, c.bad)
		}
	}
}

// --- Real responses ------------------------------------------------------------------------------------

// openAPIServer is a server with every part the API has: a real Pebble store, the search service with a
// deterministic embeddings server on 127.0.0.1 as its default embedder, the default LLM service (tenants
// without an LLM configuration use the offline extractive model), and the operator key.
func openAPIServer(t *testing.T) *testServer {
	t.Helper()
	st, svc, _ := searchStack(t)
	ts := startServer(t, Options{Store: st, Search: svc, Retriever: svc, OperatorKeyHash: tenant.HashKey([]byte(operatorKey))})
	if err := ts.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	return ts
}

// TestOpenAPIResponses drives every operation of the document against a running server and validates
// each request it sends and each response it gets (successes and errors) against the document. When all
// its parts ran, every operation must have been validated with a success response.
func TestOpenAPIResponses(t *testing.T) {
	sp := loadOpenAPI(t)
	ts := openAPIServer(t)
	a := ts.url + "/admin/v1"
	v1 := ts.url + "/v1"
	op := operatorKey
	keys := map[string]string{}
	vsURL := "" // the vector store the chat part retrieves from
	parts := 0
	run := func(name string, f func(t *testing.T)) {
		t.Run(name, func(t *testing.T) {
			parts++
			f(t)
		})
	}
	newKey := func(t *testing.T, tenantID, as, body string) string {
		t.Helper()
		r := wantStatus(t, "create key", sp.do(t, "POST", a+"/tenants/"+tenantID+"/keys", as, body), 200, "")
		return jsonField(t, r, "key")
	}

	run("operations", func(t *testing.T) {
		wantStatus(t, "healthz", sp.do(t, "GET", ts.url+"/healthz", "", ""), 200, "")
		wantStatus(t, "readyz", sp.do(t, "GET", ts.url+"/readyz", "", ""), 200, "")
		wantStatus(t, "metrics", sp.do(t, "GET", ts.url+"/metrics", "", ""), 200, "")
		r := wantStatus(t, "openapi.json", sp.do(t, "GET", ts.url+"/openapi.json", "", ""), 200, "")
		if r.body != string(openAPIDocument) || r.header.Get("Content-Type") != "application/json" {
			t.Fatalf("GET /openapi.json: %q, %d bytes", r.header.Get("Content-Type"), len(r.body))
		}
		if r := wantStatus(t, "POST openapi.json", sp.do(t, "POST", ts.url+"/openapi.json", "", "{}"), 405, "method_not_allowed"); r.header.Get("Allow") != "GET, HEAD" {
			t.Fatalf("Allow %q", r.header.Get("Allow"))
		}
		for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
			if r := wantStatus(t, "POST "+path, sp.do(t, "POST", ts.url+path, "", "{}"), 405, "method_not_allowed"); r.header.Get("Allow") != "GET, HEAD" {
				t.Fatalf("POST %s: Allow %q", path, r.header.Get("Allow"))
			}
		}
		wantStatus(t, "unknown path", sp.do(t, "GET", ts.url+"/nothing", "", ""), 404, "not_found")
	})

	run("admin", func(t *testing.T) {
		wantStatus(t, "whoami", sp.do(t, "GET", a+"/whoami", op, ""), 200, "")
		wantStatus(t, "create", sp.do(t, "POST", a+"/tenants", op, `{"id":"acme","name":"Acme","limits":{"plugin_deadline":"2s","storage_bytes":100000000}}`), 200, "")
		wantStatus(t, "create again", sp.do(t, "POST", a+"/tenants", op, `{"id":"acme"}`), 409, "already_exists")
		wantStatus(t, "unknown field", sp.checkedRaw(t, "POST", a+"/tenants", op, `{"id":"x","colour":"red"}`), 400, "invalid_json")
		wantStatus(t, "bad id", sp.checkedRaw(t, "POST", a+"/tenants", op, `{"id":"Not An Id"}`), 400, "invalid_id")
		wantStatus(t, "create beta", sp.do(t, "POST", a+"/tenants", op, `{"id":"beta"}`), 200, "")
		wantStatus(t, "create gamma", sp.do(t, "POST", a+"/tenants", op, `{"id":"gamma","llm":{"default_model":"plinth-extractive-v1"}}`), 200, "")
		wantStatus(t, "list", sp.do(t, "GET", a+"/tenants", op, ""), 200, "")
		wantStatus(t, "get", sp.do(t, "GET", a+"/tenants/acme", op, ""), 200, "")
		wantStatus(t, "get missing", sp.do(t, "GET", a+"/tenants/nobody", op, ""), 404, "not_found")
		wantStatus(t, "patch", sp.do(t, "PATCH", a+"/tenants/gamma", op, `{"name":"Gamma","disabled":true}`), 200, "")
		wantStatus(t, "limits", sp.do(t, "PUT", a+"/tenants/beta/limits", op, `{"request_bytes":200,"plugin_deadline":"5s"}`), 200, "")
		wantStatus(t, "bad limits", sp.do(t, "PUT", a+"/tenants/beta/limits", op, `{"plugin_deadline":"soon"}`), 400, "invalid_limits")

		keys["acmeAdmin"] = newKey(t, "acme", op, `{"id":"admin","admin":true}`)
		keys["acme"] = newKey(t, "acme", keys["acmeAdmin"], `{"id":"app","label":"pro","expires_in":"720h"}`)
		keys["betaAdmin"] = newKey(t, "beta", op, `{"id":"admin","admin":true}`)
		keys["beta"] = newKey(t, "beta", op, `{"id":"app"}`)
		keys["gamma"] = newKey(t, "gamma", op, `{"id":"app","expires_at":4102444800}`)
		keys["gammaAdmin"] = newKey(t, "gamma", op, `{"id":"admin","admin":true}`)
		wantStatus(t, "admin key by a tenant admin", sp.do(t, "POST", a+"/tenants/acme/keys", keys["acmeAdmin"], `{"id":"boss","admin":true}`), 403, "operator_only")
		wantStatus(t, "duplicate key", sp.do(t, "POST", a+"/tenants/acme/keys", keys["acmeAdmin"], `{"id":"app"}`), 409, "already_exists")
		wantStatus(t, "bad expiry", sp.do(t, "POST", a+"/tenants/acme/keys", keys["acmeAdmin"], `{"expires_in":"-1h"}`), 400, "invalid_expiry")
		newKey(t, "acme", keys["acmeAdmin"], `{}`)
		newKey(t, "acme", keys["acmeAdmin"], `{"id":"tmp"}`)
		wantStatus(t, "keys", sp.do(t, "GET", a+"/tenants/acme/keys", keys["acmeAdmin"], ""), 200, "")
		wantStatus(t, "revoke", sp.do(t, "DELETE", a+"/tenants/acme/keys/tmp", keys["acmeAdmin"], ""), 200, "")
		wantStatus(t, "revoke again", sp.do(t, "DELETE", a+"/tenants/acme/keys/tmp", keys["acmeAdmin"], ""), 404, "not_found")
		wantStatus(t, "revoke an admin key", sp.do(t, "DELETE", a+"/tenants/acme/keys/admin", keys["acmeAdmin"], ""), 403, "operator_only")
		wantStatus(t, "whoami", sp.do(t, "GET", a+"/whoami", keys["acmeAdmin"], ""), 200, "")

		// Authentication and authorisation.
		wantStatus(t, "no key", sp.do(t, "GET", a+"/tenants", "", ""), 401, "invalid_api_key")
		wantStatus(t, "bad key", sp.do(t, "GET", a+"/tenants", "pk-wrong", ""), 401, "invalid_api_key")
		wantStatus(t, "not an admin key", sp.do(t, "GET", a+"/tenants/acme", keys["acme"], ""), 403, "not_admin")
		wantStatus(t, "operator only", sp.do(t, "GET", a+"/tenants", keys["acmeAdmin"], ""), 403, "operator_only")
		wantStatus(t, "another tenant", sp.do(t, "GET", a+"/tenants/beta/plugins", keys["acmeAdmin"], ""), 404, "not_found")
		wantStatus(t, "no such endpoint", sp.do(t, "GET", a+"/nothing", op, ""), 404, "not_found")
		if r := wantStatus(t, "wrong method", sp.do(t, "DELETE", a+"/whoami", op, ""), 405, "method_not_allowed"); r.header.Get("Allow") != "GET" {
			t.Fatalf("Allow %q", r.header.Get("Allow"))
		}

		// Plugins, on tenant beta.
		ba := keys["betaAdmin"]
		base := a + "/tenants/beta"
		echo := wasmbuild.ForTest(t, "../../testdata/guests/echo")
		wantStatus(t, "upload", sp.send(t, "PUT", base+"/plugins/echo/versions?activate=true", ba, "application/wasm", echo), 200, "")
		wantStatus(t, "upload v2", sp.send(t, "PUT", base+"/plugins/echo/versions", ba, "application/octet-stream", echo), 200, "")
		wantStatus(t, "upload garbage", sp.send(t, "PUT", base+"/plugins/bad/versions", ba, "application/wasm", []byte("not wasm")), 422, "invalid_plugin")
		wantStatus(t, "bad plugin name", sp.send(t, "PUT", base+"/plugins/BAD/versions", ba, "application/wasm", echo), 400, "invalid_id")
		wantStatus(t, "plugins", sp.do(t, "GET", base+"/plugins", ba, ""), 200, "")
		wantStatus(t, "plugin", sp.do(t, "GET", base+"/plugins/echo", ba, ""), 200, "")
		wantStatus(t, "missing plugin", sp.do(t, "GET", base+"/plugins/nope", ba, ""), 404, "not_found")
		wantStatus(t, "versions", sp.do(t, "GET", base+"/plugins/echo/versions", ba, ""), 200, "")
		wantStatus(t, "config", sp.do(t, "PUT", base+"/plugins/echo/config", ba, `{"v":1}`), 200, "")
		wantStatus(t, "bad config", sp.checkedRaw(t, "PUT", base+"/plugins/echo/config", ba, `{"v":`), 400, "invalid_json")
		wantStatus(t, "activate", sp.do(t, "POST", base+"/plugins/echo/activate", ba, `{"version":2}`), 200, "")
		wantStatus(t, "activate missing", sp.do(t, "POST", base+"/plugins/echo/activate", ba, `{"version":9}`), 404, "not_found")
		wantStatus(t, "rollback", sp.do(t, "POST", base+"/plugins/echo/rollback", ba, ""), 200, "")
		wantStatus(t, "rollback again", sp.do(t, "POST", base+"/plugins/echo/rollback", ba, ""), 409, "no_previous_version")
		wantStatus(t, "hooks", sp.do(t, "GET", base+"/hooks", ba, ""), 200, "")
		wantStatus(t, "bind", sp.do(t, "PUT", base+"/hooks/ratelimit", ba, `{"plugin":"echo"}`), 200, "")
		wantStatus(t, "bind handle", sp.do(t, "PUT", base+"/hooks/handle", ba, `{"plugin":"echo"}`), 400, "invalid_hook")
		wantStatus(t, "bind unexported", sp.do(t, "PUT", base+"/hooks/prompt", ba, `{"plugin":"echo"}`), 422, "hook_not_exported")
		wantStatus(t, "bind missing plugin", sp.do(t, "PUT", base+"/hooks/route", ba, `{"plugin":"nope"}`), 404, "not_found")
		wantStatus(t, "hooks after binding", sp.do(t, "GET", base+"/hooks", ba, ""), 200, "")
		wantStatus(t, "tenant with hooks", sp.do(t, "GET", base, ba, ""), 200, "")

		// The ratelimit plugin (3 requests a minute per key) and the tenant's request limit of 200 bytes.
		wantStatus(t, "over the tenant's request limit", sp.do(t, "POST", v1+"/conversations", keys["beta"], `{"metadata":{"k":"`+strings.Repeat("v", 300)+`"}}`), 413, "request_too_large")
		for i := range 3 {
			r := wantStatus(t, "within the rate limit", sp.do(t, "GET", v1+"/models", keys["beta"], ""), 200, "")
			if r.header.Get("RateLimit") == "" || r.header.Get("RateLimit-Policy") == "" {
				t.Fatalf("request %d: no RateLimit headers: %v", i, r.header)
			}
		}
		if r := wantStatus(t, "over the rate limit", sp.do(t, "GET", v1+"/models", keys["beta"], ""), 429, "rate_limit_exceeded"); r.header.Get("Retry-After") == "" {
			t.Fatalf("429 without Retry-After: %v", r.header)
		}

		wantStatus(t, "delete bound", sp.do(t, "DELETE", base+"/plugins/echo", ba, ""), 409, "plugin_bound")
		wantStatus(t, "unbind", sp.do(t, "DELETE", base+"/hooks/ratelimit", ba, ""), 200, "")
		wantStatus(t, "unbind handle", sp.do(t, "DELETE", base+"/hooks/handle", ba, ""), 400, "invalid_hook")
		wantStatus(t, "delete plugin", sp.do(t, "DELETE", base+"/plugins/echo", ba, ""), 200, "")

		page := wantStatus(t, "tenant audit", sp.do(t, "GET", base+"/audit?limit=5", ba, ""), 200, "")
		if !strings.Contains(page.body, `"has_more":true`) {
			t.Fatalf("the first audit page of a busy tenant: %s", page.body)
		}
		next := wantStatus(t, "audit page 2", sp.do(t, "GET", base+"/audit?limit=5&before="+jsonField(t, page, "last_id"), ba, ""), 200, "")
		if first := jsonField(t, next, "first_id"); first == "" || first >= jsonField(t, page, "last_id") {
			t.Fatalf("page 2 starts at %q, after page 1 ended at %q", first, jsonField(t, page, "last_id"))
		}
		wantStatus(t, "bad audit id", sp.do(t, "GET", base+"/audit?before=aud_zz", ba, ""), 400, "invalid_before")
		wantStatus(t, "bad audit limit", sp.do(t, "GET", base+"/audit?limit=0", ba, ""), 400, "invalid_limit")
		wantStatus(t, "audit", sp.do(t, "GET", a+"/audit", op, ""), 200, "")
		wantStatus(t, "bad audit before", sp.do(t, "GET", a+"/audit?before=yesterday", op, ""), 400, "invalid_before")
		backup := filepath.Join(t.TempDir(), "backup")
		wantStatus(t, "backup", sp.do(t, "POST", a+"/backup", op, `{"path":`+strconv.Quote(backup)+`}`), 200, "")
		wantStatus(t, "backup again", sp.do(t, "POST", a+"/backup", op, `{"path":`+strconv.Quote(backup)+`}`), 409, "already_exists")
		wantStatus(t, "relative backup", sp.do(t, "POST", a+"/backup", op, `{"path":"backup"}`), 400, "invalid_path")
		wantStatus(t, "disabled tenant", sp.do(t, "GET", v1+"/models", keys["gamma"], ""), 403, "tenant_disabled")
		wantStatus(t, "disabled tenant's admin", sp.do(t, "GET", a+"/whoami", keys["gammaAdmin"], ""), 403, "tenant_disabled")
	})
	key := keys["acme"]
	if key == "" {
		key = newKey(t, "acme", op, `{"id":"app2"}`) // the admin part did not run (-run)
	}

	run("models", func(t *testing.T) {
		wantStatus(t, "list", sp.do(t, "GET", v1+"/models", key, ""), 200, "")
		wantStatus(t, "get", sp.do(t, "GET", v1+"/models/plinth-extractive-v1", key, ""), 200, "")
		wantStatus(t, "missing", sp.do(t, "GET", v1+"/models/gpt-9", key, ""), 404, "model_not_found")
		wantStatus(t, "no key", sp.do(t, "GET", v1+"/models", "", ""), 401, "invalid_api_key")
		wantStatus(t, "bad key", sp.do(t, "GET", v1+"/models", "pk-wrong", ""), 401, "invalid_api_key")
		if r := wantStatus(t, "wrong method", sp.do(t, "DELETE", v1+"/models", key, ""), 405, "method_not_allowed"); r.header.Get("Allow") != "GET" {
			t.Fatalf("Allow %q", r.header.Get("Allow"))
		}
		wantStatus(t, "unknown path", sp.do(t, "GET", v1+"/nothing", key, ""), 404, "not_found")
	})

	run("conversations", func(t *testing.T) {
		u := v1 + "/conversations"
		wantStatus(t, "create empty", sp.do(t, "POST", u, key, ""), 200, "")
		r := wantStatus(t, "create", sp.do(t, "POST", u, key, `{"metadata":{"topic":"demo"},"items":[{"type":"message","role":"user","content":"Hello!"},
			{"role":"assistant","content":[{"type":"output_text","text":"Hi"}]}]}`), 200, "")
		cu := u + "/" + jsonField(t, r, "id")
		wantStatus(t, "get", sp.do(t, "GET", cu, key, ""), 200, "")
		wantStatus(t, "update", sp.do(t, "POST", cu, key, `{"metadata":{"topic":"changed"}}`), 200, "")
		r = wantStatus(t, "add items", sp.do(t, "POST", cu+"/items", key, `{"items":[{"role":"developer","content":"Be brief."},
			{"type":"function_call_output","call_id":"call_1","output":"42"}]}`), 200, "")
		var added itemList
		json.Unmarshal([]byte(r.body), &added)
		wantStatus(t, "list", sp.do(t, "GET", cu+"/items", key, ""), 200, "")
		r = wantStatus(t, "page", sp.do(t, "GET", cu+"/items?order=asc&limit=1", key, ""), 200, "")
		var page itemList
		json.Unmarshal([]byte(r.body), &page)
		wantStatus(t, "next page", sp.do(t, "GET", cu+"/items?order=asc&limit=10&after="+*page.LastID, key, ""), 200, "")
		wantStatus(t, "get item", sp.do(t, "GET", cu+"/items/"+*page.FirstID, key, ""), 200, "")
		wantStatus(t, "get other item", sp.do(t, "GET", cu+"/items/"+*added.LastID, key, ""), 200, "")
		wantStatus(t, "delete item", sp.do(t, "DELETE", cu+"/items/"+*page.FirstID, key, ""), 200, "")
		wantStatus(t, "deleted item", sp.do(t, "GET", cu+"/items/"+*page.FirstID, key, ""), 404, "not_found")
		wantStatus(t, "bad limit", sp.do(t, "GET", cu+"/items?limit=1000", key, ""), 400, "invalid_limit")
		wantStatus(t, "bad order", sp.do(t, "GET", cu+"/items?order=up", key, ""), 400, "invalid_order")
		wantStatus(t, "no items", sp.checkedRaw(t, "POST", cu+"/items", key, `{"items":[]}`), 400, "missing_items")
		wantStatus(t, "bad item", sp.checkedRaw(t, "POST", cu+"/items", key, `{"items":[{"role":"robot","content":"x"}]}`), 400, "invalid_item")
		wantStatus(t, "bad JSON", sp.checkedRaw(t, "POST", u, key, `{"metadata":`), 400, "invalid_json")
		wantStatus(t, "delete", sp.do(t, "DELETE", cu, key, ""), 200, "")
		wantStatus(t, "deleted", sp.do(t, "GET", cu, key, ""), 404, "not_found")
		wantStatus(t, "missing", sp.do(t, "GET", u+"/conv_00000000000000000000000000000000/items", key, ""), 404, "not_found")
	})

	run("vector stores and embeddings", func(t *testing.T) {
		u := v1 + "/vector_stores"
		r := wantStatus(t, "create", sp.do(t, "POST", u, key, `{"name":"kb","metadata":{"team":"docs"}}`), 200, "")
		vs := u + "/" + jsonField(t, r, "id")
		r = wantStatus(t, "create lexical", sp.do(t, "POST", u, key, `{"name":"lex","embedder":null,
			"chunking_strategy":{"type":"static","static":{"max_chunk_size_tokens":200,"chunk_overlap_tokens":50}}}`), 200, "")
		lex := u + "/" + jsonField(t, r, "id")
		wantStatus(t, "create auto", sp.do(t, "POST", u, key, `{"chunking_strategy":{"type":"auto"}}`), 200, "")
		wantStatus(t, "file_ids", sp.checkedRaw(t, "POST", u, key, `{"file_ids":["file-1"]}`), 400, "unsupported_parameter")
		wantStatus(t, "list", sp.do(t, "GET", u+"?limit=2&order=asc", key, ""), 200, "")
		wantStatus(t, "bad limit", sp.do(t, "GET", u+"?limit=0", key, ""), 400, "invalid_limit")
		wantStatus(t, "get", sp.do(t, "GET", vs, key, ""), 200, "")
		wantStatus(t, "missing", sp.do(t, "GET", u+"/vs_00000000000000000000000000000000", key, ""), 404, "")
		wantStatus(t, "update", sp.do(t, "POST", vs, key, `{"name":"kb2"}`), 200, "")

		docs := `{"documents":[
			{"id":"cats","text":"Cats sleep up to sixteen hours a day. They hunt at dawn and dusk.","filename":"cats.md","attributes":{"lang":"en","year":2024}},
			{"id":"dogs","text":"Dogs descend from wolves. Adult dogs sleep about twelve hours a day.","attributes":{"lang":"en","year":2021,"pet":true}},
			{"text":"Les chats dorment beaucoup.","attributes":{"lang":"fr"}}]}`
		wantStatus(t, "add", sp.do(t, "POST", vs+"/documents", key, docs), 200, "")
		wantStatus(t, "add lexical", sp.do(t, "POST", lex+"/documents", key, docs), 200, "")
		wantStatus(t, "no text", sp.do(t, "POST", vs+"/documents", key, `{"documents":[{"id":"x","text":" "}]}`), 400, "missing_text")
		wantStatus(t, "list documents", sp.do(t, "GET", vs+"/documents?limit=2", key, ""), 200, "")
		wantStatus(t, "get document", sp.do(t, "GET", vs+"/documents/cats", key, ""), 200, "")
		wantStatus(t, "replace", sp.do(t, "PUT", vs+"/documents/dogs", key, `{"text":"Dogs sleep about twelve hours a day.","filename":"dogs.md","attributes":{"lang":"en"}}`), 200, "")
		wantStatus(t, "replace other id", sp.do(t, "PUT", vs+"/documents/dogs", key, `{"id":"cats","text":"x"}`), 400, "invalid_document_id")
		wantStatus(t, "attributes", sp.do(t, "POST", vs+"/documents/cats", key, `{"attributes":{"lang":"en","year":2025}}`), 200, "")
		wantStatus(t, "content", sp.do(t, "GET", vs+"/documents/cats/content", key, ""), 200, "")
		wantStatus(t, "missing document", sp.do(t, "GET", vs+"/documents/nope", key, ""), 404, "")

		wantStatus(t, "upload markdown", sp.send(t, "POST", vs+"/files?id=guide&filename=guide.md&attributes="+url.QueryEscape(`{"lang":"en"}`), key,
			"text/markdown", []byte("# Guide\n\nRotate keys every ninety days.\n")), 200, "")
		var mp bytes.Buffer
		w := multipart.NewWriter(&mp)
		fw, _ := w.CreateFormFile("file", "notes.txt")
		fw.Write([]byte("Birds sleep standing on one leg."))
		w.WriteField("id", "notes")
		w.WriteField("attributes", `{"lang":"en"}`)
		w.Close()
		wantStatus(t, "upload multipart", sp.send(t, "POST", vs+"/files", key, w.FormDataContentType(), mp.Bytes()), 200, "")
		wantStatus(t, "upload pdf", sp.sendRaw(t, "POST", vs+"/files", key, "application/pdf", []byte("%PDF-1.4")), 415, "unsupported_media_type")

		wantStatus(t, "search", sp.do(t, "POST", vs+"/search", key, `{"query":"how long do cats sleep","max_num_results":2,
			"filters":{"type":"and","filters":[{"type":"eq","key":"lang","value":"en"},{"type":"gte","key":"year","value":2020}]},
			"ranking_options":{"mode":"hybrid","fusion":"convex","alpha":0.6}}`), 200, "")
		r = wantStatus(t, "search page 1", sp.do(t, "POST", vs+"/search", key, `{"query":["sleep","hours"],"max_num_results":1}`), 200, "")
		var sr struct {
			NextPage *string `json:"next_page"`
		}
		json.Unmarshal([]byte(r.body), &sr)
		if sr.NextPage == nil {
			t.Fatalf("no next page: %s", r.body)
		}
		wantStatus(t, "search page 2", sp.do(t, "POST", vs+"/search", key, `{"query":["sleep","hours"],"max_num_results":1,"page":"`+*sr.NextPage+`"}`), 200, "")
		wantStatus(t, "search lexical", sp.do(t, "POST", lex+"/search", key, `{"query":"wolves","ranking_options":{"ranker":"auto"}}`), 200, "")
		wantStatus(t, "vector on a lexical store", sp.do(t, "POST", lex+"/search", key, `{"query":"wolves","ranking_options":{"mode":"vector"}}`), 400, "embedder_required")
		wantStatus(t, "empty query", sp.checkedRaw(t, "POST", vs+"/search", key, `{"query":""}`), 400, "invalid_query")
		wantStatus(t, "search missing store", sp.do(t, "POST", u+"/vs_00000000000000000000000000000000/search", key, `{"query":"x"}`), 404, "vector_store_not_found")

		wantStatus(t, "embed", sp.do(t, "POST", v1+"/embeddings", key, `{"input":"hello world","model":"hash-32"}`), 200, "")
		wantStatus(t, "embed base64", sp.do(t, "POST", v1+"/embeddings", key, `{"input":["a","b"],"encoding_format":"base64"}`), 200, "")
		wantStatus(t, "embed nothing", sp.checkedRaw(t, "POST", v1+"/embeddings", key, `{"input":[]}`), 400, "invalid_input")

		wantStatus(t, "delete document", sp.do(t, "DELETE", vs+"/documents/notes", key, ""), 200, "")
		wantStatus(t, "delete document again", sp.do(t, "DELETE", vs+"/documents/notes", key, ""), 404, "")
		wantStatus(t, "delete lexical", sp.do(t, "DELETE", lex, key, ""), 200, "")
		vsURL = vs
	})

	run("chat", func(t *testing.T) {
		vs := vsURL
		if vs == "" {
			r := wantStatus(t, "create", sp.do(t, "POST", v1+"/vector_stores", key, `{"name":"kb"}`), 200, "")
			vs = v1 + "/vector_stores/" + jsonField(t, r, "id")
			wantStatus(t, "add", sp.do(t, "POST", vs+"/documents", key, `{"documents":[{"id":"cats","text":"Cats sleep up to sixteen hours a day."}]}`), 200, "")
		}
		vsID := vs[strings.LastIndexByte(vs, '/')+1:]
		u := v1 + "/chat/completions"
		rag := `"rag":{"vector_store_ids":["` + vsID + `"],"max_num_results":3,"filters":{"type":"eq","key":"lang","value":"en"}}`
		r := wantStatus(t, "completion", sp.do(t, "POST", u, key, `{"messages":[{"role":"user","content":"How many hours do cats sleep?"}],`+rag+`}`), 200, "")
		if !strings.Contains(r.body, `"citations":[{`) {
			t.Fatalf("no citations: %s", r.body)
		}
		r = wantStatus(t, "stream", sp.do(t, "POST", u, key, `{"stream":true,"stream_options":{"include_usage":true},"model":"plinth-extractive-v1",
			"messages":[{"role":"system","content":"Answer briefly."},{"role":"user","content":[{"type":"text","text":"How many hours do cats sleep?"}]}],`+rag+`}`), 200, "")
		if ev := openAPIEvents(t, r.body); len(ev) < 5 || !strings.Contains(r.body, `"citations":[{`) || !strings.Contains(r.body, `"usage":{`) {
			t.Fatalf("stream: %s", r.body)
		}
		r = wantStatus(t, "conversation", sp.do(t, "POST", v1+"/conversations", key, ""), 200, "")
		conv := jsonField(t, r, "id")
		wantStatus(t, "completion in a conversation", sp.do(t, "POST", u, key, `{"conversation":"`+conv+`","max_tokens":50,"temperature":0.2,"stop":["\n\n"],
			"messages":[{"role":"user","content":"hello"}]}`), 200, "")
		wantStatus(t, "the turn", sp.do(t, "GET", v1+"/conversations/"+conv+"/items", key, ""), 200, "")
		wantStatus(t, "plain stream", sp.do(t, "POST", u, key, `{"stream":true,"messages":[{"role":"user","content":"hello"}]}`), 200, "")

		wantStatus(t, "no messages", sp.checkedRaw(t, "POST", u, key, `{"messages":[]}`), 400, "missing_required_parameter")
		wantStatus(t, "tools", sp.checkedRaw(t, "POST", u, key, `{"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function"}]}`), 400, "unsupported_parameter")
		wantStatus(t, "unknown model", sp.do(t, "POST", u, key, `{"model":"gpt-9","messages":[{"role":"user","content":"x"}]}`), 404, "model_not_found")
		wantStatus(t, "unknown conversation", sp.do(t, "POST", u, key, `{"conversation":{"id":"conv_00000000000000000000000000000000"},"messages":[{"role":"user","content":"x"}]}`), 404, "not_found")
		// An unknown vector store: whatever the server answers must be documented.
		r = sp.do(t, "POST", u, key, `{"messages":[{"role":"user","content":"x"}],"rag":{"vector_store_ids":["vs_00000000000000000000000000000000"]}}`)
		if r.status == 200 {
			t.Fatalf("rag over an unknown vector store: %d %s", r.status, r.body)
		}
		t.Logf("rag over an unknown vector store: %d %s", r.status, r.err.Code)
		wantStatus(t, "delete store", sp.do(t, "DELETE", vs, key, ""), 200, "")
		wantStatus(t, "deleted store", sp.do(t, "DELETE", vs, key, ""), 404, "")
	})

	run("server body limit", func(t *testing.T) {
		small := startServer(t, Options{MaxBodyBytes: 1 << 10})
		r := sp.checkedRaw(t, "POST", small.url+"/v1/conversations", "pk-any", `{"metadata":{"k":"`+strings.Repeat("v", 2<<10)+`"}}`)
		wantStatus(t, "over max_body_bytes", r, 413, "request_too_large")
	})

	if parts < 7 || t.Failed() {
		return // some parts did not run (-run) or failed: coverage would say nothing more
	}
	var missing, seen []string
	for key := range sp.covered {
		seen = append(seen, key)
	}
	sort.Strings(seen)
	for tmpl, v := range sp.doc["paths"].(map[string]any) {
		for _, m := range openAPIMethods {
			if _, ok := v.(map[string]any)[m]; !ok {
				continue
			}
			prefix := strings.ToUpper(m) + " " + tmpl + " 2"
			if !slices.ContainsFunc(seen, func(s string) bool { return strings.HasPrefix(s, prefix) }) {
				missing = append(missing, strings.ToUpper(m)+" "+tmpl)
			}
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("operations never validated with a success response:\n%s", strings.Join(missing, "\n"))
	}
	t.Logf("validated %d (method, path, status) combinations", len(seen))
}

// checkedRaw sends a request whose body the document's request schema rightly refuses (the test of a
// 400), validating only the response.
func (sp *openAPISpec) checkedRaw(t testing.TB, method, url, key, body string) resp {
	t.Helper()
	r := do(t, method, url, key, body)
	sp.checkResponse(t, method, url, r)
	return r
}

// openAPIEvents returns the data of a server-sent events body's events (comments as ":...").
func openAPIEvents(t testing.TB, body string) []string {
	t.Helper()
	var out []string
	for _, ev := range strings.Split(strings.TrimSuffix(body, "\n\n"), "\n\n") {
		switch {
		case strings.HasPrefix(ev, "data: "):
			out = append(out, strings.TrimPrefix(ev, "data: "))
		case strings.HasPrefix(ev, ":"):
			out = append(out, ev)
		default:
			t.Fatalf("not a server-sent event: %q", ev)
		}
	}
	return out
}
