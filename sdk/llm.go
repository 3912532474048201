package sdk

import (
	"fmt"
	"iter"
	"strings"

	"github.com/plinth-dev/plinth/abi"
)

type (
	// Message is a chat message.
	Message = abi.Message
	// Params are generation parameters (nil pointers and zeros mean "not set").
	Params = abi.Params
	// LLMRequest is a chat completion to stream through the tenant's providers.
	LLMRequest = abi.LLMRequest
	// LLMEvent is one event of a completion stream.
	LLMEvent = abi.LLMEvent
	// Usage counts tokens.
	Usage = abi.Usage
)

// Float returns a pointer to v, for the optional fields of Params.
func Float(v float64) *float64 { return &v }

// Stream is an open completion stream. Close it when done; the host also closes every stream a hook
// left open when the hook call returns, cancelling the upstream request.
type Stream struct {
	handle int32
	buf    []byte
	done   bool
}

// OpenLLM starts a streamed chat completion.
func OpenLLM(req LLMRequest) (*Stream, error) {
	h := hostLLMOpen(req.AppendTo(nil))
	if h < 0 {
		return nil, fmt.Errorf("llm: %w", abi.Status(h))
	}
	return &Stream{handle: h, buf: make([]byte, 4096)}, nil
}

// Next returns the next event; ok is false at the end of the stream. A stream that failed returns its
// error once as an event with Error set and then ends.
func (s *Stream) Next() (ev LLMEvent, ok bool, err error) {
	if s.done {
		return ev, false, nil
	}
	for {
		n := hostLLMRead(s.handle, s.buf)
		if n < 0 {
			s.done = true
			return ev, false, fmt.Errorf("llm: %w", abi.Status(n))
		}
		if n == 0 {
			s.done = true
			return ev, false, nil
		}
		if int(n) > len(s.buf) {
			s.buf = make([]byte, n)
			continue
		}
		if err := ev.Decode(s.buf[:n]); err != nil {
			s.done = true
			return ev, false, err
		}
		return ev, true, nil
	}
}

// Events iterates over the stream's events, stopping at the first error (yielded with a zero event).
func (s *Stream) Events() iter.Seq2[LLMEvent, error] {
	return func(yield func(LLMEvent, error) bool) {
		for {
			ev, ok, err := s.Next()
			if err != nil {
				yield(ev, err)
				return
			}
			if !ok || !yield(ev, nil) {
				return
			}
		}
	}
}

// Close ends the stream and cancels the upstream request if it is still running.
func (s *Stream) Close() error {
	s.done = true
	if st := hostLLMClose(s.handle); st < 0 && abi.Status(st) != abi.StatusNotFound {
		return fmt.Errorf("llm close: %w", abi.Status(st))
	}
	return nil
}

// Complete runs a completion to its end and returns the text and usage.
func Complete(req LLMRequest) (string, Usage, error) {
	s, err := OpenLLM(req)
	if err != nil {
		return "", Usage{}, err
	}
	defer s.Close()
	var b strings.Builder
	var usage Usage
	for ev, err := range s.Events() {
		if err != nil {
			return b.String(), usage, err
		}
		if ev.Error != "" {
			return b.String(), usage, fmt.Errorf("llm: %s", ev.Error)
		}
		b.WriteString(ev.Delta)
		if ev.Usage != (Usage{}) {
			usage = ev.Usage
		}
	}
	return b.String(), usage, nil
}
