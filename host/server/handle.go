package server

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/plinth-dev/plinth/abi"
)

// The handle hook, and response streaming from it.
//
// fasthttp streams a response only through RequestCtx.SetBodyStreamWriter, whose writer runs after the
// handler returned (on a goroutine of its own, feeding fasthttp through a pipe). A hook that streams
// must therefore outlive the handler, so every handle call runs on its own goroutine with its own
// context, and the handler waits for whichever comes first:
//
//   - the call's end: an ordinary response, written as before;
//   - the hook's resp_start: the handler sets the status and headers and installs a stream writer,
//     then returns. The writer pumps the chunks of resp_write to the client, flushing each. A failed
//     write or flush, or the client closing the connection (watchDisconnect), ends the stream:
//     resp_write answers StatusClosed from then on and the call's context is cancelled, which also
//     cancels the upstream of any LLM stream the hook opened. The stream ends when the call ends
//     (hostCall.finish).
//
// While a call outlives its handler it pins the server state it started with, so its plugin's pool is
// not closed under it by a reload.

// respStreamKey is the context key of a handle call's *respStream.
type respStreamKey struct{}

// respStream is the streamed response of one handle call: resp_start and resp_write on the call's
// goroutine, the stream writer on fasthttp's.
type respStream struct {
	started chan abi.Response // resp_start's status and headers; capacity 1, sent once
	chunks  chan []byte       // resp_write → writer; unbuffered, so a write is handed over synchronously
	acks    chan error        // writer → resp_write: the chunk was written and flushed (or not)
	gone    chan struct{}     // closed when the writer stopped: the client went away or the call ended
	ended   chan struct{}     // closed by finish: the call is over, the writer ends the body
	cancel  context.CancelFunc
}

func newRespStream(cancel context.CancelFunc) *respStream {
	return &respStream{started: make(chan abi.Response, 1), chunks: make(chan []byte), acks: make(chan error),
		gone: make(chan struct{}), ended: make(chan struct{}), cancel: cancel}
}

// end marks the call over. Called once, by hostCall.finish.
func (rs *respStream) end() { close(rs.ended) }

// pump is the stream writer: it writes and flushes each chunk, until the call ends or a write fails.
// conn is the client connection, captured by the handler: each flush gets a fresh write deadline of
// stall, so a client that stops reading is dropped without bounding the length of the whole stream.
func (rs *respStream) pump(w *bufio.Writer, conn net.Conn, stall time.Duration) {
	defer close(rs.gone)
	// A client that leaves while the plugin writes nothing cancels the call (and its LLM streams) at once.
	stopWatch, _ := watchDisconnect(conn, rs.cancel)
	defer stopWatch()
	for {
		select {
		case data := <-rs.chunks:
			_, err := w.Write(data)
			if err == nil {
				conn.SetWriteDeadline(time.Now().Add(stall))
				err = w.Flush()
			}
			rs.acks <- err
			if err != nil {
				rs.cancel()
				return
			}
		case <-rs.ended:
			return
		}
	}
}

// serveHandle calls a plugin's handle hook and writes its response, or streams it (see above).
func (s *Server) serveHandle(rc *reqCtx, p *pluginRT) {
	// The call may outlive rc, which is pooled when the handler returns: it gets its own copies.
	input := bytes.Clone(rc.encodeRequest(true, true))
	rid := string(rc.rid)
	// The call's own context: cancelled when the client leaves a streamed response. The plugin's
	// deadline is the runtime's to enforce: it bounds the plugin's running time, not the time it spends
	// blocked in llm_read or resp_write.
	ctx, cancel := context.WithCancel(context.Background())
	rs := newRespStream(cancel)
	type result struct {
		out []byte
		err error
	}
	done := make(chan result, 1)
	st := rc.st
	// The request's token reservations are settled with what the plugin's LLM streams used, when the
	// call ends (the streams end with it).
	ratelimit, reservations := rc.ratelimit, rc.reservations
	rc.reservations = nil
	st.inflight.Add(1) // released when the call ends; see acquire and retire
	go func() {
		defer st.release()
		out, tokens, err := s.callCountingTokens(context.WithValue(ctx, respStreamKey{}, rs), p, abi.HookHandle, rid, input, nil)
		cancel()
		s.settle(ratelimit, reservations, tokens)
		done <- result{out, err}
	}()
	var head abi.Response
	select {
	case r := <-done:
		select {
		case head = <-rs.started: // started, wrote nothing and returned
			s.logStreamedEnd(p, rid, r.out, r.err)
		default:
			s.writeHandleResult(rc, p, r.out, r.err)
			return
		}
	case head = <-rs.started:
		go func() {
			r := <-done
			s.logStreamedEnd(p, rid, r.out, r.err)
		}()
	}
	writeResponse(rc.ctx, &abi.Response{Status: head.Status, Headers: head.Headers})
	conn := rc.ctx.Conn()
	stall := s.opts.WriteTimeout
	// A deadline set by the handler keeps fasthttp from applying WriteTimeout to the whole stream;
	// the writer moves it forward before each flush.
	rc.ctx.SetWriteDeadline(time.Now().Add(stall))
	rc.ctx.Response.ImmediateHeaderFlush = true
	rc.ctx.SetBodyStreamWriter(func(w *bufio.Writer) { rs.pump(w, conn, stall) })
}

