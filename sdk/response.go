package sdk

import (
	"errors"
	"fmt"

	"github.com/plinth-dev/plinth/abi"
)

// ErrClientGone is returned by ResponseWriter.Write once the client has disconnected.
var ErrClientGone = errors.New("client disconnected")

// ResponseWriter streams a response to the client from a handle hook: each Write reaches the client
// at once (server-sent events, for example). Return Streamed() from the handler when done.
type ResponseWriter struct{}

// StartResponse sends the status and headers of a streamed response. It may be called once per
// handle call, before any Write.
func StartResponse(status int, headers ...Pair) (*ResponseWriter, error) {
	r := Response{Status: int32(status), Headers: headers}
	if st := hostRespStart(r.AppendTo(nil)); st < 0 {
		return nil, fmt.Errorf("start response: %w", abi.Status(st))
	}
	return &ResponseWriter{}, nil
}

// Write sends p to the client and flushes it. After the client has gone it returns ErrClientGone:
// stop producing output then.
func (*ResponseWriter) Write(p []byte) (int, error) {
	st := hostRespWrite(p)
	if abi.Status(st) == abi.StatusClosed {
		return 0, ErrClientGone
	}
	if st < 0 {
		return 0, fmt.Errorf("write response: %w", abi.Status(st))
	}
	return len(p), nil
}

// Event writes one server-sent event with the given data (one "data:" line per line of data).
func (w *ResponseWriter) Event(data string) error {
	b := make([]byte, 0, len(data)+8)
	start := 0
	for i := 0; i <= len(data); i++ {
		if i == len(data) || data[i] == '\n' {
			b = append(b, "data: "...)
			b = append(b, data[start:i]...)
			b = append(b, '\n')
			start = i + 1
		}
	}
	b = append(b, '\n')
	_, err := w.Write(b)
	return err
}

// Streamed is the Response a handler returns after streaming its response with a ResponseWriter.
func Streamed() Response { return Response{Streamed: true} }
