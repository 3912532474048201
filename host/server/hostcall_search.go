package server

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/plinth-dev/plinth/abi"
	"github.com/plinth-dev/plinth/host/search"
	"github.com/plinth-dev/plinth/host/store"
)

// Search implements abi.Host: one search over the vector stores of the plugin's tenant. The tenant is
// this call's, never anything the guest passes: store ids of other tenants are simply not found. Errors a
// plugin can fix (a missing store, a bad filter, a mode the stores cannot serve) are answered in
// SearchResult.Error; failures of the server are status codes.
func (h *hostCall) Search(req, buf []byte) int32 {
	var r abi.SearchRequest
	if err := r.Decode(req); err != nil {
		return int32(abi.StatusInvalidArgument)
	}
	if h.s.retriever == nil {
		return int32(abi.StatusUnavailable)
	}
	// The guest retries with a bigger buffer when the result does not fit: answer the retry from the
	// result just computed rather than searching again.
	if out, ok := searchResults.get(h, req); ok {
		return abi.Fit(buf, out)
	}
	ctx := h.ctx
	if ctx == nil {
		ctx = context.Background()
	}
	res, err := h.s.retriever.Search(ctx, h.plugin.tenant, &r)
	if err != nil {
		var ie *search.InputError
		var ee *search.EmbedderError
		switch {
		case errors.As(err, &ie):
			res = &abi.SearchResult{Error: ie.Msg}
		case errors.Is(err, store.ErrNotFound):
			res = &abi.SearchResult{Error: "vector store not found"}
		case errors.As(err, &ee):
			res = &abi.SearchResult{Error: ee.Error()}
		case ctx.Err() != nil:
			return int32(abi.StatusUnavailable)
		default:
			h.s.log.Error("plugin search failed", "plugin", h.plugin.label, "request_id", h.requestID, "err", err)
			return int32(abi.StatusInternal)
		}
	}
	out := res.AppendTo(nil)
	if len(out) > len(buf) {
		searchResults.put(h, req, out)
	}
	return abi.Fit(buf, out)
}

// searchResults remembers the last results that did not fit the guest's buffer, by request id, plugin
// and request bytes, for a few seconds: the retry with a bigger buffer then costs no second search.
var searchResults = &resultCache{}

type resultCache struct {
	mu      sync.Mutex
	entries [32]cachedResult
	next    int
}

type cachedResult struct {
	key string
	out []byte
	at  time.Time
}

func (c *resultCache) key(h *hostCall, req []byte) string {
	if h.requestID == "" || h.plugin == nil {
		return ""
	}
	return h.plugin.tenant + "\x00" + h.plugin.name + "\x00" + h.requestID + "\x00" + string(req)
}

func (c *resultCache) get(h *hostCall, req []byte) ([]byte, bool) {
	k := c.key(h, req)
	if k == "" {
		return nil, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.entries {
		e := &c.entries[i]
		if e.key == k && time.Since(e.at) < 5*time.Second {
			out := e.out
			*e = cachedResult{}
			return out, true
		}
	}
	return nil, false
}

func (c *resultCache) put(h *hostCall, req, out []byte) {
	k := c.key(h, req)
	if k == "" {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.entries[c.next] = cachedResult{key: k, out: out, at: time.Now()}
	c.next = (c.next + 1) % len(c.entries)
}
