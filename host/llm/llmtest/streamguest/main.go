// Command streamguest is a fixture plugin for the LLM and response-streaming host calls. Its route hook
// sends /v1/guest/* to its handle hook, which does what the path says:
//
//	/v1/guest/complete   sdk.Complete on the request body as the user message; answers the text
//	/v1/guest/sse        streams the completion to the client as server-sent events, one per token
//	/v1/guest/abandon    reads one event and returns without closing the stream
//	/v1/guest/noread     opens a stream and returns at once
//	/v1/guest/raw        streams three plain-text chunks, then returns
//	/v1/guest/twice      calls StartResponse twice
//
// The query string names the model ("" for the tenant's default).
//
// Its prompt hook replaces a last user message that starts with "rewrite:" by a completion of its own (an
// LLM call from the prompt hook) and passes other prompts through.
package main

import (
	"errors"
	"strings"

	"github.com/plinth-dev/plinth/sdk"
)

func request(req *sdk.Request) sdk.LLMRequest {
	return sdk.LLMRequest{Model: req.Query, Messages: []sdk.Message{{Role: "user", Content: string(req.Body)}}}
}

func handle(req *sdk.Request) (sdk.Response, error) {
	switch strings.TrimPrefix(req.Path, "/v1/guest/") {
	case "complete":
		text, usage, err := sdk.Complete(request(req))
		if err != nil {
			return sdk.Response{}, err
		}
		return sdk.Response{Status: 200, Body: []byte(text), Headers: []sdk.Pair{
			{Key: "x-completion-tokens", Value: itoa(usage.CompletionTokens)}}}, nil
	case "sse":
		s, err := sdk.OpenLLM(request(req))
		if err != nil {
			return sdk.Response{}, err
		}
		defer s.Close()
		w, err := sdk.StartResponse(200, sdk.Pair{Key: "content-type", Value: "text/event-stream"})
		if err != nil {
			return sdk.Response{}, err
		}
		for ev, err := range s.Events() {
			if err != nil {
				w.Event("error: " + err.Error())
				break
			}
			var werr error
			switch {
			case ev.Error != "":
				werr = w.Event("error: " + ev.Error)
			case ev.FinishReason != "":
				werr = w.Event("finish: " + ev.FinishReason)
			default:
				werr = w.Event(ev.Delta)
			}
			if errors.Is(werr, sdk.ErrClientGone) {
				sdk.Logf("client gone")
				return sdk.Streamed(), nil
			}
		}
		w.Event("[DONE]")
		return sdk.Streamed(), nil
	case "abandon":
		s, err := sdk.OpenLLM(request(req))
		if err != nil {
			return sdk.Response{}, err
		}
		ev, _, err := s.Next()
		if err != nil {
			return sdk.Response{}, err
		}
		return sdk.Response{Status: 200, Body: []byte(ev.Delta)}, nil
	case "noread":
		if _, err := sdk.OpenLLM(request(req)); err != nil {
			return sdk.Response{}, err
		}
		return sdk.Response{Status: 200, Body: []byte("opened")}, nil
	case "raw":
		w, err := sdk.StartResponse(201, sdk.Pair{Key: "x-kind", Value: "raw"}, sdk.Pair{Key: "content-length", Value: "1"})
		if err != nil {
			return sdk.Response{}, err
		}
		for _, part := range []string{"one\n", "two\n", "three\n"} {
			if _, err := w.Write([]byte(part)); err != nil {
				return sdk.Streamed(), nil
			}
		}
		return sdk.Streamed(), nil
	case "twice":
		if _, err := sdk.StartResponse(200); err != nil {
			return sdk.Response{}, err
		}
		_, err := sdk.StartResponse(200)
		w := &sdk.ResponseWriter{}
		w.Write([]byte("second start: " + errString(err)))
		return sdk.Streamed(), nil
	}
	return sdk.Response{Status: 404, Body: []byte("no such guest path")}, nil
}

func errString(err error) string {
	if err == nil {
		return "ok"
	}
	return err.Error()
}

func itoa(v int64) string {
	if v == 0 {
		return "0"
	}
	var b []byte
	for v > 0 {
		b = append([]byte{byte('0' + v%10)}, b...)
		v /= 10
	}
	return string(b)
}

func prompt(in *sdk.PromptInput) (sdk.PromptOutput, error) {
	msgs := in.Messages
	if n := len(msgs); n > 0 {
		if q, ok := strings.CutPrefix(msgs[n-1].Content, "rewrite:"); ok {
			text, _, err := sdk.Complete(sdk.LLMRequest{Messages: []sdk.Message{{Role: "user", Content: "Rewrite:" + q}}})
			if err != nil {
				return sdk.PromptOutput{}, err
			}
			msgs = append(msgs[:n-1:n-1], sdk.Message{Role: "user", Content: text})
		}
	}
	return sdk.PromptOutput{Messages: msgs}, nil
}

func init() {
	sdk.OnPrompt(prompt)
	sdk.OnRoute(func(req *sdk.Request) (sdk.Route, error) {
		if strings.HasPrefix(req.Path, "/v1/guest/") {
			return sdk.ToPlugin("guest"), nil
		}
		return sdk.Default(), nil
	})
	sdk.OnHandle(handle)
}

func main() {}
