package app

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/plinth-dev/plinth/host/config"
	"github.com/plinth-dev/plinth/host/tenant"
	"github.com/plinth-dev/plinth/runtime/wasmbuild"
)

// run starts an App on cfg and returns its base URL and a stop function.
func run(t *testing.T, cfg config.Config) (string, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	a, err := New(ctx, cfg, io.Discard)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	addr, err := a.Listen()
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Serve(ctx) }()
	return "http://" + addr.String(), func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
}

func get(t *testing.T, url, key string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Authorization", "Bearer "+key)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

func testConfig(t *testing.T, dataDir string, tenants string) config.Config {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "plinth.json")
	if err := os.WriteFile(path, []byte(tenants), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := config.Defaults()
	if err := cfg.ReadFile(path); err != nil {
		t.Fatal(err)
	}
	cfg.Addr, cfg.DataDir, cfg.LogLevel = "127.0.0.1:0", dataDir, "error"
	return cfg
}

// TestRestartRestoresTenantsFromTheStore seeds a data directory from a config file, then restarts with a
// config that names other tenants: the store, not the file, decides.
func TestRestartRestoresTenantsFromTheStore(t *testing.T) {
	wasm := filepath.Join(t.TempDir(), "echo.wasm")
	if err := os.WriteFile(wasm, wasmbuild.ForTest(t, "../../testdata/guests/echo"), 0o644); err != nil {
		t.Fatal(err)
	}
	h := tenant.HashKey([]byte("pk-acme"))
	seedCfg, _ := json.Marshal(map[string]any{"tenants": []any{map[string]any{
		"id": "acme", "keys": []any{map[string]any{"id": "k1", "sha256": hex.EncodeToString(h[:]), "label": "gold"}},
		"plugins": []any{map[string]any{"name": "echo", "wasm": wasm, "hooks": []string{"route"}, "config": map[string]int{"n": 1}}},
	}}})
	data := t.TempDir()
	url, stop := run(t, testConfig(t, data, string(seedCfg)))
	if code, body := get(t, url+"/v1/echo", "pk-acme"); code != 200 || body != "GET /v1/echo key=k1 tier=gold" {
		t.Fatalf("first start: %d %q", code, body)
	}
	stop()

	// The module file is gone and the config file lists another tenant: acme is restored from the store.
	os.Remove(wasm)
	url, stop = run(t, testConfig(t, data, `{"tenants":[{"id":"other"}]}`))
	defer stop()
	if code, body := get(t, url+"/v1/config", "pk-acme"); code != 200 || body != `{"n":1}` {
		t.Fatalf("after restart: %d %q", code, body)
	}
	if code, _ := get(t, url+"/v1/models", "pk-other"); code != 401 {
		t.Fatalf("a tenant from the second config file exists: %d", code)
	}
}

func TestDemoKeyFromEnvironment(t *testing.T) {
	cfg := testConfig(t, t.TempDir(), `{"tenants":[{"id":"demo","demo":true}]}`)
	cfg.DemoKey = "pk-demo-fixed"
	url, stop := run(t, cfg)
	defer stop()
	if code, body := get(t, url+"/v1/models", "pk-demo-fixed"); code != 200 || !strings.Contains(body, `"object":"list"`) {
		t.Fatalf("demo key: %d %s", code, body)
	}
}
