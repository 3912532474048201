package sdk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"iter"
	"strconv"
	"time"

	"github.com/plinth-dev/plinth/abi"
)

// ErrNotFound is returned by KV reads of a key that does not exist or has expired.
var ErrNotFound = abi.StatusNotFound

// KV is the plugin's key-value store: durable, scoped by the host to this tenant and this plugin, so no
// key a plugin chooses can reach another plugin's or tenant's data. See docs/abi.md for the exact
// semantics (TTL expiry, atomicity of Incr and CompareAndSwap, scan order).
var KV kvStore

type kvStore struct{}

// kvBuf is reused by Get; values above its size are fetched with a retry (the buffer model).
var kvBuf = make([]byte, 1024)

// Get returns a copy of the value of key, or ErrNotFound.
func (kvStore) Get(key string) ([]byte, error) {
	k := view(key)
	buf := kvBuf
	for {
		n := hostKVGet(k, buf)
		if n < 0 {
			return nil, kvErr("get", key, n)
		}
		if int(n) <= len(buf) {
			return append([]byte(nil), buf[:n]...), nil
		}
		buf = make([]byte, n)
	}
}

// Put stores value under key. A ttl > 0 makes the key expire that long from now; 0 means never.
// When Put returns nil the write is durable.
func (kvStore) Put(key string, value []byte, ttl time.Duration) error {
	return kvErr("put", key, hostKVPut(view(key), value, ttl.Milliseconds()))
}

// Delete removes key; deleting a missing key is not an error.
func (kvStore) Delete(key string) error {
	return kvErr("delete", key, hostKVDelete(view(key)))
}

// Incr atomically adds delta to the integer stored at key (decimal text; a missing key counts as 0)
// and returns the new value. ttl applies only when Incr creates the key, which makes fixed-window
// counters one call.
func (kvStore) Incr(key string, delta int64, ttl time.Duration) (int64, error) {
	var out [8]byte
	if st := hostKVIncr(view(key), delta, ttl.Milliseconds(), out[:]); st < 0 {
		return 0, kvErr("incr", key, st)
	}
	return int64(binary.LittleEndian.Uint64(out[:])), nil
}

// CompareAndSwap atomically replaces the value of key with new if its current value equals old. A nil
// old means "key must not exist"; a nil new deletes the key. It reports whether the swap happened.
func (kvStore) CompareAndSwap(key string, old, new []byte, ttl time.Duration) (bool, error) {
	st := hostKVCAS(view(key), old, new, ttl.Milliseconds())
	if abi.Status(st) == abi.StatusConflict {
		return false, nil
	}
	if st < 0 {
		return false, kvErr("compare-and-swap", key, st)
	}
	return true, nil
}

// Entry is one key/value pair from Scan.
type Entry struct {
	Key   string
	Value []byte
}

// Scan returns up to limit entries whose keys start with prefix and sort after the key after (""
// starts at the beginning), in ascending byte order, and whether more follow. Pass the last key
// returned as after to get the next page. limit 0 means 100; the host caps it at 1000.
func (kvStore) Scan(prefix, after string, limit int) ([]Entry, bool, error) {
	req := abi.KVScanRequest{Prefix: view(prefix), After: view(after), Limit: uint32(max(limit, 0))}
	enc := req.AppendTo(nil)
	buf := make([]byte, 16<<10)
	for {
		n := hostKVScan(enc, buf)
		if n < 0 {
			return nil, false, kvErr("scan", prefix, n)
		}
		if int(n) > len(buf) {
			buf = make([]byte, n)
			continue
		}
		var res abi.KVScanResult
		if err := res.Decode(buf[:n]); err != nil {
			return nil, false, fmt.Errorf("kv scan %q: %w", prefix, err)
		}
		out := make([]Entry, len(res.Entries))
		for i, e := range res.Entries {
			out[i] = Entry{Key: string(e.Key), Value: append([]byte(nil), e.Value...)}
		}
		return out, res.More, nil
	}
}

// All iterates over every entry with the given prefix, page by page. Iteration stops at the first error,
// which is yielded with a zero Entry.
func (s kvStore) All(prefix string) iter.Seq2[Entry, error] {
	return func(yield func(Entry, error) bool) {
		after := ""
		for {
			page, more, err := s.Scan(prefix, after, 0)
			if err != nil {
				yield(Entry{}, err)
				return
			}
			for _, e := range page {
				if !yield(e, nil) {
					return
				}
			}
			if !more || len(page) == 0 {
				return
			}
			after = page[len(page)-1].Key
		}
	}
}

func kvErr(op, key string, st int32) error {
	if st >= 0 {
		return nil
	}
	if abi.Status(st) == abi.StatusNotFound {
		return ErrNotFound
	}
	// Quoting copies key, so it does not escape: callers' keys (often concatenations) stay on the stack.
	return fmt.Errorf("kv %s %s: %w", op, strconv.Quote(key), abi.Status(st))
}

// IsNotFound reports whether err is ErrNotFound.
func IsNotFound(err error) bool { return errors.Is(err, ErrNotFound) }
