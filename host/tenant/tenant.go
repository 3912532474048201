// Package tenant holds who may call Plinth: tenants, their API keys, limits and plugin bindings, as an
// immutable Snapshot. A new snapshot replaces the old one atomically, so a request sees one consistent
// view from authentication to its last hook.
package tenant

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/plinth-dev/plinth/abi"
)

// Tenant is one customer of the host. Everything it owns is scoped by ID.
type Tenant struct {
	ID       string
	Name     string
	Disabled bool
	Limits   Limits
	// Plugins are the active version of each of the tenant's plugins, by name.
	Plugins map[string]*Plugin
	// Bindings name the plugin bound to each hook (route, ratelimit, prompt). The handle hook needs no
	// binding: route decisions name the plugin.
	Bindings map[abi.Hook]string
	// Demo marks the tenant of the embedded default setup.
	Demo bool
	// LLM is the tenant's LLM configuration (providers, models), parsed by host/llm.
	LLM json.RawMessage
}

// Plugin is one version of a tenant's plugin.
type Plugin struct {
	Name    string
	Version int
	// Hash is the hex SHA-256 of the module bytes.
	Hash   string
	Config []byte
}

// Limits are a tenant's limits; zero fields take the server defaults (see Defaults).
type Limits struct {
	PluginMemoryBytes int64         `json:"plugin_memory_bytes,omitempty"`
	PluginDeadline    time.Duration `json:"plugin_deadline_ns,omitempty"`
	PluginInstances   int           `json:"plugin_instances,omitempty"`
	StorageBytes      int64         `json:"storage_bytes,omitempty"`
	StorageKeys       int64         `json:"storage_keys,omitempty"`
	RequestBytes      int64         `json:"request_bytes,omitempty"`
	CPUPerCall        int64         `json:"cpu_per_call,omitempty"`
	CPUPerMinute      int64         `json:"cpu_per_minute,omitempty"`
	// ConversationRetention deletes conversations this long after their last update.
	ConversationRetention time.Duration `json:"conversation_retention_ns,omitempty"`
}

// Defaults are the limits of a tenant that sets none.
var Defaults = Limits{
	PluginMemoryBytes:     64 << 20,
	PluginDeadline:        time.Second,
	PluginInstances:       4,
	StorageBytes:          1 << 30,
	StorageKeys:           1_000_000,
	ConversationRetention: 30 * 24 * time.Hour,
}

// WithDefaults returns l with zero fields replaced by Defaults.
func (l Limits) WithDefaults() Limits {
	d := Defaults
	pick := func(v, def int64) int64 {
		if v > 0 {
			return v
		}
		return def
	}
	l.PluginMemoryBytes = pick(l.PluginMemoryBytes, d.PluginMemoryBytes)
	l.PluginDeadline = time.Duration(pick(int64(l.PluginDeadline), int64(d.PluginDeadline)))
	l.PluginInstances = int(pick(int64(l.PluginInstances), int64(d.PluginInstances)))
	l.StorageBytes = pick(l.StorageBytes, d.StorageBytes)
	l.StorageKeys = pick(l.StorageKeys, d.StorageKeys)
	l.ConversationRetention = time.Duration(pick(int64(l.ConversationRetention), int64(d.ConversationRetention)))
	return l
}

// Key is an API key. Only the SHA-256 of the secret is kept.
type Key struct {
	ID     string
	Tenant string
	Label  string
	Hash   [32]byte
	// Admin keys manage their tenant through /admin/v1 (plugins, config); they also call the API.
	Admin    bool
	Expires  time.Time // zero: never
	Disabled bool
}

// NewSecret returns a new random API key secret: "pk-" and 32 base32 characters (160 bits).
func NewSecret() string {
	var b [20]byte
	rand.Read(b[:])
	return "pk-" + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:]))
}

// HashKey returns the SHA-256 of an API key secret.
func HashKey(secret []byte) [32]byte { return sha256.Sum256(secret) }

