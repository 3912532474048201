package server

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/plinth-dev/plinth/host/store"
	"github.com/plinth-dev/plinth/host/tenant"
)

// storeServer is a server with a real Pebble store and tenants a and b (no plugins).
func storeServer(t *testing.T) *testServer {
	t.Helper()
	st, err := store.OpenDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ts := startServer(t, Options{Store: st})
	snap, err := tenant.NewSnapshot([]*tenant.Tenant{{ID: "a"}, {ID: "b", Limits: tenant.Limits{StorageKeys: 5}}},
		[]*tenant.Key{{ID: "ka", Tenant: "a", Hash: tenant.HashKey([]byte(keyA))}, {ID: "kb", Tenant: "b", Hash: tenant.HashKey([]byte(keyB))}})
	if err != nil {
		t.Fatal(err)
	}
	ts.Apply(context.Background(), snap)
	return ts
}

func TestConversationsAPI(t *testing.T) {
	ts := storeServer(t)
	u := ts.url + "/v1/conversations"
	r := do(t, "POST", u, keyA, `{"metadata":{"topic":"demo"},"items":[{"type":"message","role":"user","content":"Hello!"}]}`)
	var conv conversationJSON
	if r.status != 200 || json.Unmarshal([]byte(r.body), &conv) != nil || conv.Object != "conversation" || conv.Metadata["topic"] != "demo" {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	cu := u + "/" + conv.ID
	r = do(t, "POST", cu+"/items", keyA, `{"items":[{"type":"message","role":"assistant","content":[{"type":"output_text","text":"Hi"}]},
		{"role":"user","content":"How are you?"}]}`)
	if r.status != 200 || !strings.Contains(r.body, `"has_more":false`) {
		t.Fatalf("add items: %d %s", r.status, r.body)
	}
	r = do(t, "GET", cu+"/items?order=asc&limit=2", keyA, "")
	var page itemList
	if err := json.Unmarshal([]byte(r.body), &page); err != nil || len(page.Data) != 2 || !page.HasMore {
		t.Fatalf("page 1: %d %s", r.status, r.body)
	}
	var first struct {
		ID      string `json:"id"`
		Role    string `json:"role"`
		Content []struct{ Type, Text string }
	}
	json.Unmarshal(page.Data[0], &first)
	if first.Role != "user" || first.Content[0].Type != "input_text" || first.Content[0].Text != "Hello!" || first.ID != *page.FirstID {
		t.Fatalf("normalised item: %s", page.Data[0])
	}
	r = do(t, "GET", cu+"/items?order=asc&after="+*page.LastID, keyA, "")
	if !strings.Contains(r.body, "How are you?") || strings.Contains(r.body, "Hello!") {
		t.Fatalf("page 2: %s", r.body)
	}
	if r = do(t, "GET", cu+"/items/"+first.ID, keyA, ""); r.status != 200 || !strings.Contains(r.body, "Hello!") {
		t.Fatalf("get item: %d %s", r.status, r.body)
	}
	if r = do(t, "POST", cu, keyA, `{"metadata":{"topic":"changed"}}`); !strings.Contains(r.body, "changed") {
		t.Fatalf("update: %s", r.body)
	}
	// Tenant b cannot see, list, append to or delete a's conversation.
	for _, c := range []struct{ method, path, body string }{
		{"GET", cu, ""}, {"GET", cu + "/items", ""}, {"POST", cu + "/items", `{"items":[{"role":"user","content":"x"}]}`},
		{"DELETE", cu, ""}, {"GET", cu + "/items/" + first.ID, ""}, {"DELETE", cu + "/items/" + first.ID, ""},
	} {
		if r := do(t, c.method, ts.url+strings.TrimPrefix(c.path, ts.url), keyB, c.body); r.status != 404 {
			t.Fatalf("tenant b %s %s: %d %s", c.method, c.path, r.status, r.body)
		}
	}
	if r = do(t, "DELETE", cu, keyA, ""); !strings.Contains(r.body, `"deleted":true`) {
		t.Fatalf("delete: %s", r.body)
	}
	if r = do(t, "GET", cu, keyA, ""); r.status != 404 {
		t.Fatalf("after delete: %d", r.status)
	}
}

func TestConversationsBadInput(t *testing.T) {
	ts := storeServer(t)
	u := ts.url + "/v1/conversations"
	cases := []struct {
		body, code string
		status     int
	}{
		{`{`, "invalid_json", 400},
		{`{"metadata":{"a":1}}`, "invalid_json", 400},
		{`{"unknown":true}`, "invalid_json", 400},
		{`{"items":[42]}`, "invalid_item", 400},
		{`{"items":[{"role":"robot","content":"x"}]}`, "invalid_item", 400},
		{`{"metadata":{"` + strings.Repeat("k", 65) + `":"v"}}`, "invalid_metadata", 400},
	}
	for _, c := range cases {
		if r := do(t, "POST", u, keyA, c.body); r.status != c.status || r.err.Code != c.code {
			t.Errorf("%s: %d %+v", c.body, r.status, r.err)
		}
	}
	if r := do(t, "GET", u+"/conv_nope/items?limit=1000", keyA, ""); r.status != 400 || r.err.Param == nil {
		t.Errorf("limit 1000: %d %+v", r.status, r.err)
	}
	// Tenant b has a quota of 5 records: a conversation and 4 items fit, the next item does not.
	r := do(t, "POST", u, keyB, `{"items":[`+strings.Repeat(`{"role":"user","content":"x"},`, 3)+`{"role":"user","content":"x"}]}`)
	var conv conversationJSON
	json.Unmarshal([]byte(r.body), &conv)
	r = do(t, "POST", fmt.Sprintf("%s/%s/items", u, conv.ID), keyB, `{"items":[{"role":"user","content":"one too many"}]}`)
	if r.status != 507 || r.err.Code != "storage_quota_exceeded" || !strings.Contains(r.err.Message, "5 of 5 keys") {
		t.Fatalf("over quota: %d %+v", r.status, r.err)
	}
}
