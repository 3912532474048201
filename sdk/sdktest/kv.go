package sdktest

import (
	"bytes"
	"encoding/binary"
	"slices"
	"strconv"
	"time"

	"github.com/plinth-dev/plinth/abi"
)

type kvItem struct {
	val     []byte
	expires time.Time // zero: never
}

// live returns the item at key unless it is missing or expired at the virtual clock. Caller holds mu.
func (h *Host) live(key []byte) (kvItem, bool) {
	it, ok := h.kv[string(key)]
	if !ok || (!it.expires.IsZero() && !h.now.Before(it.expires)) {
		return kvItem{}, false
	}
	return it, true
}

func (h *Host) expiry(ttlMs int64) time.Time {
	if ttlMs <= 0 {
		return time.Time{}
	}
	return h.now.Add(time.Duration(ttlMs) * time.Millisecond)
}

func badKey(key []byte) bool { return len(key) == 0 || len(key) > abi.MaxKeyLen }

// KVGet implements abi.Host.
func (h *Host) KVGet(key, buf []byte) int32 {
	if badKey(key) {
		return int32(abi.StatusInvalidArgument)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	it, ok := h.live(key)
	if !ok {
		return int32(abi.StatusNotFound)
	}
	return abi.Fit(buf, it.val)
}

// KVPut implements abi.Host.
func (h *Host) KVPut(key, val []byte, ttlMs int64) int32 {
	if badKey(key) || ttlMs < 0 {
		return int32(abi.StatusInvalidArgument)
	}
	if len(val) > abi.MaxValueLen {
		return int32(abi.StatusTooLarge)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.kv[string(key)] = kvItem{val: bytes.Clone(val), expires: h.expiry(ttlMs)}
	return 0
}

// KVDelete implements abi.Host.
func (h *Host) KVDelete(key []byte) int32 {
	if badKey(key) {
		return int32(abi.StatusInvalidArgument)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.kv, string(key))
	return 0
}

// KVIncr implements abi.Host.
func (h *Host) KVIncr(key []byte, delta, ttlMs int64, out []byte) int32 {
	if badKey(key) || ttlMs < 0 || len(out) < 8 {
		return int32(abi.StatusInvalidArgument)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	it, ok := h.live(key)
	var cur int64
	if ok {
		v, err := strconv.ParseInt(string(it.val), 10, 64)
		if err != nil {
			return int32(abi.StatusInvalidArgument)
		}
		cur = v
	} else {
		it.expires = h.expiry(ttlMs)
	}
	cur += delta
	it.val = strconv.AppendInt(nil, cur, 10)
	h.kv[string(key)] = it
	binary.LittleEndian.PutUint64(out, uint64(cur))
	return 0
}

// KVCAS implements abi.Host.
func (h *Host) KVCAS(key, old, new []byte, ttlMs int64) int32 {
	if badKey(key) || ttlMs < 0 {
		return int32(abi.StatusInvalidArgument)
	}
	if len(new) > abi.MaxValueLen {
		return int32(abi.StatusTooLarge)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	it, ok := h.live(key)
	if (old == nil) != !ok || (ok && !bytes.Equal(it.val, old)) {
		return int32(abi.StatusConflict)
	}
	if new == nil {
		delete(h.kv, string(key))
	} else {
		h.kv[string(key)] = kvItem{val: bytes.Clone(new), expires: h.expiry(ttlMs)}
	}
	return 0
}

// KVScan implements abi.Host.
func (h *Host) KVScan(req, buf []byte) int32 {
	var r abi.KVScanRequest
	if err := r.Decode(req); err != nil {
		return int32(abi.StatusInvalidArgument)
	}
	limit := int(r.Limit)
	if limit == 0 {
		limit = 100
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	var keys []string
	for k := range h.kv {
		if bytes.HasPrefix([]byte(k), r.Prefix) && k > string(r.After) {
			if _, ok := h.live([]byte(k)); ok {
				keys = append(keys, k)
			}
		}
	}
	slices.Sort(keys)
	var res abi.KVScanResult
	if len(keys) > limit {
		keys, res.More = keys[:limit], true
	}
	for _, k := range keys {
		e := abi.KVEntry{Key: []byte(k)}
		if !r.KeysOnly {
			e.Value = h.kv[k].val
		}
		res.Entries = append(res.Entries, e)
	}
	return abi.Fit(buf, res.AppendTo(nil))
}

// KVData returns a copy of the live KV contents, for assertions.
func (h *Host) KVData() map[string][]byte {
	h.mu.Lock()
	defer h.mu.Unlock()
	m := map[string][]byte{}
	for k := range h.kv {
		if it, ok := h.live([]byte(k)); ok {
			m[k] = bytes.Clone(it.val)
		}
	}
	return m
}
