package server

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/host/store"
	"github.com/plinth-dev/plinth/host/tenant"
	"github.com/plinth-dev/plinth/runtime/wasmbuild"
)

const operatorKey = "pk-operator-secret"

// adminServer is a server on a real store with the operator key set and no tenants.
func adminServer(t *testing.T) *testServer {
	t.Helper()
	st, err := store.OpenDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ts := startServer(t, Options{Store: st, OperatorKeyHash: tenant.HashKey([]byte(operatorKey))})
	if err := ts.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	return ts
}

// call sends a request with a raw body and decodes the JSON answer into out (when not nil).
func call(t *testing.T, method, url, key string, body []byte, out any) resp {
	t.Helper()
	r := send(t, method, url, key, "", body)
	if r.status < 400 && out != nil {
		if err := json.Unmarshal([]byte(r.body), out); err != nil {
			t.Fatalf("%s %s: %v: %s", method, url, err, r.body)
		}
	}
	return r
}

func jsonBody(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}

// setupTenant has the operator create tenant id with a tenant-admin key and an API key.
func setupTenant(t *testing.T, ts *testServer, id string) (adminKey, apiKey string) {
	t.Helper()
	a := ts.url + "/admin/v1"
	if r := call(t, "POST", a+"/tenants", operatorKey, jsonBody(map[string]any{"id": id, "name": "Tenant " + id}), nil); r.status != 200 {
		t.Fatalf("create tenant: %d %s", r.status, r.body)
	}
	var k struct{ Key string }
	if r := call(t, "POST", a+"/tenants/"+id+"/keys", operatorKey, jsonBody(map[string]any{"id": "admin", "admin": true}), &k); r.status != 200 {
		t.Fatalf("admin key: %d %s", r.status, r.body)
	}
	adminKey = k.Key
	if r := call(t, "POST", a+"/tenants/"+id+"/keys", adminKey, jsonBody(map[string]any{"id": "app", "label": "pro"}), &k); r.status != 200 {
		t.Fatalf("api key: %d %s", r.status, r.body)
	}
	return adminKey, k.Key
}

func TestAdminPluginLifecycle(t *testing.T) {
	ts := adminServer(t)
	adminKey, apiKey := setupTenant(t, ts, "acme")
	base := ts.url + "/admin/v1/tenants/acme"
	echo := wasmbuild.ForTest(t, "../../testdata/guests/echo")

	var up struct {
		Version struct {
			Version int
			Hooks   []string
		}
	}
	if r := call(t, "PUT", base+"/plugins/echo/versions?activate=true", adminKey, echo, &up); r.status != 200 ||
		up.Version.Version != 1 || !strings.Contains(strings.Join(up.Version.Hooks, ","), "route") {
		t.Fatalf("upload: %d %s", r.status, r.body)
	}
	if r := call(t, "PUT", base+"/plugins/echo/config", adminKey, []byte(`{"v":1}`), nil); r.status != 200 {
		t.Fatalf("config: %d %s", r.status, r.body)
	}
	if r := call(t, "PUT", base+"/hooks/route", adminKey, jsonBody(map[string]string{"plugin": "echo"}), nil); r.status != 200 {
		t.Fatalf("bind: %d %s", r.status, r.body)
	}
	// The tenant's API key now goes through the plugin, with its configuration.
	if r := do(t, "GET", ts.url+"/v1/echo", apiKey, ""); r.status != 200 || r.body != "GET /v1/echo key=app tier=pro" {
		t.Fatalf("request through the uploaded plugin: %d %q", r.status, r.body)
	}
	if r := do(t, "GET", ts.url+"/v1/config", apiKey, ""); r.body != `{"v":1}` {
		t.Fatalf("config through the plugin: %q", r.body)
	}
	// A second version, activated, then rolled back.
	call(t, "PUT", base+"/plugins/echo/versions", adminKey, echo, nil)
	var p struct {
		Active   int `json:"active_version"`
		Rollback *int
	}
	if r := call(t, "POST", base+"/plugins/echo/activate", adminKey, jsonBody(map[string]int{"version": 2}), &p); r.status != 200 || p.Active != 2 {
		t.Fatalf("activate: %d %s", r.status, r.body)
	}
	if r := call(t, "POST", base+"/plugins/echo/rollback", adminKey, nil, &p); r.status != 200 || p.Active != 1 {
		t.Fatalf("rollback: %d %s", r.status, r.body)
	}
	if r := call(t, "POST", base+"/plugins/echo/rollback", adminKey, nil, nil); r.status != 409 {
		t.Fatalf("rollback past the first version: %d", r.status)
	}
	// Deleting a bound plugin is refused; unbind first.
	if r := call(t, "DELETE", base+"/plugins/echo", adminKey, nil, nil); r.status != 409 || r.err.Code != "plugin_bound" {
		t.Fatalf("delete bound: %d %+v", r.status, r.err)
	}
	call(t, "DELETE", base+"/hooks/route", adminKey, nil, nil)
	if r := call(t, "DELETE", base+"/plugins/echo", adminKey, nil, nil); r.status != 200 {
		t.Fatalf("delete: %d %s", r.status, r.body)
	}
	if r := do(t, "GET", ts.url+"/v1/echo", apiKey, ""); r.status != 404 {
		t.Fatalf("after unbinding the route plugin: %d", r.status)
	}
	// The audit log records every action, newest first.
	var audit struct {
		Data []store.AuditRecord
	}
	call(t, "GET", base+"/audit", adminKey, nil, &audit)
	var actions []string
	for _, a := range audit.Data {
		actions = append(actions, a.Action)
	}
	want := "plugin.delete hook.unbind plugin.rollback plugin.activate plugin.upload hook.bind plugin.config plugin.upload key.create key.create tenant.create"
	if strings.Join(actions, " ") != want {
		t.Fatalf("audit:\n got %s\nwant %s", strings.Join(actions, " "), want)
	}
	if audit.Data[0].Actor != "key:admin" {
		t.Fatalf("actor %q", audit.Data[0].Actor)
	}
}

