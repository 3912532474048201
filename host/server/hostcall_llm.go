package server

import (
	"context"
	"errors"
	"sync"

	"github.com/valyala/fasthttp"

	"github.com/plinth-dev/plinth/abi"
	"github.com/plinth-dev/plinth/host/llm"
)

// LLM host calls: a plugin opens completion streams through its tenant's LLM configuration (the same
// models as the chat endpoint), pulls their events with the buffer model, and closes them. Streams
// belong to the call that opened them: hostCall.finish closes those still open when the call returns,
// which cancels their upstream requests, so nothing outlives the exported call. A plugin that stops
// reading costs at most the stream's small read-ahead buffer; the upstream then waits on TCP flow
// control until the call ends.

// maxStreamsPerCall caps the LLM streams one call may open.
const maxStreamsPerCall = 4

// defaultLLM serves servers created without Options.LLM.
var (
	defaultLLMOnce sync.Once
	defaultLLM     *llm.Service
)

// llmHandle is an open stream of a call.
type llmHandle struct {
	st      *llm.Stream
	buf     []byte // the encoding of the event being delivered
	pending bool   // buf holds an event that did not fit the plugin's buffer yet
	ended   bool   // the last event was delivered: reads return 0
}

// llmService returns the server's LLM service.
func (s *Server) llmService() *llm.Service {
	if s.opts.LLM != nil {
		return s.opts.LLM
	}
	defaultLLMOnce.Do(func() { defaultLLM = llm.New(llm.Options{Logger: s.log}) })
	return defaultLLM
}

// streamContext is the context LLM streams of this call run under: the handle call's own context (which
// a client disconnect cancels), or none for hooks that run inside the fasthttp handler, whose context
// outlives the request; finish closes the streams either way.
func (h *hostCall) streamContext() context.Context {
	if _, ok := h.ctx.(*fasthttp.RequestCtx); ok {
		return context.Background()
	}
	return h.ctx
}

// ctxStatus is the status of a host call whose context ended: the deadline passed, or the client left.
func ctxStatus(ctx context.Context) int32 {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return int32(abi.StatusTimeout)
	}
	return int32(abi.StatusClosed)
}

// LLMOpen implements abi.Host.
func (h *hostCall) LLMOpen(req []byte) int32 {
	if h.ctx == nil {
		return int32(abi.StatusUnavailable) // instance initialisation
	}
	var r abi.LLMRequest
	if err := r.Decode(req); err != nil || len(r.Messages) == 0 {
		return int32(abi.StatusInvalidArgument)
	}
	for _, m := range r.Messages {
		switch m.Role {
		case "system", "developer", "user", "assistant":
		default:
			return int32(abi.StatusInvalidArgument)
		}
	}
	open := 0
	for _, l := range h.streams {
		if l != nil {
			open++
		}
	}
	if open >= maxStreamsPerCall {
		return int32(abi.StatusQuotaExceeded)
	}
	trt := h.s.cur.Load().tenants[h.plugin.tenant]
	if trt == nil {
		return int32(abi.StatusUnavailable)
	}
	svc := h.s.llmService()
	tn, err := svc.Tenant(trt.t.ID, trt.t.LLM)
	if err != nil {
		h.s.log.Warn("llm_open: the tenant's LLM configuration is invalid", "plugin", h.plugin.label, "err", err)
		return int32(abi.StatusUnavailable)
	}
	route, ok := tn.Resolve(r.Model)
	if !ok {
		return int32(abi.StatusNotFound)
	}
	st := svc.Open(h.streamContext(), route, llm.Request{Messages: r.Messages, Params: r.Params})
	h.streams = append(h.streams, &llmHandle{st: st})
	return int32(len(h.streams))
}

func (h *hostCall) llmHandle(handle int32) *llmHandle {
	if handle < 1 || int(handle) > len(h.streams) {
		return nil
	}
	return h.streams[handle-1]
}

// LLMRead implements abi.Host: it blocks for the next event and returns its length, writing it when it
// fits; 0 once the last event was delivered.
func (h *hostCall) LLMRead(handle int32, buf []byte) int32 {
	l := h.llmHandle(handle)
	if l == nil {
		return int32(abi.StatusNotFound)
	}
	if !l.pending {
		if l.ended {
			return 0
		}
		// No deadline of its own: the time a call spends blocked here does not count against the plugin's
		// deadline (runtime), and the stream ends by itself at the provider's first-token and idle
		// timeouts, or when the call's context ends.
		select {
		case ev, ok := <-l.st.Events():
			if !ok {
				l.ended = true
				return 0
			}
			if ev.FinishReason != "" || ev.Error != "" {
				l.ended = true
			}
			l.buf, l.pending = ev.AppendTo(l.buf[:0]), true
		case <-h.ctx.Done():
			return ctxStatus(h.ctx)
		}
	}
	n := abi.Fit(buf, l.buf)
	if int(n) <= len(buf) {
		l.pending = false
	}
	return n
}

// LLMClose implements abi.Host.
func (h *hostCall) LLMClose(handle int32) int32 {
	l := h.llmHandle(handle)
	if l == nil {
		return int32(abi.StatusNotFound)
	}
	h.closeStream(int(handle) - 1)
	return 0
}

// closeStream closes the stream of index i (cancelling its upstream request if it still runs) and adds
// the tokens it used to the call's total.
func (h *hostCall) closeStream(i int) {
	st := h.streams[i].st
	st.Close()
	u := st.Usage()
	h.llmTokens += u.PromptTokens + u.CompletionTokens
	h.streams[i] = nil
}

// finish ends what the plugin call left open: it closes its LLM streams (cancelling their upstream
// requests) and ends its response stream. Called when the call returns, before the hostCall is reused.
func (h *hostCall) finish() {
	for i, l := range h.streams {
		if l != nil {
			h.closeStream(i)
		}
	}
	if h.resp != nil {
		h.resp.end()
	}
}
