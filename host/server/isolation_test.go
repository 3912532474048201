package server

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"

	"github.com/plinth-dev/plinth/abi"
	"github.com/plinth-dev/plinth/host/store"
	"github.com/plinth-dev/plinth/host/tenant"
)

// kvServer runs tenants a and b, each with its own instance of the kv fixture plugin, on a real store.
func kvServer(t *testing.T) (*testServer, *store.Store) {
	t.Helper()
	st, err := store.OpenDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ts := startServer(t, Options{Store: st})
	mk := func(id string) *tenant.Tenant {
		return &tenant.Tenant{ID: id, Plugins: map[string]*tenant.Plugin{
			"kv": plugin(t, ts, "kv", "../../testdata/guests/kv", ""),
		}, Bindings: map[abi.Hook]string{abi.HookRoute: "kv"}}
	}
	snap, err := tenant.NewSnapshot([]*tenant.Tenant{mk("a"), mk("b"), mk("ab")}, []*tenant.Key{
		{ID: "ka", Tenant: "a", Hash: tenant.HashKey([]byte(keyA))},
		{ID: "kb", Tenant: "b", Hash: tenant.HashKey([]byte(keyB))},
		{ID: "kab", Tenant: "ab", Hash: tenant.HashKey([]byte("pk-ab"))},
	})
	if err != nil {
		t.Fatal(err)
	}
	ts.Apply(context.Background(), snap)
	return ts, st
}

func kv(t *testing.T, ts *testServer, key string, cmd map[string]any) map[string]any {
	t.Helper()
	b, _ := json.Marshal(cmd)
	r := do(t, "POST", ts.url+"/v1/kv", key, string(b))
	var out map[string]any
	if err := json.Unmarshal([]byte(r.body), &out); err != nil && r.status != 500 {
		t.Fatalf("kv %v: %d %s", cmd, r.status, r.body)
	}
	return out
}

func hx(b []byte) string { return hex.EncodeToString(b) }

// TestPluginKVIsolation has tenant a's plugin read, scan, overwrite, increment and CAS with crafted keys
// that try to reach tenant b's (and tenant ab's) data: separators, encoded key heads, prefix tricks,
// long, empty and invalid-UTF-8 keys. Nothing of b or ab is ever visible or changed.
func TestPluginKVIsolation(t *testing.T) {
	ts, st := kvServer(t)
	secret := []byte("secret")
	if r := kv(t, ts, keyB, map[string]any{"op": "put", "key": hx(secret), "value": hx([]byte("b-data"))}); r["ok"] != true {
		t.Fatalf("b's put: %v", r)
	}
	kv(t, ts, "pk-ab", map[string]any{"op": "put", "key": hx(secret), "value": hx([]byte("ab-data"))})

	fullB := store.TenantKey("b", 'k', []byte{2}, []byte("kv"), secret)
	crafted := [][]byte{
		secret,
		append([]byte{0}, secret...),
		fullB,
		fullB[1:],
		[]byte("\x01b\x02kvsecret"),
		[]byte("../b/secret"),
		{0xff, 0xfe, 0xfd},
		bytes.Repeat([]byte{0xff}, 1024),
		bytes.Repeat([]byte{0}, 1024),
		[]byte("b\x00kv\x00secret"),
	}
	for _, k := range crafted {
		if r := kv(t, ts, keyA, map[string]any{"op": "get", "key": hx(k)}); r["value"] == hx([]byte("b-data")) {
			t.Fatalf("a read b's value through %q", k)
		}
		kv(t, ts, keyA, map[string]any{"op": "put", "key": hx(k), "value": hx([]byte("a-data"))})
		old := hx([]byte("b-data"))
		nw := hx([]byte("pwned"))
		kv(t, ts, keyA, map[string]any{"op": "cas", "key": hx(k), "old": &old, "new": &nw})
		kv(t, ts, keyA, map[string]any{"op": "incr", "key": hx(k), "delta": 1})
		kv(t, ts, keyA, map[string]any{"op": "delete", "key": hx(k)})
	}
	// Over-long and empty keys are refused with an error, not truncated into someone's range.
	if r := kv(t, ts, keyA, map[string]any{"op": "put", "key": hx(bytes.Repeat([]byte("k"), 1025)), "value": "00"}); r["ok"] == true {
		t.Fatal("1025-byte key accepted")
	}
	if r := kv(t, ts, keyA, map[string]any{"op": "put", "key": "", "value": "00"}); r["ok"] == true {
		t.Fatal("empty key accepted")
	}
	// Scans of a, with every prefix trick, see only a's keys.
	for _, prefix := range [][]byte{nil, {0}, {0xff}, []byte("s"), fullB[:3]} {
		r := kv(t, ts, keyA, map[string]any{"op": "scan", "prefix": hx(prefix), "limit": 1000})
		b, _ := json.Marshal(r["entries"])
		if strings.Contains(string(b), hx([]byte("b-data"))) || strings.Contains(string(b), hx([]byte("ab-data"))) {
			t.Fatalf("a's scan with prefix %q saw another tenant: %s", prefix, b)
		}
	}
	for tenantID, want := range map[string]string{"b": "b-data", "ab": "ab-data"} {
		v, err := st.KVGet(tenantID, "kv", secret)
		if err != nil || string(v) != want {
			t.Fatalf("tenant %s's value is %q (%v), want %q", tenantID, v, err, want)
		}
		if _, keys, _ := st.Usage(tenantID); keys != 1 {
			t.Fatalf("tenant %s has %d records, want 1", tenantID, keys)
		}
	}
}

func TestPluginKVSemantics(t *testing.T) {
	ts, _ := kvServer(t)
	for i := int64(1); i <= 3; i++ {
		if r := kv(t, ts, keyA, map[string]any{"op": "incr", "key": hx([]byte("n")), "delta": 1}); r["n"] != float64(i) {
			t.Fatalf("incr %d: %v", i, r)
		}
	}
	if r := kv(t, ts, keyA, map[string]any{"op": "get", "key": hx([]byte("n"))}); r["value"] != hx([]byte("3")) {
		t.Fatalf("counter text: %v", r)
	}
	// Create-if-absent CAS succeeds once.
	nw := hx([]byte("owner-1"))
	if r := kv(t, ts, keyA, map[string]any{"op": "cas", "key": hx([]byte("lock")), "old": nil, "new": &nw}); r["swapped"] != true {
		t.Fatalf("first cas: %v", r)
	}
	nw2 := hx([]byte("owner-2"))
	if r := kv(t, ts, keyA, map[string]any{"op": "cas", "key": hx([]byte("lock")), "old": nil, "new": &nw2}); r["swapped"] == true {
		t.Fatalf("second create-if-absent cas swapped: %v", r)
	}
	if r := kv(t, ts, keyA, map[string]any{"op": "get", "key": hx([]byte("missing"))}); r["error"] != "not found" {
		t.Fatalf("missing key: %v", r)
	}
}
