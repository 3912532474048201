package store

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/plinth-dev/plinth/abi"
	"github.com/plinth-dev/plinth/host/tenant"
)

// The registry: who the tenants are, their API keys, their plugins (module bytes by SHA-256, numbered
// versions, the active version, configuration, hook bindings). It is the source of truth a restart
// rebuilds every tenant from; the config file only seeds a fresh data directory.
//
//	'g' 't' tenantID                      → TenantRecord
//	'g' 'h' sha256(key secret)            → KeyRecord (the authentication index)
//	'g' 's'                               → "" once the data directory was seeded
//	tenant nsKey keyID                    → sha256 (the tenant's keys, by id)
//	tenant nsPlugin 'm' sha256            → module bytes
//	tenant nsPlugin 'v' lp(name) ver(4BE) → VersionRecord
//	tenant nsPlugin 'n' name              → PluginRecord
//
// Registry writes are serialised by one mutex: they are rare (admin actions), and serialising them
// keeps read-modify-write of records simple.

// TenantRecord is a stored tenant.
type TenantRecord struct {
	ID        string            `json:"id"`
	Name      string            `json:"name,omitempty"`
	Disabled  bool              `json:"disabled,omitempty"`
	Demo      bool              `json:"demo,omitempty"`
	Limits    tenant.Limits     `json:"limits"`
	Bindings  map[string]string `json:"bindings,omitempty"` // hook name → plugin name
	LLM       json.RawMessage   `json:"llm,omitempty"`
	CreatedAt time.Time         `json:"created_at"`
}

// KeyRecord is a stored API key (never the secret).
type KeyRecord struct {
	ID        string    `json:"id"`
	Tenant    string    `json:"tenant"`
	Label     string    `json:"label,omitempty"`
	Hash      string    `json:"sha256"`
	Admin     bool      `json:"admin,omitempty"`
	Expires   time.Time `json:"expires,omitzero"`
	Disabled  bool      `json:"disabled,omitempty"`
	CreatedAt time.Time `json:"created_at"`
}

// PluginRecord is a stored plugin of a tenant.
type PluginRecord struct {
	Name   string          `json:"name"`
	Active int             `json:"active"`           // active version; 0 none
	Prior  []int           `json:"prior,omitempty"`  // previously active versions, most recent last (rollback)
	Config json.RawMessage `json:"config,omitempty"` // the plugin's configuration
	Source string          `json:"source,omitempty"` // "embedded:NAME" for first-party plugins kept in step with the binary
	Latest int             `json:"latest"`           // highest version number ever uploaded
}

// VersionRecord is one uploaded version of a plugin.
type VersionRecord struct {
	Plugin    string      `json:"plugin"`
	Version   int         `json:"version"`
	Hash      string      `json:"sha256"`
	Size      int         `json:"size"`
	Hooks     abi.HookSet `json:"hooks"` // hooks the module exports
	CreatedAt time.Time   `json:"created_at"`
}

// Registry errors.
var (
	ErrExists   = errors.New("already exists")
	ErrNoActive = errors.New("no version to roll back to")
)

var registryMu sync.Mutex

func globalKey(ns byte, rest []byte) []byte { return append([]byte{'g', ns}, rest...) }

func pluginKey(t, name string) []byte { return TenantKey(t, nsPlugin, []byte{'n'}, []byte(name)) }

func versionKey(t, name string, v int) []byte {
	return TenantKey(t, nsPlugin, []byte{'v'}, lp(name), binary.BigEndian.AppendUint32(nil, uint32(v)))
}

func moduleKey(t, hash string) []byte { return TenantKey(t, nsPlugin, []byte{'m'}, []byte(hash)) }

func (s *Store) getJSON(key []byte, v any) error {
	raw, err := s.b.Get(key)
	if err != nil {
		return err
	}
	return json.Unmarshal(raw, v)
}

func setJSON(b *Batch, key []byte, v any) {
	raw, _ := json.Marshal(v)
	b.Set(key, raw)
}

