package main

import (
	"strings"
	"testing"

	"github.com/plinth-dev/plinth/host/plugintest"
	"github.com/plinth-dev/plinth/sdk"
	"github.com/plinth-dev/plinth/sdk/sdktest"
)

var table1 = map[string]any{
	"routes": []any{
		map[string]any{"method": "GET", "path": "/v1/hello", "respond": map[string]any{"status": 201, "body": "hi\n",
			"headers": map[string]string{"x-from": "router"}}},
		map[string]any{"method": "POST", "path": "/v1/tools/{tool}/run", "plugin": "tools", "tags": map[string]string{"kind": "tool"}},
		map[string]any{"method": "*", "path": "/v1/m", "builtin": "models.list"},
		map[string]any{"path": "/files/{rest...}", "respond": map[string]any{"json": map[string]any{"ok": true}}},
		map[string]any{"path": "/v1/{rest...}", "default": true},
	},
	"otherwise": "not_found",
}

func testRoutes(t *testing.T, h *sdktest.Host) {
	h.SetConfigJSON(t, table1)
	cases := []struct {
		method, path string
		check        func(t *testing.T, d sdk.Route)
	}{
		{"GET", "/v1/hello", func(t *testing.T, d sdk.Route) {
			if d.Action != sdk.RouteRespond || d.Response.Status != 201 || string(d.Response.Body) != "hi\n" ||
				d.Response.Headers[0] != (sdk.Pair{Key: "x-from", Value: "router"}) {
				t.Fatalf("%+v", d)
			}
		}},
		{"POST", "/v1/tools/search/run", func(t *testing.T, d sdk.Route) {
			if d.Action != sdk.RoutePlugin || d.Target != "tools" || len(d.Params) != 1 ||
				d.Params[0] != (sdk.Pair{Key: "tool", Value: "search"}) || d.Tags[0].Value != "tool" {
				t.Fatalf("%+v", d)
			}
		}},
		{"DELETE", "/v1/m", func(t *testing.T, d sdk.Route) {
			if d.Action != sdk.RouteBuiltin || d.Target != "models.list" {
				t.Fatalf("%+v", d)
			}
		}},
		{"GET", "/files/a/b/c.txt", func(t *testing.T, d sdk.Route) {
			if d.Action != sdk.RouteRespond || string(d.Response.Body) != `{"ok":true}` ||
				d.Params[0] != (sdk.Pair{Key: "rest", Value: "a/b/c.txt"}) {
				t.Fatalf("%+v", d)
			}
		}},
		// Method mismatch on /v1/hello falls through to the default route.
		{"POST", "/v1/hello", func(t *testing.T, d sdk.Route) {
			if d.Action != sdk.RouteDefault {
				t.Fatalf("%+v", d)
			}
		}},
		// A longer path does not match a fixed pattern.
		{"POST", "/v1/tools/search/run/extra", func(t *testing.T, d sdk.Route) {
			if d.Action != sdk.RouteDefault {
				t.Fatalf("%+v", d)
			}
		}},
		{"GET", "/elsewhere", func(t *testing.T, d sdk.Route) {
			if d.Action != sdk.RouteRespond || d.Response.Status != 404 {
				t.Fatalf("%+v", d)
			}
		}},
	}
	for _, c := range cases {
		d, err := h.Route(&sdk.Request{Method: c.method, Path: c.path})
		if err != nil {
			t.Fatalf("%s %s: %v", c.method, c.path, err)
		}
		c.check(t, d)
	}
}

func testBadConfig(t *testing.T, h *sdktest.Host) {
	h.SetConfigJSON(t, map[string]any{"routes": []any{map[string]any{"path": "/x", "plugin": "a", "builtin": "b"}}})
	_, err := h.Route(&sdk.Request{Method: "GET", Path: "/x"})
	if err == nil || !strings.Contains(err.Error(), "exactly one of") || !strings.Contains(err.Error(), "routes[0]") {
		t.Fatalf("err = %v, want a configuration error naming routes[0]", err)
	}
	// A fixed configuration is picked up (a new instance natively and in wasm).
	h.SetConfigJSON(t, map[string]any{"routes": []any{map[string]any{"path": "/x", "builtin": "b"}}})
	if d, err := h.Route(&sdk.Request{Method: "GET", Path: "/x"}); err != nil || d.Target != "b" {
		t.Fatalf("after fixing the config: %+v, %v", d, err)
	}
}

func TestRoutes(t *testing.T)    { testRoutes(t, sdktest.New()) }
func TestBadConfig(t *testing.T) { testBadConfig(t, sdktest.New()) }

func TestRoutesWasm(t *testing.T)    { testRoutes(t, plugintest.New(t, ".")) }
func TestBadConfigWasm(t *testing.T) { testBadConfig(t, plugintest.New(t, ".")) }
