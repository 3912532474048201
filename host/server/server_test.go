package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/abi"
	"github.com/plinth-dev/plinth/host/tenant"
	"github.com/plinth-dev/plinth/runtime"
	"github.com/plinth-dev/plinth/runtime/wasmbuild"
)

// modules is a ModuleSource for tests.
type modules map[string][]byte

func (m modules) Module(_ context.Context, _, hash string) ([]byte, error) {
	b, ok := m[hash]
	if !ok {
		return nil, errors.New("no such module")
	}
	return b, nil
}

type chainModules []ModuleSource

func (c chainModules) Module(ctx context.Context, tenant, hash string) ([]byte, error) {
	var err error
	for _, m := range c {
		var b []byte
		if b, err = m.Module(ctx, tenant, hash); err == nil {
			return b, nil
		}
	}
	return nil, err
}

func (m modules) add(b []byte) string {
	h := runtime.ModuleHash(b)
	m[h] = b
	return h
}

// testServer is a real server on 127.0.0.1 with real plugins.
type testServer struct {
	*Server
	url     string
	modules modules
	engine  *runtime.Engine
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func startServer(t testing.TB, opts Options) *testServer {
	t.Helper()
	engine, err := runtime.New(runtime.Config{Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	mods := modules{}
	opts.Engine, opts.Logger, opts.Modules = engine, quiet(), mods
	if opts.Store != nil {
		// Modules registered by the test first, then the store's registry (admin uploads).
		opts.Modules = chainModules{mods, storeModules{opts.Store}}
	}
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
		engine.Close(ctx)
	})
	return &testServer{Server: s, url: "http://" + ln.Addr().String(), modules: mods, engine: engine}
}

func plugin(t testing.TB, ts *testServer, name, dir string, config string) *tenant.Plugin {
	return &tenant.Plugin{Name: name, Version: 1, Hash: ts.modules.add(wasmbuild.ForTest(t, dir)), Config: []byte(config)}
}

type resp struct {
	status int
	header http.Header
	body   string
	err    struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Code    string  `json:"code"`
		Param   *string `json:"param"`
	}
}

func do(t testing.TB, method, url, key, body string) resp {
	t.Helper()
	return send(t, method, url, key, "", []byte(body))
}

// send sends a request (with the key as a bearer token and a Content-Type when not empty) and reads
// the answer; an error status must come with an OpenAI-style JSON error, decoded into resp.err.
func send(t testing.TB, method, url, key, contentType string, body []byte) resp {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	r := resp{status: res.StatusCode, header: res.Header, body: string(b)}
	if res.StatusCode >= 400 {
		var e struct {
			Error json.RawMessage `json:"error"`
		}
		if err := json.Unmarshal(b, &e); err != nil || json.Unmarshal(e.Error, &r.err) != nil {
			t.Fatalf("%s %s: status %d with a body that is not an OpenAI-style JSON error: %q", method, url, res.StatusCode, b)
		}
	}
	return r
}

const (
	keyA = "pk-tenant-a-secret"
	keyB = "pk-tenant-b-secret"
)

