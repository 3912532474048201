package sdktest

import (
	"github.com/plinth-dev/plinth/abi"
	"github.com/plinth-dev/plinth/sdk"
)

// SearchFunc answers a plugin's search host call in tests.
type SearchFunc func(req *abi.SearchRequest) ([]abi.SearchHit, error)

// LLMFunc answers a plugin's llm_open in tests with the events the stream will deliver.
type LLMFunc func(req *abi.LLMRequest) ([]abi.LLMEvent, error)

// OnSearch sets what the search host call returns. Without it, search fails with StatusUnavailable.
func (h *Host) OnSearch(f SearchFunc) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.search = f
}

// OnLLM sets the completions llm_open streams. Without it, llm_open fails with StatusUnavailable.
func (h *Host) OnLLM(f LLMFunc) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.llm = f
}

// Search implements abi.Host.
func (h *Host) Search(req, buf []byte) int32 {
	var r abi.SearchRequest
	if err := r.Decode(req); err != nil || len(r.StoreIDs) == 0 {
		return int32(abi.StatusInvalidArgument)
	}
	h.mu.Lock()
	f := h.search
	h.mu.Unlock()
	if f == nil {
		return int32(abi.StatusUnavailable)
	}
	hits, err := f(&r)
	res := abi.SearchResult{Hits: hits}
	if err != nil {
		res = abi.SearchResult{Error: err.Error()}
	}
	return abi.Fit(buf, res.AppendTo(nil))
}

// LLMOpen implements abi.Host.
func (h *Host) LLMOpen(req []byte) int32 {
	var r abi.LLMRequest
	if err := r.Decode(req); err != nil {
		return int32(abi.StatusInvalidArgument)
	}
	h.mu.Lock()
	f := h.llm
	h.mu.Unlock()
	if f == nil {
		return int32(abi.StatusUnavailable)
	}
	events, err := f(&r)
	if err != nil {
		events = []abi.LLMEvent{{Error: err.Error()}}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.nextStream++
	if h.streams == nil {
		h.streams = map[int32][]abi.LLMEvent{}
	}
	h.streams[h.nextStream] = events
	return h.nextStream
}

// LLMRead implements abi.Host.
func (h *Host) LLMRead(handle int32, buf []byte) int32 {
	h.mu.Lock()
	defer h.mu.Unlock()
	events, ok := h.streams[handle]
	if !ok {
		return int32(abi.StatusNotFound)
	}
	if len(events) == 0 {
		return 0
	}
	enc := events[0].AppendTo(nil)
	if len(enc) <= len(buf) {
		copy(buf, enc)
		h.streams[handle] = events[1:]
	}
	return int32(len(enc))
}

// LLMClose implements abi.Host.
func (h *Host) LLMClose(handle int32) int32 {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.streams[handle]; !ok {
		return int32(abi.StatusNotFound)
	}
	delete(h.streams, handle)
	return 0
}

// OpenStreams returns how many LLM streams are open: a plugin that forgets to close one shows here.
func (h *Host) OpenStreams() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.streams)
}

// RespStart implements abi.Host: it records the streamed response's status and headers.
func (h *Host) RespStart(resp []byte) int32 {
	var r abi.Response
	if err := r.Decode(resp); err != nil {
		return int32(abi.StatusInvalidArgument)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.streamed != nil {
		return int32(abi.StatusInvalidArgument)
	}
	h.streamed = &abi.Response{Status: r.Status, Headers: append([]abi.Pair(nil), r.Headers...)}
	return 0
}

// RespWrite implements abi.Host: it appends to the recorded streamed body.
func (h *Host) RespWrite(data []byte) int32 {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.streamed == nil {
		return int32(abi.StatusInvalidArgument)
	}
	h.streamed.Body = append(h.streamed.Body, data...)
	return 0
}

// StreamedResponse returns the response a handle hook streamed (nil if none), and forgets it.
func (h *Host) StreamedResponse() *abi.Response {
	h.mu.Lock()
	defer h.mu.Unlock()
	r := h.streamed
	h.streamed = nil
	return r
}

// Prompt runs the plugin's prompt hook.
func (h *Host) Prompt(in *sdk.PromptInput) (sdk.PromptOutput, error) {
	var o sdk.PromptOutput
	out, err := h.call(abi.HookPrompt, in.AppendTo(nil))
	if err != nil {
		return o, err
	}
	if err := o.Decode(out); err != nil {
		return o, err
	}
	return o, resultErr(o.Error)
}
