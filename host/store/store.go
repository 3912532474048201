package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Keyspace (docs/storage.md is the reference):
//
//	't' uvarint(len(tenant)) tenant  ns  rest     everything a tenant owns
//	'g' ns rest                                   the operator's data: tenant records, key index, marks
//
// The tenant id is length-prefixed, so the prefix of one tenant is never a prefix of another's, and every
// byte a client or plugin supplies goes into rest, after the fixed head: no input can name a key outside
// its tenant's range. Within a namespace, variable-length components other than the last are also
// length-prefixed for the same reason (a plugin name inside the KV namespace, for instance).
const (
	nsKV       = 'k' // uvarint(len(plugin)) plugin userkey → expiry(8) value
	nsExpiry   = 'e' // expiry(8 BE ms) uvarint(len(plugin)) plugin userkey → ""
	nsConv     = 'c' // conversations; see conversations.go
	nsConvTime = 'x' // updated(8 BE ms) convID → "" (retention index)
	nsPlugin   = 'p' // plugin registry; see registry.go
	nsKey      = 'y' // keyID → key hash (the tenant's keys)
	nsDoc      = 'd' // vector stores and documents (search)
	nsAudit    = 'a' // audit records
	nsUsage    = 'u' // 'b' bytes, 'n' records: counters written with Batch.Add
)

// TenantPrefix returns the first bytes of every key of tenant.
func TenantPrefix(tenant string) []byte {
	b := make([]byte, 0, 2+len(tenant))
	b = append(b, 't')
	b = binary.AppendUvarint(b, uint64(len(tenant)))
	return append(b, tenant...)
}