// writeHandleResult writes the response of a handle call that did not stream.
func (s *Server) writeHandleResult(rc *reqCtx, p *pluginRT, out []byte, err error) {
	if err != nil {
		writeError(rc.ctx, pluginError(err))
		return
	}
	var r abi.Response
	if err := r.Decode(out); err != nil {
		writeError(rc.ctx, abiViolation(p, abi.HookHandle, err))
		return
	}
	if r.Error != "" {
		writeError(rc.ctx, handlerError(p.label, "handle", r.Error))
		return
	}
	if r.Streamed {
		writeError(rc.ctx, abiViolation(p, abi.HookHandle, errNotStreamed))
		return
	}
	writeResponse(rc.ctx, &r)
}

type handleError string

func (e handleError) Error() string { return string(e) }

const errNotStreamed = handleError("the result says the response was streamed, but resp_start was never called")

// logStreamedEnd reports how a streaming handle call ended: its status is already sent, so a failure
// can only be logged (the client sees the body end).
func (s *Server) logStreamedEnd(p *pluginRT, rid string, out []byte, err error) {
	if err != nil {
		s.log.Warn("streaming handle call failed after its response started", "plugin", p.label,
			"request_id", rid, "err", pluginError(err).Message)
		return
	}
	var r abi.Response
	if err := r.Decode(out); err != nil {
		s.log.Warn("streaming handle call returned an invalid result", "plugin", p.label, "request_id", rid, "err", err)
		return
	}
	if r.Error != "" {
		s.log.Warn("streaming handle call returned an error after its response started", "plugin", p.label,
			"request_id", rid, "err", r.Error)
	}
}

// RespStart implements abi.Host: the handle call starts streaming its response.
func (h *hostCall) RespStart(resp []byte) int32 {
	if h.ctx == nil {
		return int32(abi.StatusDenied)
	}
	rs, _ := h.ctx.Value(respStreamKey{}).(*respStream)
	if rs == nil {
		return int32(abi.StatusDenied) // not a handle call
	}
	if h.resp != nil {
		return int32(abi.StatusInvalidArgument) // once per call
	}
	var r abi.Response
	if err := r.Decode(resp); err != nil {
		return int32(abi.StatusInvalidArgument)
	}
	if r.Status == 0 {
		r.Status = fasthttp.StatusOK
	}
	if r.Status < 100 || r.Status > 599 {
		return int32(abi.StatusInvalidArgument)
	}
	h.resp = rs
	rs.started <- abi.Response{Status: r.Status, Headers: r.Headers}
	return 0
}

// RespWrite implements abi.Host: the data is written and flushed to the client before it returns.
func (h *hostCall) RespWrite(data []byte) int32 {
	rs := h.resp
	if rs == nil {
		return int32(abi.StatusInvalidArgument) // resp_start first
	}
	if len(data) == 0 {
		return 0
	}
	select {
	case rs.chunks <- data:
		// The writer owns data until it acks; it always does, bounded by the connection's write deadline.
		if err := <-rs.acks; err != nil {
			return int32(abi.StatusClosed)
		}
		return 0
	case <-rs.gone:
		return int32(abi.StatusClosed)
	case <-h.ctx.Done():
		return ctxStatus(h.ctx)
	}
}
