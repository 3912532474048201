package store

import (
	"encoding/hex"
	"errors"
	"testing"

	"github.com/plinth-dev/plinth/abi"
	"github.com/plinth-dev/plinth/host/tenant"
)

func hashOf(secret string) string {
	h := tenant.HashKey([]byte(secret))
	return hex.EncodeToString(h[:])
}

func TestRegistryRoundTrip(t *testing.T) {
	s, _ := openTest(t)
	if ok, _ := s.Seeded(); ok {
		t.Fatal("fresh store claims to be seeded")
	}
	if err := s.PutTenant(&TenantRecord{ID: "acme", Bindings: map[string]string{"route": "router"},
		Limits: tenant.Limits{StorageKeys: 10}}, true); err != nil {
		t.Fatal(err)
	}
	if err := s.PutTenant(&TenantRecord{ID: "acme"}, true); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate tenant: %v", err)
	}
	if err := s.PutTenant(&TenantRecord{ID: "Bad Id"}, true); !errors.Is(err, ErrBadID) {
		t.Fatalf("bad id: %v", err)
	}
	hooks := abi.HookSet(0).With(abi.HookRoute)
	v1, err := s.AddVersion("acme", "router", []byte("module-one"), hooks, true, Quota{})
	if err != nil || v1.Version != 1 {
		t.Fatalf("v1: %+v %v", v1, err)
	}
	v2, _ := s.AddVersion("acme", "router", []byte("module-two"), hooks, true, Quota{})
	v3, _ := s.AddVersion("acme", "router", []byte("module-one"), hooks, false, Quota{}) // same bytes as v1
	if v3.Hash != v1.Hash {
		t.Fatal("same module bytes got different hashes")
	}
	s.UpdatePlugin("acme", "router", func(p *PluginRecord) error { p.Config = []byte(`{"x":1}`); return nil })
	if err := s.PutKey(&KeyRecord{ID: "k1", Tenant: "acme", Hash: hashOf("secret-1"), Label: "pro"}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutKey(&KeyRecord{ID: "k2", Tenant: "acme", Hash: hashOf("secret-1")}); !errors.Is(err, ErrExists) {
		t.Fatalf("same secret twice: %v", err)
	}

	snap, err := s.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	ten, _ := snap.Tenant("acme")
	if ten.Plugins["router"].Version != 2 || ten.Plugins["router"].Hash != v2.Hash || string(ten.Plugins["router"].Config) != `{"x":1}` ||
		ten.Bindings[abi.HookRoute] != "router" || ten.Limits.StorageKeys != 10 {
		t.Fatalf("snapshot tenant: %+v %+v", ten, ten.Plugins["router"])
	}
	if k, _, err := snap.Authenticate([]byte("secret-1"), s.now); err != nil || k.Label != "pro" {
		t.Fatalf("auth: %v", err)
	}
	// Activation and rollback.
	if p, _ := s.Activate("acme", "router", 3); p.Active != 3 {
		t.Fatalf("activate: %+v", p)
	}
	if p, _ := s.Rollback("acme", "router"); p.Active != 2 {
		t.Fatalf("rollback to 2: %+v", p)
	}
	if p, _ := s.Rollback("acme", "router"); p.Active != 1 {
		t.Fatalf("rollback to 1: %+v", p)
	}
	if _, err := s.Rollback("acme", "router"); !errors.Is(err, ErrNoActive) {
		t.Fatalf("rollback past the first: %v", err)
	}
	if _, err := s.Activate("acme", "router", 9); !errors.Is(err, ErrNotFound) {
		t.Fatalf("activate a missing version: %v", err)
	}
	// Rotating a key's secret revokes the old one in the same write.
	s.PutKey(&KeyRecord{ID: "k1", Tenant: "acme", Hash: hashOf("secret-2")})
	snap, _ = s.Snapshot()
	if _, _, err := snap.Authenticate([]byte("secret-1"), s.now); err == nil {
		t.Fatal("old secret still works")
	}
	if err := s.DeleteKey("acme", "k1"); err != nil {
		t.Fatal(err)
	}
	snap, _ = s.Snapshot()
	if _, _, err := snap.Authenticate([]byte("secret-2"), s.now); err == nil {
		t.Fatal("deleted key still works")
	}
	// Deleting the plugin frees its modules.
	_, keysBefore, _ := s.Usage("acme")
	if err := s.DeletePlugin("acme", "router"); err != nil {
		t.Fatal(err)
	}
	if _, keys, _ := s.Usage("acme"); keys != keysBefore-2 {
		t.Fatalf("module records after delete: %d, want %d", keys, keysBefore-2)
	}
	if _, err := s.Module("acme", v1.Hash); !errors.Is(err, ErrNotFound) {
		t.Fatal("module of a deleted plugin remains")
	}
}