// ParseHash reads a hex SHA-256.
func ParseHash(s string) ([32]byte, error) {
	var h [32]byte
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != 32 {
		return h, fmt.Errorf("key hash %q is not 64 hex digits", s)
	}
	copy(h[:], b)
	return h, nil
}

var idPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// ValidID reports whether s can name a tenant, key or plugin: 1–63 of [a-z0-9_-], starting with a
// letter or digit. The restriction keeps ids safe in paths, metrics labels and logs.
func ValidID(s string) bool { return idPattern.MatchString(s) }

// Snapshot is an immutable view of all tenants and keys.
type Snapshot struct {
	tenants map[string]*Tenant
	keys    map[[32]byte]*Key
}

// NewSnapshot indexes tenants and keys. Keys of unknown tenants are an error.
func NewSnapshot(tenants []*Tenant, keys []*Key) (*Snapshot, error) {
	s := &Snapshot{tenants: map[string]*Tenant{}, keys: map[[32]byte]*Key{}}
	for _, t := range tenants {
		if !ValidID(t.ID) {
			return nil, fmt.Errorf("tenant id %q: want 1-63 of a-z, 0-9, _ and -", t.ID)
		}
		if _, dup := s.tenants[t.ID]; dup {
			return nil, fmt.Errorf("duplicate tenant %q", t.ID)
		}
		for h, name := range t.Bindings {
			if _, ok := t.Plugins[name]; !ok {
				return nil, fmt.Errorf("tenant %s: %s hook bound to unknown plugin %q", t.ID, h, name)
			}
		}
		s.tenants[t.ID] = t
	}
	for _, k := range keys {
		if _, ok := s.tenants[k.Tenant]; !ok {
			return nil, fmt.Errorf("key %s: unknown tenant %q", k.ID, k.Tenant)
		}
		if _, dup := s.keys[k.Hash]; dup {
			return nil, fmt.Errorf("key %s: the same secret is already a key", k.ID)
		}
		s.keys[k.Hash] = k
	}
	return s, nil
}

// Tenant returns a tenant by id.
func (s *Snapshot) Tenant(id string) (*Tenant, bool) {
	t, ok := s.tenants[id]
	return t, ok
}

// Tenants returns every tenant (unordered).
func (s *Snapshot) Tenants() []*Tenant {
	out := make([]*Tenant, 0, len(s.tenants))
	for _, t := range s.tenants {
		out = append(out, t)
	}
	return out
}

// Keys returns every key (unordered).
func (s *Snapshot) Keys() []*Key {
	out := make([]*Key, 0, len(s.keys))
	for _, k := range s.keys {
		out = append(out, k)
	}
	return out
}

// Authentication failures. Their messages are safe to show a client.
var (
	ErrNoKey          = errors.New("missing API key: send it as 'Authorization: Bearer <key>'")
	ErrBadKey         = errors.New("incorrect API key provided")
	ErrKeyExpired     = errors.New("the API key has expired")
	ErrTenantDisabled = errors.New("the tenant of this API key is disabled")
)

// Authenticate returns the key and tenant of a secret. The secret is hashed and looked up by hash, and
// the stored hash is compared again in constant time, so timing reveals nothing about stored keys
// (a hash prefix an attacker cannot choose leaks nothing useful, and the final compare is constant-time).
//
// now is called only for keys with an expiry.
func (s *Snapshot) Authenticate(secret []byte, now func() time.Time) (*Key, *Tenant, error) {
	if len(secret) == 0 {
		return nil, nil, ErrNoKey
	}
	h := HashKey(secret)
	k, ok := s.keys[h]
	if !ok || subtle.ConstantTimeCompare(k.Hash[:], h[:]) != 1 || k.Disabled {
		return nil, nil, ErrBadKey
	}
	if !k.Expires.IsZero() && now().After(k.Expires) {
		return nil, nil, ErrKeyExpired
	}
	t := s.tenants[k.Tenant]
	if t.Disabled {
		return nil, nil, ErrTenantDisabled
	}
	return k, t, nil
}