// Seeded reports whether the data directory has been seeded.
func (s *Store) Seeded() (bool, error) {
	_, err := s.b.Get(globalKey('s', nil))
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// MarkSeeded records that the data directory has been seeded.
func (s *Store) MarkSeeded() error {
	var b Batch
	b.Set(globalKey('s', nil), nil)
	return s.b.Apply(&b)
}

// Tenant returns a tenant record.
func (s *Store) Tenant(id string) (*TenantRecord, error) {
	var t TenantRecord
	if err := s.getJSON(globalKey('t', []byte(id)), &t); err != nil {
		return nil, err
	}
	return &t, nil
}

// Tenants returns every tenant record, by id.
func (s *Store) Tenants() ([]*TenantRecord, error) {
	lower := globalKey('t', nil)
	var out []*TenantRecord
	var decodeErr error
	err := s.b.Scan(lower, prefixEnd(lower), func(_, v []byte) bool {
		var t TenantRecord
		if decodeErr = json.Unmarshal(v, &t); decodeErr != nil {
			return false
		}
		out = append(out, &t)
		return true
	})
	return out, errors.Join(err, decodeErr)
}

// PutTenant creates or replaces a tenant record. create refuses an existing id.
func (s *Store) PutTenant(t *TenantRecord, create bool) error {
	if !tenant.ValidID(t.ID) {
		return fmt.Errorf("%w: tenant id %q: use 1-63 of a-z, 0-9, _ and -", ErrBadID, t.ID)
	}
	registryMu.Lock()
	defer registryMu.Unlock()
	if create {
		if _, err := s.Tenant(t.ID); err == nil {
			return fmt.Errorf("tenant %q %w", t.ID, ErrExists)
		}
	}
	if t.CreatedAt.IsZero() {
		t.CreatedAt = s.now().UTC()
	}
	var b Batch
	setJSON(&b, globalKey('t', []byte(t.ID)), t)
	return s.b.Apply(&b)
}

// Keys returns the keys of a tenant ("" for all tenants).
func (s *Store) Keys(tenantID string) ([]*KeyRecord, error) {
	lower := globalKey('h', nil)
	var out []*KeyRecord
	var decodeErr error
	err := s.b.Scan(lower, prefixEnd(lower), func(_, v []byte) bool {
		var k KeyRecord
		if decodeErr = json.Unmarshal(v, &k); decodeErr != nil {
			return false
		}
		if tenantID == "" || k.Tenant == tenantID {
			out = append(out, &k)
		}
		return true
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Tenant+"\x00"+out[i].ID < out[j].Tenant+"\x00"+out[j].ID })
	return out, errors.Join(err, decodeErr)
}

// PutKey stores a key. A key id is unique within its tenant; storing an existing id replaces that key
// (its old secret stops working in the same batch).
func (s *Store) PutKey(k *KeyRecord) error {
	if !tenant.ValidID(k.ID) {
		return fmt.Errorf("%w: key id %q: use 1-63 of a-z, 0-9, _ and -", ErrBadID, k.ID)
	}
	h, err := tenant.ParseHash(k.Hash)
	if err != nil {
		return err
	}
	registryMu.Lock()
	defer registryMu.Unlock()
	if _, err := s.Tenant(k.Tenant); err != nil {
		return fmt.Errorf("tenant %q: %w", k.Tenant, err)
	}
	if k.CreatedAt.IsZero() {
		k.CreatedAt = s.now().UTC()
	}
	var b Batch
	idKey := TenantKey(k.Tenant, nsKey, []byte(k.ID))
	if old, err := s.b.Get(idKey); err == nil && !bytes.Equal(old, h[:]) {
		b.Delete(globalKey('h', old))
	}
	if other, err := s.keyByHash(h); err == nil && (other.Tenant != k.Tenant || other.ID != k.ID) {
		return fmt.Errorf("%w: that secret is already key %s of tenant %s", ErrExists, other.ID, other.Tenant)
	}
	b.Set(idKey, h[:])
	setJSON(&b, globalKey('h', h[:]), k)
	return s.b.Apply(&b)
}

func (s *Store) keyByHash(h [32]byte) (*KeyRecord, error) {
	var k KeyRecord
	if err := s.getJSON(globalKey('h', h[:]), &k); err != nil {
		return nil, err
	}
	return &k, nil
}

// Key returns a tenant's key by id.
func (s *Store) Key(tenantID, id string) (*KeyRecord, error) {
	h, err := s.b.Get(TenantKey(tenantID, nsKey, []byte(id)))
	if err != nil {
		return nil, err
	}
	var k KeyRecord
	return &k, s.getJSON(globalKey('h', h), &k)
}

// DeleteKey revokes a key.
func (s *Store) DeleteKey(tenantID, id string) error {
	registryMu.Lock()
	defer registryMu.Unlock()
	idKey := TenantKey(tenantID, nsKey, []byte(id))
	h, err := s.b.Get(idKey)
	if err != nil {
		return err
	}
	var b Batch
	b.Delete(idKey)
	b.Delete(globalKey('h', h))
	return s.b.Apply(&b)
}

// Plugin returns a plugin record.
func (s *Store) Plugin(tenantID, name string) (*PluginRecord, error) {
	var p PluginRecord
	if err := s.getJSON(pluginKey(tenantID, name), &p); err != nil {
		return nil, err
	}
	return &p, nil
}

// Plugins returns a tenant's plugin records, by name.
func (s *Store) Plugins(tenantID string) ([]*PluginRecord, error) {
	lower := TenantKey(tenantID, nsPlugin, []byte{'n'})
	var out []*PluginRecord
	var decodeErr error
	err := s.b.Scan(lower, prefixEnd(lower), func(_, v []byte) bool {
		var p PluginRecord
		if decodeErr = json.Unmarshal(v, &p); decodeErr != nil {
			return false
		}
		out = append(out, &p)
		return true
	})
	return out, errors.Join(err, decodeErr)
}

// Versions returns the versions of a plugin, oldest first.
func (s *Store) Versions(tenantID, name string) ([]*VersionRecord, error) {
	lower := TenantKey(tenantID, nsPlugin, []byte{'v'}, lp(name))
	var out []*VersionRecord
	var decodeErr error
	err := s.b.Scan(lower, prefixEnd(lower), func(_, v []byte) bool {
		var r VersionRecord
		if decodeErr = json.Unmarshal(v, &r); decodeErr != nil {
			return false
		}
		out = append(out, &r)
		return true
	})
	return out, errors.Join(err, decodeErr)
}

// Version returns one version of a plugin.
func (s *Store) Version(tenantID, name string, v int) (*VersionRecord, error) {
	var r VersionRecord
	if err := s.getJSON(versionKey(tenantID, name, v), &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// Module returns module bytes by their hex SHA-256.
func (s *Store) Module(tenantID, hash string) ([]byte, error) {
	return s.b.Get(moduleKey(tenantID, hash))
}

// AddVersion stores a new version of a plugin (creating the plugin if needed) and returns it. The module
// is stored once per tenant however many versions use it. activate makes it the active version.
// The caller has validated the module (runtime.Engine.Compile) and passes the hooks it exports.
func (s *Store) AddVersion(tenantID, name string, wasm []byte, hooks abi.HookSet, activate bool, q Quota) (*VersionRecord, error) {
	if !tenant.ValidID(name) {
		return nil, fmt.Errorf("%w: plugin name %q: use 1-63 of a-z, 0-9, _ and -", ErrBadID, name)
	}
	registryMu.Lock()
	defer registryMu.Unlock()
	p, err := s.Plugin(tenantID, name)
	if errors.Is(err, ErrNotFound) {
		p, err = &PluginRecord{Name: name}, nil
	}
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(wasm)
	hash := hex.EncodeToString(sum[:])
	p.Latest++
	v := &VersionRecord{Plugin: name, Version: p.Latest, Hash: hash, Size: len(wasm), Hooks: hooks, CreatedAt: s.now().UTC()}
	var b Batch
	var dBytes, dKeys int64
	mk := moduleKey(tenantID, hash)
	if _, err := s.b.Get(mk); errors.Is(err, ErrNotFound) {
		b.Set(mk, wasm)
		dBytes, dKeys = int64(len(mk)+len(wasm)), 1
	}
	if activate {
		if p.Active != 0 {
			p.Prior = append(p.Prior, p.Active)
		}
		p.Active = v.Version
	}
	setJSON(&b, versionKey(tenantID, name, v.Version), v)
	setJSON(&b, pluginKey(tenantID, name), p)
	if err := s.commit(tenantID, &b, dBytes, dKeys, q); err != nil {
		return nil, err
	}
	return v, nil
}

// UpdatePlugin applies fn to a plugin record under the registry lock and stores the result.
func (s *Store) UpdatePlugin(tenantID, name string, fn func(p *PluginRecord) error) (*PluginRecord, error) {
	registryMu.Lock()
	defer registryMu.Unlock()
	p, err := s.Plugin(tenantID, name)
	if err != nil {
		return nil, err
	}
	if err := fn(p); err != nil {
		return nil, err
	}
	var b Batch
	setJSON(&b, pluginKey(tenantID, name), p)
	return p, s.b.Apply(&b)
}

// Activate makes version v the active version of a plugin (the old one becomes the rollback target).
func (s *Store) Activate(tenantID, name string, v int) (*PluginRecord, error) {
	if _, err := s.Version(tenantID, name, v); err != nil {
		return nil, fmt.Errorf("version %d: %w", v, err)
	}
	return s.UpdatePlugin(tenantID, name, func(p *PluginRecord) error {
		if p.Active != v {
			if p.Active != 0 {
				p.Prior = append(p.Prior, p.Active)
			}
			p.Active = v
		}
		return nil
	})
}

// Rollback re-activates the previously active version of a plugin.
func (s *Store) Rollback(tenantID, name string) (*PluginRecord, error) {
	return s.UpdatePlugin(tenantID, name, func(p *PluginRecord) error {
		if len(p.Prior) == 0 {
			return ErrNoActive
		}
		p.Active, p.Prior = p.Prior[len(p.Prior)-1], p.Prior[:len(p.Prior)-1]
		return nil
	})
}

// DeletePlugin removes a plugin, its versions and the modules no other plugin version of the tenant
// uses. The caller unbinds it from hooks first.
func (s *Store) DeletePlugin(tenantID, name string) error {
	registryMu.Lock()
	defer registryMu.Unlock()
	versions, err := s.Versions(tenantID, name)
	if err != nil {
		return err
	}
	if _, err := s.Plugin(tenantID, name); err != nil {
		return err
	}
	// Hashes still used by other plugins of the tenant.
	used := map[string]bool{}
	others, err := s.Plugins(tenantID)
	if err != nil {
		return err
	}
	for _, o := range others {
		if o.Name == name {
			continue
		}
		vs, err := s.Versions(tenantID, o.Name)
		if err != nil {
			return err
		}
		for _, v := range vs {
			used[v.Hash] = true
		}
	}
	var b Batch
	var dBytes, dKeys int64
	freed := map[string]bool{}
	for _, v := range versions {
		b.Delete(versionKey(tenantID, name, v.Version))
		if !used[v.Hash] && !freed[v.Hash] {
			freed[v.Hash] = true
			mk := moduleKey(tenantID, v.Hash)
			b.Delete(mk)
			dBytes -= int64(len(mk) + v.Size)
			dKeys--
		}
	}
	b.Delete(pluginKey(tenantID, name))
	return s.commit(tenantID, &b, dBytes, dKeys, Quota{})
}

// Snapshot builds the tenant snapshot the server runs on: every tenant with its active plugin versions
// and bindings, and every key.
func (s *Store) Snapshot() (*tenant.Snapshot, error) {
	recs, err := s.Tenants()
	if err != nil {
		return nil, err
	}
	var ts []*tenant.Tenant
	for _, r := range recs {
		t := &tenant.Tenant{ID: r.ID, Name: r.Name, Disabled: r.Disabled, Demo: r.Demo, Limits: r.Limits,
			LLM: r.LLM, Plugins: map[string]*tenant.Plugin{}, Bindings: map[abi.Hook]string{}}
		plugins, err := s.Plugins(r.ID)
		if err != nil {
			return nil, err
		}
		for _, p := range plugins {
			if p.Active == 0 {
				continue
			}
			v, err := s.Version(r.ID, p.Name, p.Active)
			if err != nil {
				return nil, fmt.Errorf("tenant %s plugin %s v%d: %w", r.ID, p.Name, p.Active, err)
			}
			t.Plugins[p.Name] = &tenant.Plugin{Name: p.Name, Version: v.Version, Hash: v.Hash, Config: p.Config}
		}
		hooks := make([]string, 0, len(r.Bindings))
		for h := range r.Bindings {
			hooks = append(hooks, h)
		}
		slices.Sort(hooks)
		for _, hn := range hooks {
			h, ok := abi.ParseHook(hn)
			name := r.Bindings[hn]
			if _, active := t.Plugins[name]; ok && active {
				t.Bindings[h] = name
			}
		}
		ts = append(ts, t)
	}
	krecs, err := s.Keys("")
	if err != nil {
		return nil, err
	}
	keys := make([]*tenant.Key, 0, len(krecs))
	for _, k := range krecs {
		h, err := tenant.ParseHash(k.Hash)
		if err != nil {
			return nil, err
		}
		keys = append(keys, &tenant.Key{ID: k.ID, Tenant: k.Tenant, Label: k.Label, Hash: h, Admin: k.Admin,
			Expires: k.Expires, Disabled: k.Disabled})
	}
	return tenant.NewSnapshot(ts, keys)
}
