package server

import (
	"context"
	"encoding/binary"
	"log/slog"
	"time"

	"github.com/plinth-dev/plinth/abi"
	"github.com/plinth-dev/plinth/abi/gcra"
)

// hostCall serves the host calls of one plugin call (abi.Host). Everything a plugin reaches is scoped
// here by the tenant and plugin this hostCall was made for, never by anything the guest passes, which is
// what keeps tenants apart: guest bytes only ever become the tail of a key whose head is fixed.
type hostCall struct {
	s         *Server
	plugin    *pluginRT
	ctx       context.Context
	requestID string
	keyBuf    []byte // scratch for scoped keys

	// streams are the LLM streams the plugin opened in this call, by handle-1 (nil once closed);
	// finish closes those still open. resp is the handle call's response stream once resp_start ran.
	// Both are used by the call's goroutine only (one call at a time per instance).
	streams []*llmHandle
	resp    *respStream
	// llmTokens counts the tokens the call's closed LLM streams used (llm.Stream.Usage), for the
	// request's token budgets.
	llmTokens int64
}

var _ abi.Host = (*hostCall)(nil)

// scopedKey returns the limiter key for a plugin's key: length-prefixed tenant and plugin names, then the
// plugin's bytes. The length prefixes make the mapping injective, so no key of one (tenant, plugin) can
// equal a key of another.
func (h *hostCall) scopedKey(key []byte) []byte {
	b := h.keyBuf[:0]
	b = binary.AppendUvarint(b, uint64(len(h.plugin.tenant)))
	b = append(b, h.plugin.tenant...)
	b = binary.AppendUvarint(b, uint64(len(h.plugin.name)))
	b = append(b, h.plugin.name...)
	b = append(b, key...)
	h.keyBuf = b
	return b
}

// Log implements abi.Host: plugin log lines go to the server log with the plugin and request attached.
func (h *hostCall) Log(level int32, msg []byte) {
	const maxLine = 4096
	if len(msg) > maxLine {
		msg = msg[:maxLine]
	}
	ctx := h.ctx
	if ctx == nil {
		ctx = context.Background()
	}
	h.s.log.Log(ctx, slog.Level(level), string(msg), "plugin", h.plugin.label, "request_id", h.requestID,
		"source", "plugin")
}

// Config implements abi.Host.
func (h *hostCall) Config(buf []byte) int32 { return abi.Fit(buf, h.plugin.config) }

// RLTake implements abi.Host.
func (h *hostCall) RLTake(key []byte, limit, periodMs, burst, cost int64, out []byte) int32 {
	p := gcra.Params{Limit: limit, Period: time.Duration(periodMs) * time.Millisecond, Burst: burst, Cost: cost}
	if !p.Valid() || len(key) > abi.MaxKeyLen {
		return int32(abi.StatusInvalidArgument)
	}
	r := h.s.limiter.Take(h.scopedKey(key), p)
	abi.PutRLResult(out, r.ABI())
	return 0
}