// twoTenants sets up tenant a with the echo fixture bound to route and ratelimit, and tenant b with the
// hostile fixture bound to route.
func twoTenants(t testing.TB, ts *testServer) {
	t.Helper()
	a := &tenant.Tenant{ID: "a", Plugins: map[string]*tenant.Plugin{
		"echo": plugin(t, ts, "echo", "../../testdata/guests/echo", `{"hello":"a"}`),
	}, Bindings: map[abi.Hook]string{abi.HookRoute: "echo", abi.HookRateLimit: "echo"}}
	b := &tenant.Tenant{ID: "b", Plugins: map[string]*tenant.Plugin{
		"hostile": plugin(t, ts, "hostile", "../../testdata/guests/hostile", ""),
	}, Bindings: map[abi.Hook]string{abi.HookRoute: "hostile"},
		// Long enough for the Go runtime to run out of memory (GC near GOMEMLIMIT, stack doubling).
		Limits: tenant.Limits{PluginDeadline: 3 * time.Second}}
	snap, err := tenant.NewSnapshot([]*tenant.Tenant{a, b}, []*tenant.Key{
		{ID: "ka", Tenant: "a", Label: "pro", Hash: tenant.HashKey([]byte(keyA))},
		{ID: "kb", Tenant: "b", Hash: tenant.HashKey([]byte(keyB))},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := ts.Apply(context.Background(), snap); err != nil {
		t.Fatal(err)
	}
}

func TestAuthentication(t *testing.T) {
	ts := startServer(t, Options{})
	twoTenants(t, ts)
	for _, c := range []struct{ key, code string }{{"", "invalid_api_key"}, {"pk-wrong", "invalid_api_key"}} {
		r := do(t, "GET", ts.url+"/v1/models", c.key, "")
		if r.status != 401 || r.err.Code != c.code || r.err.Type != typeAuthentication {
			t.Fatalf("key %q: %d %+v", c.key, r.status, r.err)
		}
	}
	// Other accepted headers carry the key too; a malformed Authorization does not fall back to them.
	req, _ := http.NewRequest("GET", ts.url+"/v1/echo", nil)
	req.Header.Set("X-Api-Key", keyA)
	res, err := http.DefaultClient.Do(req)
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("x-api-key: %v %v", err, res.StatusCode)
	}
	res.Body.Close()
	if r := do(t, "GET", ts.url+"/v1/echo", keyA, ""); r.status != 200 {
		t.Fatalf("good key: %d %s", r.status, r.body)
	}
}

func TestPipeline(t *testing.T) {
	ts := startServer(t, Options{})
	twoTenants(t, ts)

	// Direct response from the route hook, with the key's id and label passed to the plugin.
	r := do(t, "GET", ts.url+"/echo", keyA, "")
	if r.status != 404 { // outside /v1 nothing is routed to tenants
		t.Fatalf("non-API path: %d", r.status)
	}
	r = do(t, "POST", ts.url+"/v1/echo", keyA, "")
	if r.status != 200 || r.body != "POST /v1/echo key=ka tier=pro" || r.header.Get("Content-Type") != "text/plain" {
		t.Fatalf("direct response: %d %q %v", r.status, r.body, r.header)
	}
	// The route hook falls back to default routing: a built-in endpoint, a 404 and a 405, all JSON.
	r = do(t, "GET", ts.url+"/v1/models", keyA, "")
	if r.status != 200 || !strings.Contains(r.body, `"object":"list"`) {
		t.Fatalf("models: %d %s", r.status, r.body)
	}
	if r = do(t, "GET", ts.url+"/v1/nothing", keyA, ""); r.status != 404 || r.err.Type != typeNotFound {
		t.Fatalf("unknown path: %d %+v", r.status, r.err)
	}
	if r = do(t, "DELETE", ts.url+"/v1/models", keyA, ""); r.status != 405 || r.header.Get("Allow") != "GET" {
		t.Fatalf("wrong method: %d %v", r.status, r.header)
	}
	// The ratelimit hook allows 3 per minute per key and has counted 2 requests so far (routing failures
	// end before the ratelimit hook): the third passes, the fourth is refused with 429, Retry-After and the
	// IETF headers.
	if r = do(t, "GET", ts.url+"/v1/models", keyA, ""); r.status != 200 || r.header.Get("RateLimit") != `"key";r=0;t=60` {
		t.Fatalf("last allowed request: %d %v", r.status, r.header)
	}
	r = do(t, "GET", ts.url+"/v1/models", keyA, "")
	if r.status != 429 || r.err.Type != typeRateLimit || r.err.Code != "rate_limit_exceeded" ||
		!strings.Contains(r.err.Message, "slow down") {
		t.Fatalf("over limit: %d %+v", r.status, r.err)
	}
	if ra := r.header.Get("Retry-After"); ra != "20" {
		t.Fatalf("Retry-After %q, want 20", ra)
	}
	if p := r.header.Get("RateLimit-Policy"); p != `"key";q=3;w=60` {
		t.Fatalf("RateLimit-Policy %q", p)
	}
	if l := r.header.Get("RateLimit"); !strings.HasPrefix(l, `"key";r=0;t=`) {
		t.Fatalf("RateLimit %q", l)
	}
}

func TestHandleHookAndKeyIsolationOfRateLimits(t *testing.T) {
	ts := startServer(t, Options{})
	a := &tenant.Tenant{ID: "a", Plugins: map[string]*tenant.Plugin{
		"echo": plugin(t, ts, "echo", "../../testdata/guests/echo", ""),
	}, Bindings: map[abi.Hook]string{abi.HookRoute: "echo"}}
	snap, _ := tenant.NewSnapshot([]*tenant.Tenant{a}, []*tenant.Key{{ID: "ka", Tenant: "a", Hash: tenant.HashKey([]byte(keyA))}})
	ts.Apply(context.Background(), snap)
	// /v1/handled routes to the echo plugin's handle hook, which echoes the body. Its kv_incr needs the
	// store; without one the handler reports the host call's status as its error.
	r := do(t, "POST", ts.url+"/v1/handled", keyA, "ping")
	if r.status != 500 || r.err.Code != "plugin_handler_error" || !strings.Contains(r.err.Message, "a/echo@1") {
		t.Fatalf("handle without a store: %d %+v", r.status, r.err)
	}
}

// TestHostileTenantDoesNotDisturbOthers runs each attack of tenant b while tenant a sends requests
// concurrently: every attack gets a 5xx JSON error naming the plugin, b's next request is served
// normally, and none of a's requests fails.
func TestHostileTenantDoesNotDisturbOthers(t *testing.T) {
	ts := startServer(t, Options{})
	twoTenants(t, ts)
	// Tenant a's ratelimit allows 3 per minute: use a tenant without one for the background traffic.
	c := &tenant.Tenant{ID: "c", Plugins: map[string]*tenant.Plugin{
		"echo": plugin(t, ts, "echo", "../../testdata/guests/echo", ""),
	}, Bindings: map[abi.Hook]string{abi.HookRoute: "echo"}}
	st := ts.cur.Load().snap
	keys := append(st.Keys(), &tenant.Key{ID: "kc", Tenant: "c", Hash: tenant.HashKey([]byte("pk-c"))})
	snap, err := tenant.NewSnapshot(append(st.Tenants(), c), keys)
	if err != nil {
		t.Fatal(err)
	}
	ts.Apply(context.Background(), snap)

	stop := make(chan struct{})
	var good, bad atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				req, _ := http.NewRequest("GET", ts.url+"/v1/echo", nil)
				req.Header.Set("Authorization", "Bearer pk-c")
				res, err := http.DefaultClient.Do(req)
				if err != nil || res.StatusCode != 200 {
					bad.Add(1)
				} else {
					good.Add(1)
				}
				if res != nil {
					io.Copy(io.Discard, res.Body)
					res.Body.Close()
				}
			}
		}()
	}
	attacks := map[string]struct {
		status int
		code   string
	}{
		"/v1/loop":    {504, "plugin_timeout"},
		"/v1/bomb":    {500, "plugin_trap"},
		"/v1/recurse": {500, "plugin_trap"},
		"/v1/crash":   {500, "plugin_trap"},
		"/v1/panic":   {500, "plugin_handler_error"},
	}
	for path, want := range attacks {
		r := do(t, "GET", ts.url+path, keyB, "")
		if r.status != want.status || r.err.Code != want.code || !strings.Contains(r.err.Message, "b/hostile@1") {
			t.Errorf("%s: %d %+v, want %d %s naming b/hostile@1", path, r.status, r.err, want.status, want.code)
		}
		if r := do(t, "GET", ts.url+"/v1/models", keyB, ""); r.status != 200 {
			t.Errorf("request after %s: %d %s", path, r.status, r.body)
		}
	}
	close(stop)
	wg.Wait()
	if bad.Load() != 0 || good.Load() == 0 {
		t.Fatalf("tenant c during the attacks: %d good, %d failed", good.Load(), bad.Load())
	}
}