func TestAdminRefusesBadModules(t *testing.T) {
	ts := adminServer(t)
	adminKey, _ := setupTenant(t, ts, "acme")
	url := ts.url + "/admin/v1/tenants/acme/plugins/bad/versions"
	cases := []struct {
		body []byte
		want string
	}{
		{[]byte("not wasm at all"), "not a WebAssembly module"},
		{[]byte("\x00asm\x01\x00\x00\x00\x05\x03"), "invalid plugin module"},
		{wasmbuild.ForTest(t, "../../testdata/guests/forbidden"), "env.open_socket"},
	}
	for _, c := range cases {
		r := call(t, "PUT", url, adminKey, c.body, nil)
		if r.status != 422 || r.err.Code != "invalid_plugin" || !strings.Contains(r.err.Message, c.want) {
			t.Errorf("%.20q: %d %+v, want 422 mentioning %q", c.body, r.status, r.err, c.want)
		}
	}
	// Nothing was stored.
	if r := call(t, "GET", ts.url+"/admin/v1/tenants/acme/plugins/bad", adminKey, nil, nil); r.status != 404 {
		t.Fatalf("a refused module left a plugin behind: %d", r.status)
	}
}

func TestAdminAuthorization(t *testing.T) {
	ts := adminServer(t)
	adminA, apiA := setupTenant(t, ts, "a")
	adminB, _ := setupTenant(t, ts, "b")
	a := ts.url + "/admin/v1"
	cases := []struct {
		method, path, key string
		status            int
	}{
		{"GET", "/tenants", "", 401},
		{"GET", "/tenants", "pk-wrong", 401},
		{"GET", "/tenants", apiA, 403},             // not an admin key
		{"GET", "/tenants", adminA, 403},           // operator only
		{"GET", "/tenants/b/plugins", adminA, 404}, // another tenant is not found
		{"GET", "/tenants/a/plugins", adminB, 404},
		{"PUT", "/tenants/a/limits", adminA, 403},
		{"GET", "/tenants/a/plugins", adminA, 200},
		{"GET", "/tenants/b/plugins", operatorKey, 200},
		{"GET", "/whoami", adminA, 200},
		{"POST", "/tenants/a/keys", adminA, 403}, // tenant admins cannot mint admin keys (body below)
	}
	for _, c := range cases {
		var body []byte
		if c.method == "PUT" {
			body = []byte(`{}`)
		}
		if c.method == "POST" {
			body = jsonBody(map[string]any{"id": "x", "admin": true})
		}
		if r := call(t, c.method, a+c.path, c.key, body, nil); r.status != c.status {
			t.Errorf("%s %s with key %q: %d %s, want %d", c.method, c.path, c.key, r.status, r.body, c.status)
		}
	}
	// Disabling a tenant stops its keys at once.
	if r := call(t, "PATCH", a+"/tenants/a", operatorKey, []byte(`{"disabled":true}`), nil); r.status != 200 {
		t.Fatalf("disable: %d %s", r.status, r.body)
	}
	if r := do(t, "GET", ts.url+"/v1/models", apiA, ""); r.status != 403 || r.err.Code != "tenant_disabled" {
		t.Fatalf("disabled tenant's key: %d %+v", r.status, r.err)
	}
	// An LLM configuration the LLM service would refuse is refused at once.
	if r := call(t, "PATCH", a+"/tenants/a", operatorKey, []byte(`{"llm":{"providers":{"p":{"type":"nope"}}}}`), nil); r.status != 400 ||
		r.err.Code != "invalid_llm_config" {
		t.Fatalf("bad llm config: %d %+v", r.status, r.err)
	}
	// Limits set by the operator apply: a 10-byte request limit.
	call(t, "PATCH", a+"/tenants/a", operatorKey, []byte(`{"disabled":false}`), nil)
	if r := call(t, "PUT", a+"/tenants/a/limits", operatorKey, []byte(`{"request_bytes":10,"plugin_deadline":"nope"}`), nil); r.status != 400 {
		t.Fatalf("bad limits accepted: %d", r.status)
	}
	call(t, "PUT", a+"/tenants/a/limits", operatorKey, []byte(`{"request_bytes":10}`), nil)
	if r := do(t, "POST", ts.url+"/v1/conversations", apiA, `{"metadata":{"k":"long enough"}}`); r.status != 413 {
		t.Fatalf("request over the tenant's limit: %d %s", r.status, r.body)
	}
	// Expired keys stop working.
	var k struct{ Key string }
	call(t, "POST", a+"/tenants/a/keys", operatorKey, jsonBody(map[string]any{"id": "short", "expires_at": time.Now().Add(-time.Second).Unix()}), &k)
	if r := do(t, "GET", ts.url+"/v1/models", k.Key, ""); r.status != 401 || !strings.Contains(r.err.Message, "expired") {
		t.Fatalf("expired key: %d %+v", r.status, r.err)
	}
}

