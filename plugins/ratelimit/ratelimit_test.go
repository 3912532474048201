package main

import (
	"strings"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/host/plugintest"
	"github.com/plinth-dev/plinth/sdk"
	"github.com/plinth-dev/plinth/sdk/sdktest"
)

var cfg = map[string]any{
	"tiers": map[string]any{
		"default": map[string]any{"requests": map[string]any{"limit": 2, "period": "1m"},
			"tokens": map[string]any{"limit": 1000, "period": "1m"}},
		"pro": map[string]any{"requests": map[string]any{"limit": 10, "period": "1m"}},
	},
	"per_ip": map[string]any{"limit": 5, "period": "1m"},
	"exempt": []string{"models.list"},
}

func req(key, label, ip string) *sdk.Request {
	return &sdk.Request{Method: "GET", Path: "/v1/x", KeyID: key, KeyLabel: label, ClientIP: ip}
}

func testTiers(t *testing.T, h *sdktest.Host) {
	h.SetConfigJSON(t, cfg)
	// The default tier allows 2 per minute per key.
	for i := 0; i < 3; i++ {
		d, err := h.RateLimit(req("k1", "", "10.0.0.1"))
		if err != nil {
			t.Fatal(err)
		}
		if d.Deny != (i == 2) {
			t.Fatalf("take %d: %+v", i, d)
		}
		if i == 2 && (d.RetryAfterMs != 30000 || !strings.Contains(d.Message, "key rate limit")) {
			t.Fatalf("denial %+v", d)
		}
	}
	// Another key of the pro tier is independent, until the per-IP limit of 5 stops it.
	allowed := 0
	for i := 0; i < 6; i++ {
		d, err := h.RateLimit(req("k2", "pro", "10.0.0.1"))
		if err != nil {
			t.Fatal(err)
		}
		if !d.Deny {
			allowed++
		} else if d.Policies[0].Name != "ip" {
			t.Fatalf("denied by %+v, want the ip policy", d.Policies)
		}
	}
	if allowed != 2 { // 3 of the IP's 5 went to k1
		t.Fatalf("pro key allowed %d times behind a shared IP limit, want 2", allowed)
	}
	// Time refills.
	h.Advance(time.Minute)
	if d, _ := h.RateLimit(req("k1", "", "10.0.0.2")); d.Deny {
		t.Fatalf("after a minute: %+v", d)
	}
	// Exempt endpoints are never limited.
	r := req("k1", "", "10.0.0.2")
	r.Route = sdk.Builtin("models.list")
	for i := 0; i < 10; i++ {
		if d, _ := h.RateLimit(r); d.Deny || len(d.Policies) != 0 {
			t.Fatalf("exempt endpoint limited: %+v", d)
		}
	}
}

func testTokens(t *testing.T, h *sdktest.Host) {
	h.SetConfigJSON(t, cfg)
	r := req("k3", "", "")
	r.Tokens = 600
	d, err := h.RateLimit(r)
	if err != nil || d.Deny || len(d.Reservations) != 1 || d.Reservations[0].Reserved != 600 {
		t.Fatalf("first reservation: %+v %v", d, err)
	}
	if d, _ = h.RateLimit(r); !d.Deny || !strings.Contains(d.Message, "tokens") {
		t.Fatalf("second 600-token request within 1000/min: %+v", d)
	}
	r.Tokens = 5000
	h.Advance(time.Hour)
	if d, _ = h.RateLimit(r); !d.Deny || !strings.Contains(d.Message, "at most 1000 at once") || d.RetryAfterMs != 0 {
		t.Fatalf("request above the burst: %+v", d)
	}
	// A request for a plugin's handle hook carries no estimate: it gets a zero reservation, which the host
	// settles with what the plugin's LLM calls used. Other requests without an estimate reserve nothing.
	r = req("k4", "", "")
	r.Route = sdk.ToPlugin("agent")
	if d, err = h.RateLimit(r); err != nil || d.Deny || len(d.Reservations) != 1 ||
		d.Reservations[0].Key != "tokens:k4" || d.Reservations[0].Reserved != 0 {
		t.Fatalf("request for a plugin: %+v %v", d, err)
	}
	r.Route = sdk.Default()
	if d, err = h.RateLimit(r); err != nil || d.Deny || len(d.Reservations) != 0 {
		t.Fatalf("request without an estimate: %+v %v", d, err)
	}
}

func testBadConfig(t *testing.T, h *sdktest.Host) {
	h.SetConfigJSON(t, map[string]any{"per_ip": map[string]any{"limit": 5, "period": "soon"}})
	if _, err := h.RateLimit(req("k", "", "1.2.3.4")); err == nil || !strings.Contains(err.Error(), "per_ip") {
		t.Fatalf("err = %v, want a configuration error naming per_ip", err)
	}
}

func TestTiers(t *testing.T)     { testTiers(t, sdktest.New()) }
func TestTokens(t *testing.T)    { testTokens(t, sdktest.New()) }
func TestBadConfig(t *testing.T) { testBadConfig(t, sdktest.New()) }

func TestTiersWasm(t *testing.T)     { testTiers(t, plugintest.New(t, ".")) }
func TestTokensWasm(t *testing.T)    { testTokens(t, plugintest.New(t, ".")) }
func TestBadConfigWasm(t *testing.T) { testBadConfig(t, plugintest.New(t, ".")) }
