package server

import (
	"encoding/binary"
	"errors"
	"time"

	"github.com/plinth-dev/plinth/abi"
	"github.com/plinth-dev/plinth/host/store"
)

// KV host calls: the store scoped to this call's tenant and plugin. Guest bytes are only ever the user
// key inside that scope (see store's keyspace).

func (h *hostCall) kvStatus(op string, err error) int32 {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, store.ErrNotFound):
		return int32(abi.StatusNotFound)
	case errors.Is(err, store.ErrConflict):
		return int32(abi.StatusConflict)
	case errors.Is(err, store.ErrNotInt):
		return int32(abi.StatusInvalidArgument)
	case errors.Is(err, store.ErrBadKey):
		return int32(abi.StatusTooLarge)
	case store.IsQuota(err):
		h.s.log.Warn("plugin write refused", "plugin", h.plugin.label, "op", op, "err", err)
		return int32(abi.StatusQuotaExceeded)
	}
	h.s.log.Error("plugin KV call failed", "plugin", h.plugin.label, "op", op, "err", err)
	return int32(abi.StatusInternal)
}

func (h *hostCall) storeOK() bool { return h.s.store != nil }

func ttl(ms int64) (time.Duration, bool) { return time.Duration(ms) * time.Millisecond, ms >= 0 }

// KVGet implements abi.Host.
func (h *hostCall) KVGet(key, buf []byte) int32 {
	if !h.storeOK() {
		return int32(abi.StatusUnavailable)
	}
	v, err := h.s.store.KVGet(h.plugin.tenant, h.plugin.name, key)
	if err != nil {
		return h.kvStatus("get", err)
	}
	return abi.Fit(buf, v)
}

// KVPut implements abi.Host.
func (h *hostCall) KVPut(key, val []byte, ttlMs int64) int32 {
	d, ok := ttl(ttlMs)
	if !ok {
		return int32(abi.StatusInvalidArgument)
	}
	if !h.storeOK() {
		return int32(abi.StatusUnavailable)
	}
	return h.kvStatus("put", h.s.store.KVPut(h.plugin.tenant, h.plugin.name, key, val, d, h.plugin.quota))
}

// KVDelete implements abi.Host.
func (h *hostCall) KVDelete(key []byte) int32 {
	if !h.storeOK() {
		return int32(abi.StatusUnavailable)
	}
	return h.kvStatus("delete", h.s.store.KVDelete(h.plugin.tenant, h.plugin.name, key))
}

// KVIncr implements abi.Host.
func (h *hostCall) KVIncr(key []byte, delta, ttlMs int64, out []byte) int32 {
	d, ok := ttl(ttlMs)
	if !ok || len(out) < 8 {
		return int32(abi.StatusInvalidArgument)
	}
	if !h.storeOK() {
		return int32(abi.StatusUnavailable)
	}
	n, err := h.s.store.KVIncr(h.plugin.tenant, h.plugin.name, key, delta, d, h.plugin.quota)
	if err != nil {
		return h.kvStatus("incr", err)
	}
	binary.LittleEndian.PutUint64(out, uint64(n))
	return 0
}

// KVCAS implements abi.Host.
func (h *hostCall) KVCAS(key, old, new []byte, ttlMs int64) int32 {
	d, ok := ttl(ttlMs)
	if !ok {
		return int32(abi.StatusInvalidArgument)
	}
	if !h.storeOK() {
		return int32(abi.StatusUnavailable)
	}
	return h.kvStatus("cas", h.s.store.KVCAS(h.plugin.tenant, h.plugin.name, key, old, new, d, h.plugin.quota))
}

// KVScan implements abi.Host.
func (h *hostCall) KVScan(req, buf []byte) int32 {
	var r abi.KVScanRequest
	if r.Decode(req) != nil || len(r.Prefix) > abi.MaxKeyLen || len(r.After) > abi.MaxKeyLen {
		return int32(abi.StatusInvalidArgument)
	}
	if !h.storeOK() {
		return int32(abi.StatusUnavailable)
	}
	limit := int(r.Limit)
	if limit == 0 {
		limit = 100
	}
	entries, more, err := h.s.store.KVScan(h.plugin.tenant, h.plugin.name, r.Prefix, r.After, limit, r.KeysOnly)
	if err != nil {
		return h.kvStatus("scan", err)
	}
	res := abi.KVScanResult{More: more, Entries: make([]abi.KVEntry, len(entries))}
	for i, e := range entries {
		res.Entries[i] = abi.KVEntry{Key: e.Key, Value: e.Value}
	}
	// A retry with a bigger buffer repeats the scan; pages are bounded (MaxScanEntries), so that costs
	// little, and it keeps the host stateless between calls.
	return abi.Fit(buf, res.AppendTo(nil))
}