func TestBodyLimitsAndMalformedRequests(t *testing.T) {
	ts := startServer(t, Options{MaxBodyBytes: 1 << 10})
	twoTenants(t, ts)
	r := do(t, "POST", ts.url+"/v1/echo", keyA, strings.Repeat("x", 2<<10))
	if r.status != 413 || r.err.Code != "request_too_large" || !strings.Contains(r.err.Message, "limit of 1024 bytes") {
		t.Fatalf("huge body: %d %+v", r.status, r.err)
	}
	// The limit is applied from the headers: a body announced too large is refused before it is sent.
	announce, err := net.Dial("tcp", strings.TrimPrefix(ts.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer announce.Close()
	fmt.Fprintf(announce, "POST /v1/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n", keyA, 50<<20)
	announce.SetReadDeadline(time.Now().Add(10 * time.Second))
	head, _ := io.ReadAll(io.LimitReader(announce, 512))
	if !strings.Contains(string(head), " 413 ") {
		t.Fatalf("a 50 MiB body announced to a 1 KiB endpoint: %q", head)
	}
	// Plugin uploads have their own, larger limit.
	if r := do(t, "PUT", ts.url+"/admin/v1/tenants/a/plugins/big/versions", "", strings.Repeat("x", 2<<10)); r.status == 413 {
		t.Fatalf("a 2 KiB plugin upload was held to the API body limit: %s", r.body)
	}
	conn, err := net.Dial("tcp", strings.TrimPrefix(ts.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GARBAGE\r\n\r\n")
	b, _ := io.ReadAll(io.LimitReader(conn, 4096))
	if !strings.Contains(string(b), " 400 ") || !strings.Contains(string(b), `"type":"invalid_request_error"`) {
		t.Fatalf("malformed request line: %q", b)
	}
}

func TestHealthReadyMetrics(t *testing.T) {
	ts := startServer(t, Options{})
	twoTenants(t, ts)
	do(t, "POST", ts.url+"/v1/echo", keyA, "")
	if r := do(t, "GET", ts.url+"/healthz", "", ""); r.status != 200 {
		t.Fatalf("healthz %d", r.status)
	}
	if r := do(t, "GET", ts.url+"/readyz", "", ""); r.status != 200 {
		t.Fatalf("readyz %d", r.status)
	}
	r := do(t, "GET", ts.url+"/metrics", "", "")
	for _, want := range []string{
		`plinth_http_requests_total{tenant="a",code="2xx"} 1`,
		`plinth_plugin_calls_total{tenant="a",plugin="echo"} 2`,
		`plinth_plugin_call_duration_seconds_count{tenant="a",plugin="echo"} 2`,
		`plinth_plugin_instances{tenant="a",plugin="echo"}`,
	} {
		if !strings.Contains(r.body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

func TestShutdownDrainsInFlight(t *testing.T) {
	ts := startServer(t, Options{})
	a := &tenant.Tenant{ID: "a", Plugins: map[string]*tenant.Plugin{
		"hostile": plugin(t, ts, "hostile", "../../testdata/guests/hostile", ""),
	}, Bindings: map[abi.Hook]string{abi.HookRoute: "hostile"}, Limits: tenant.Limits{PluginDeadline: 300 * time.Millisecond}}
	snap, _ := tenant.NewSnapshot([]*tenant.Tenant{a}, []*tenant.Key{{ID: "ka", Tenant: "a", Hash: tenant.HashKey([]byte(keyA))}})
	ts.Apply(context.Background(), snap)
	do(t, "GET", ts.url+"/v1/models", keyA, "") // warm
	done := make(chan resp, 1)
	go func() { done <- do(t, "GET", ts.url+"/v1/loop", keyA, "") }() // in flight for 300ms
	time.Sleep(50 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := ts.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.status != 504 {
		t.Fatalf("in-flight request during shutdown: %d %s", r.status, r.body)
	}
}

func TestMatch(t *testing.T) {
	s := &Server{byName: map[string]*endpoint{}}
	s.route("GET", "/v1/things/{id}", "things.get", nil)
	s.route("DELETE", "/v1/things/{id}", "things.delete", nil)
	s.route("GET", "/v1/things", "things.list", nil)
	cases := []struct {
		method, path, name, id string
		allowed                int
	}{
		{"GET", "/v1/things/42", "things.get", "42", 0},
		{"GET", "/v1/things/42/", "things.get", "42", 0},
		{"DELETE", "/v1/things/x", "things.delete", "x", 0},
		{"PUT", "/v1/things/x", "", "", 2},
		{"GET", "/v1/things", "things.list", "", 0},
		{"GET", "/v1/things/42/more", "", "", 0},
		{"GET", "/v1//42", "", "", 0},
	}
	for _, c := range cases {
		ep, params, allowed := s.match([]byte(c.method), []byte(c.path))
		name := ""
		if ep != nil {
			name = ep.name
		}
		id, _ := abi.Lookup(params, "id")
		if name != c.name || id != c.id || len(allowed) != c.allowed {
			t.Errorf("%s %s: %q id=%q allowed=%v", c.method, c.path, name, id, allowed)
		}
	}
}