// TestHotSwapUnderLoad swaps a tenant's route plugin between two versions (and changes its
// configuration) many times while clients keep sending requests: no request may fail, and every
// answer comes from one consistent state.
func TestHotSwapUnderLoad(t *testing.T) {
	ts := adminServer(t)
	adminKey, apiKey := setupTenant(t, ts, "acme")
	base := ts.url + "/admin/v1/tenants/acme"
	echo := wasmbuild.ForTest(t, "../../testdata/guests/echo")
	call(t, "PUT", base+"/plugins/echo/versions?activate=true", adminKey, echo, nil)
	call(t, "PUT", base+"/plugins/echo/versions", adminKey, echo, nil)
	call(t, "PUT", base+"/hooks/route", adminKey, jsonBody(map[string]string{"plugin": "echo"}), nil)

	stop := make(chan struct{})
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				req, _ := http.NewRequest("GET", ts.url+"/v1/config", nil)
				req.Header.Set("Authorization", "Bearer "+apiKey)
				res, err := http.DefaultClient.Do(req)
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				b, _ := io.ReadAll(res.Body)
				res.Body.Close()
				if res.StatusCode != 200 || !strings.HasPrefix(string(b), `{"swap":`) && string(b) != "" {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("%d %s", res.StatusCode, b))
					continue
				}
				ok.Add(1)
			}
		}()
	}
	for i := 0; i < 20; i++ {
		v := 1 + i%2
		if r := call(t, "POST", base+"/plugins/echo/activate", adminKey, jsonBody(map[string]int{"version": v}), nil); r.status != 200 {
			t.Fatalf("activate %d: %d %s", v, r.status, r.body)
		}
		call(t, "PUT", base+"/plugins/echo/config", adminKey, []byte(fmt.Sprintf(`{"swap":%d}`, i)), nil)
		time.Sleep(20 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	if failed.Load() != 0 || ok.Load() < 100 {
		t.Fatalf("%d requests failed during 40 swaps (%d succeeded); first: %v", failed.Load(), ok.Load(), firstErr.Load())
	}
	t.Logf("%d requests, none failed, across 40 swaps", ok.Load())
}