// TenantKey returns a key of tenant in namespace ns, followed by the parts as given (the caller
// length-prefixes any part that is not last and not fixed-size).
func TenantKey(tenant string, ns byte, parts ...[]byte) []byte {
	n := 3 + len(tenant)
	for _, p := range parts {
		n += len(p)
	}
	b := make([]byte, 0, n+8)
	b = append(b, 't')
	b = binary.AppendUvarint(b, uint64(len(tenant)))
	b = append(b, tenant...)
	b = append(b, ns)
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

// lp returns s length-prefixed.
func lp(s string) []byte {
	b := binary.AppendUvarint(nil, uint64(len(s)))
	return append(b, s...)
}

// prefixEnd returns the smallest key greater than every key with the given prefix (nil: no bound).
func prefixEnd(prefix []byte) []byte {
	end := bytes.Clone(prefix)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil
}

func be64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// Quota limits a tenant's stored data. Zero fields are unlimited.
type Quota struct {
	Bytes int64
	Keys  int64
}

// QuotaError reports a write refused by a tenant quota.
type QuotaError struct {
	Tenant string
	What   string // "bytes" or "keys"
	Limit  int64
	Used   int64
}

func (e *QuotaError) Error() string {
	return fmt.Sprintf("tenant %s storage quota exceeded: %d of %d %s used", e.Tenant, e.Used, e.Limit, e.What)
}

// IsQuota reports whether err is a quota refusal.
func IsQuota(err error) bool {
	var q *QuotaError
	return errors.As(err, &q)
}

// Store is the tenant-scoped store. It is safe for concurrent use.
type Store struct {
	b     Backend
	now   func() time.Time
	seed  maphash.Seed
	locks [512]sync.Mutex // striped by key: serialise read-modify-write of one key

	mu    sync.Mutex
	usage map[string]*usage // tenant → in-memory usage; guarded by mu
}

// usage is a tenant's storage use. The persisted counters are updated in the same batch as the data,
// so they are exact after a crash; these in-memory copies are loaded once and kept in step.
type usage struct {
	bytes, keys atomic.Int64
}

// Open returns a Store on b. now may be nil (time.Now).
func Open(b Backend, now func() time.Time) *Store {
	if now == nil {
		now = time.Now
	}
	return &Store{b: b, now: now, seed: maphash.MakeSeed(), usage: map[string]*usage{}}
}

// OpenDir opens a Pebble-backed Store in dir.
func OpenDir(dir string) (*Store, error) {
	b, err := OpenPebble(dir)
	if err != nil {
		return nil, err
	}
	return Open(b, nil), nil
}

// Close closes the backend.
func (s *Store) Close() error { return s.b.Close() }

// Backup writes a consistent copy of the store into dir, which must not exist yet, while the store keeps
// serving. Restore by stopping the server and putting the copy in place of the data directory's store
// (docs/operations.md).
func (s *Store) Backup(dir string) error { return s.b.Checkpoint(dir) }

// Backend returns the underlying backend (for derived indexes that keep their own watermarks).
func (s *Store) Backend() Backend { return s.b }

func (s *Store) lock(key []byte) *sync.Mutex {
	m := &s.locks[maphash.Bytes(s.seed, key)%uint64(len(s.locks))]
	m.Lock()
	return m
}

func (s *Store) usageOf(tenant string) (*usage, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if u, ok := s.usage[tenant]; ok {
		return u, nil
	}
	u := &usage{}
	for _, c := range []struct {
		kind byte
		dst  *atomic.Int64
	}{{'b', &u.bytes}, {'n', &u.keys}} {
		v, err := s.b.Get(TenantKey(tenant, nsUsage, []byte{c.kind}))
		if err != nil && !errors.Is(err, ErrNotFound) {
			return nil, err
		}
		c.dst.Store(readCounter(v))
	}
	s.usage[tenant] = u
	return u, nil
}

// Usage returns a tenant's stored bytes and records.
func (s *Store) Usage(tenant string) (bytes, keys int64, err error) {
	u, err := s.usageOf(tenant)
	if err != nil {
		return 0, 0, err
	}
	return u.bytes.Load(), u.keys.Load(), nil
}

// commit applies b for tenant, accounting dBytes and dKeys against q. Growth beyond the quota is
// refused before anything is written; shrinking is always allowed.
func (s *Store) commit(tenant string, b *Batch, dBytes, dKeys int64, q Quota) error {
	u, err := s.usageOf(tenant)
	if err != nil {
		return err
	}
	nb, nk := u.bytes.Add(dBytes), u.keys.Add(dKeys)
	undo := func() { u.bytes.Add(-dBytes); u.keys.Add(-dKeys) }
	if q.Bytes > 0 && dBytes > 0 && nb > q.Bytes {
		undo()
		return &QuotaError{Tenant: tenant, What: "bytes", Limit: q.Bytes, Used: nb - dBytes}
	}
	if q.Keys > 0 && dKeys > 0 && nk > q.Keys {
		undo()
		return &QuotaError{Tenant: tenant, What: "keys", Limit: q.Keys, Used: nk - dKeys}
	}
	b.Add(TenantKey(tenant, nsUsage, []byte{'b'}), dBytes)
	b.Add(TenantKey(tenant, nsUsage, []byte{'n'}), dKeys)
	if err := s.b.Apply(b); err != nil {
		undo()
		return err
	}
	return nil
}

// --- Plugin KV -------------------------------------------------------------------------------------

// KV errors.
var (
	ErrBadKey   = errors.New("invalid key")
	ErrConflict = errors.New("compare-and-set conflict")
	ErrNotInt   = errors.New("value is not a decimal integer")
)

// MaxKVKey and MaxKVValue bound plugin keys and values (the ABI's limits).
const (
	MaxKVKey   = 1024
	MaxKVValue = 1 << 20
)

func kvKey(tenant, plugin string, key []byte) []byte {
	return TenantKey(tenant, nsKV, lp(plugin), key)
}

func expiryKey(tenant, plugin string, exp uint64, key []byte) []byte {
	return TenantKey(tenant, nsExpiry, be64(exp), lp(plugin), key)
}

// kvValue is a stored KV value: its expiry (Unix ms, 0 never) and bytes.
type kvValue struct {
	exp uint64
	val []byte
}

func decodeKV(v []byte) (kvValue, bool) {
	if len(v) < 8 {
		return kvValue{}, false
	}
	return kvValue{exp: binary.BigEndian.Uint64(v), val: v[8:]}, true
}

func encodeKV(exp uint64, val []byte) []byte {
	return append(be64(exp), val...)
}

func (s *Store) nowMs() uint64 { return uint64(s.now().UnixMilli()) }

// current returns the live value at k (missing or expired: ok false) and the raw stored size.
func (s *Store) current(k []byte) (kv kvValue, live bool, storedSize int64, err error) {
	raw, err := s.b.Get(k)
	if errors.Is(err, ErrNotFound) {
		return kvValue{}, false, 0, nil
	}
	if err != nil {
		return kvValue{}, false, 0, err
	}
	kv, ok := decodeKV(raw)
	if !ok {
		return kvValue{}, false, 0, fmt.Errorf("store: corrupt KV value at %q", k)
	}
	live = kv.exp == 0 || kv.exp > s.nowMs()
	return kv, live, int64(len(k) + len(raw)), nil
}

func checkKV(key []byte, val []byte) error {
	if len(key) == 0 || len(key) > MaxKVKey {
		return fmt.Errorf("%w: keys are 1 to %d bytes", ErrBadKey, MaxKVKey)
	}
	if len(val) > MaxKVValue {
		return fmt.Errorf("%w: values are at most %d bytes", ErrBadKey, MaxKVValue)
	}
	return nil
}

// KVGet returns the value of a plugin's key, or ErrNotFound (also for expired keys).
func (s *Store) KVGet(tenant, plugin string, key []byte) ([]byte, error) {
	if err := checkKV(key, nil); err != nil {
		return nil, err
	}
	kv, live, _, err := s.current(kvKey(tenant, plugin, key))
	if err != nil {
		return nil, err
	}
	if !live {
		return nil, ErrNotFound
	}
	return kv.val, nil
}

// write replaces (or, with val nil, deletes) the value at a plugin's key, maintaining the expiry index
// and usage. Caller holds the key's lock and has read old.
func (s *Store) write(tenant, plugin string, key []byte, old kvValue, oldSize int64, val []byte, ttl time.Duration, q Quota) error {
	k := kvKey(tenant, plugin, key)
	var b Batch
	if oldSize > 0 && old.exp != 0 {
		b.Delete(expiryKey(tenant, plugin, old.exp, key))
	}
	var newSize, dKeys int64
	if val == nil {
		if oldSize == 0 {
			return nil
		}
		b.Delete(k)
		dKeys = -1
	} else {
		var exp uint64
		if ttl > 0 {
			exp = s.nowMs() + uint64(ttl.Milliseconds())
			b.Set(expiryKey(tenant, plugin, exp, key), nil)
		}
		v := encodeKV(exp, val)
		b.Set(k, v)
		newSize = int64(len(k) + len(v))
		if oldSize == 0 {
			dKeys = 1
		}
	}
	return s.commit(tenant, &b, newSize-oldSize, dKeys, q)
}

// KVPut stores a plugin's key. ttl > 0 makes it expire; 0 never.
func (s *Store) KVPut(tenant, plugin string, key, val []byte, ttl time.Duration, q Quota) error {
	if err := checkKV(key, val); err != nil {
		return err
	}
	if val == nil {
		val = []byte{}
	}
	k := kvKey(tenant, plugin, key)
	defer s.lock(k).Unlock()
	old, _, oldSize, err := s.current(k)
	if err != nil {
		return err
	}
	return s.write(tenant, plugin, key, old, oldSize, val, ttl, q)
}

// KVDelete removes a plugin's key; a missing key is not an error.
func (s *Store) KVDelete(tenant, plugin string, key []byte) error {
	if err := checkKV(key, nil); err != nil {
		return err
	}
	k := kvKey(tenant, plugin, key)
	defer s.lock(k).Unlock()
	old, _, oldSize, err := s.current(k)
	if err != nil {
		return err
	}
	return s.write(tenant, plugin, key, old, oldSize, nil, 0, Quota{})
}

// KVIncr atomically adds delta to the decimal integer at a plugin's key (missing counts as 0) and
// returns the new value. ttl applies only when the key is created.
func (s *Store) KVIncr(tenant, plugin string, key []byte, delta int64, ttl time.Duration, q Quota) (int64, error) {
	if err := checkKV(key, nil); err != nil {
		return 0, err
	}
	k := kvKey(tenant, plugin, key)
	defer s.lock(k).Unlock()
	old, live, oldSize, err := s.current(k)
	if err != nil {
		return 0, err
	}
	var cur int64
	if live {
		if cur, err = strconv.ParseInt(string(old.val), 10, 64); err != nil {
			return 0, ErrNotInt
		}
		// Keep the existing expiry: re-set it below through ttl relative to now.
		if old.exp != 0 {
			ttl = time.Duration(old.exp-s.nowMs()) * time.Millisecond
		} else {
			ttl = 0
		}
	}
	cur += delta
	return cur, s.write(tenant, plugin, key, old, oldSize, strconv.AppendInt(nil, cur, 10), ttl, q)
}

// KVCAS atomically replaces a plugin's key with new if its live value equals old (old nil: the key
// must be absent). new nil deletes the key. It returns ErrConflict when the precondition fails.
func (s *Store) KVCAS(tenant, plugin string, key, old, new []byte, ttl time.Duration, q Quota) error {
	if err := checkKV(key, new); err != nil {
		return err
	}
	k := kvKey(tenant, plugin, key)
	defer s.lock(k).Unlock()
	cur, live, curSize, err := s.current(k)
	if err != nil {
		return err
	}
	if (old == nil) == live || (live && !bytes.Equal(cur.val, old)) {
		return ErrConflict
	}
	return s.write(tenant, plugin, key, cur, curSize, new, ttl, q)
}

// KVEntry is one entry of a scan.
type KVEntry struct {
	Key, Value []byte
}

// KVScan returns up to limit live entries of a plugin whose keys start with prefix and are greater than
// after, in ascending key order, and whether more follow.
func (s *Store) KVScan(tenant, plugin string, prefix, after []byte, limit int, keysOnly bool) ([]KVEntry, bool, error) {
	base := kvKey(tenant, plugin, nil)
	lower := append(bytes.Clone(base), prefix...)
	if len(after) > 0 && bytes.Compare(after, prefix) >= 0 {
		lower = append(append(bytes.Clone(base), after...), 0) // the smallest key after `after`
	}
	upper := prefixEnd(append(bytes.Clone(base), prefix...))
	now := s.nowMs()
	var out []KVEntry
	more := false
	err := s.b.Scan(lower, upper, func(k, v []byte) bool {
		kv, ok := decodeKV(v)
		if !ok || (kv.exp != 0 && kv.exp <= now) {
			return true
		}
		if len(out) == limit {
			more = true
			return false
		}
		e := KVEntry{Key: bytes.Clone(k[len(base):])}
		if !keysOnly {
			e.Value = bytes.Clone(kv.val)
		}
		out = append(out, e)
		return true
	})
	return out, more, err
}

// SweepExpired deletes a tenant's expired KV keys (reads already treat them as missing; this reclaims
// their space and quota). It returns how many it removed.
func (s *Store) SweepExpired(tenant string) (int, error) {
	lower := TenantKey(tenant, nsExpiry)
	upper := TenantKey(tenant, nsExpiry, be64(s.nowMs()+1))
	type victim struct {
		plugin string
		key    []byte
	}
	var victims []victim
	err := s.b.Scan(lower, upper, func(k, _ []byte) bool {
		rest := k[len(lower)+8:]
		n, w := binary.Uvarint(rest)
		if w <= 0 || int(n) > len(rest)-w {
			return true
		}
		victims = append(victims, victim{plugin: string(rest[w : w+int(n)]), key: bytes.Clone(rest[w+int(n):])})
		return len(victims) < 10000
	})
	if err != nil {
		return 0, err
	}
	removed := 0
	for _, v := range victims {
		k := kvKey(tenant, v.plugin, v.key)
		m := s.lock(k)
		cur, live, size, err := s.current(k)
		// write removes a key's index entry whenever it replaces or deletes the key, so every entry found
		// here belongs to the key's current value.
		if err == nil && size > 0 && !live {
			err = s.write(tenant, v.plugin, v.key, cur, size, nil, 0, Quota{})
			removed++
		}
		m.Unlock()
		if err != nil {
			return removed, err
		}
	}
	return removed, nil
}
