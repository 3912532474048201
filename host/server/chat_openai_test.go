package server

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/packages/ssestream"

	"github.com/plinth-dev/plinth/host/llm"
	"github.com/plinth-dev/plinth/host/llm/llmtest"
)

// testOpenAIClient drives the chat endpoint with the official openai-go client pointed at the server's
// base URL, streaming and not, and checks that failures surface as the client's typed errors.
func testOpenAIClient(t *testing.T, env *chatEnv) {
	env.up.SetScript(nil)
	ctx := context.Background()
	client := func(key string) openai.Client {
		return openai.NewClient(option.WithBaseURL(env.url+"/v1/"), option.WithAPIKey(key), option.WithMaxRetries(0))
	}
	d := client(keyD)
	answer := strings.Join(llmtest.DefaultTokens, "")
	params := openai.ChatCompletionNewParams{
		Model:       "fake",
		Messages:    []openai.ChatCompletionMessageParamUnion{openai.SystemMessage("Be brief."), openai.UserMessage("Do cats sleep?")},
		Temperature: openai.Float(0.3),
	}
	rag := option.WithJSONSet("rag", map[string]any{"vector_store_ids": []string{"vs_pets"}, "max_num_results": 1})

	// Not streamed.
	res, err := d.Chat.Completions.New(ctx, params, rag)
	if err != nil {
		t.Fatal(err)
	}
	if res.Object != "chat.completion" || res.Model != "fake" || len(res.Choices) != 1 || res.Choices[0].Message.Content != answer ||
		res.Choices[0].FinishReason != "stop" || res.Usage.TotalTokens != 17 || !strings.HasPrefix(res.ID, "chatcmpl-") {
		t.Fatalf("completion %+v", res)
	}
	var cites []citationJSON
	if err := json.Unmarshal([]byte(res.JSON.ExtraFields["citations"].Raw()), &cites); err != nil || len(cites) != 1 || cites[0].Filename != "cats.md" {
		t.Fatalf("citations %q: %v", res.JSON.ExtraFields["citations"].Raw(), err)
	}

	// Streamed, with usage.
	params.StreamOptions.IncludeUsage = openai.Bool(true)
	stream := d.Chat.Completions.NewStreaming(ctx, params, rag)
	var text strings.Builder
	var kinds []string
	for stream.Next() {
		c := stream.Current()
		switch {
		case c.JSON.ExtraFields["citations"].Raw() != "":
			kinds = append(kinds, "citations")
		case len(c.Choices) == 0 && c.Usage.TotalTokens > 0:
			kinds = append(kinds, "usage")
			if c.Usage.TotalTokens != 17 {
				t.Errorf("usage %+v", c.Usage)
			}
		case len(c.Choices) == 1 && c.Choices[0].FinishReason != "":
			kinds = append(kinds, "finish")
		case len(c.Choices) == 0:
			t.Fatalf("unexpected chunk %s (extra %v)", c.RawJSON(), c.JSON.ExtraFields)
		default:
			text.WriteString(c.Choices[0].Delta.Content)
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if text.String() != answer || strings.Join(kinds, ",") != "finish,citations,usage" {
		t.Fatalf("stream %q, tail %v", text.String(), kinds)
	}

	// The extractive default, streamed to the client library.
	a := client(keyA)
	stream = a.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("How long do cats sleep?")}}, rag)
	text.Reset()
	model := ""
	for stream.Next() {
		c := stream.Current()
		model = c.Model
		if len(c.Choices) > 0 {
			text.WriteString(c.Choices[0].Delta.Content)
		}
	}
	if stream.Err() != nil || model != llm.ExtractiveModel || text.String() != "Cats sleep up to sixteen hours a day. [1]" {
		t.Fatalf("extractive stream: %v %q %q", stream.Err(), model, text.String())
	}

	// Errors before the response are the client's typed errors, with our status, type, code and param.
	apiError := func(err error) *openai.Error {
		t.Helper()
		var e *openai.Error
		if !errors.As(err, &e) {
			t.Fatalf("error %v (%T) is not an *openai.Error", err, err)
		}
		return e
	}
	_, err = d.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "gpt-9",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("x")}})
	if e := apiError(err); e.StatusCode != 404 || e.Code != "model_not_found" || e.Param != "model" || e.Type != "invalid_request_error" {
		t.Fatalf("unknown model: %d %+v", e.StatusCode, e)
	}
	_, err = d.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "fake", Temperature: openai.Float(7),
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("x")}})
	if e := apiError(err); e.StatusCode != 400 || e.Param != "temperature" {
		t.Fatalf("bad temperature: %+v", e)
	}
	wrong := client("pk-wrong")
	_, err = wrong.Chat.Completions.New(ctx, params)
	if e := apiError(err); e.StatusCode != 401 || e.Type != "authentication_error" {
		t.Fatalf("bad key: %+v", e)
	}
	_, err = a.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{MaxTokens: openai.Int(5000),
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("x")}})
	if e := apiError(err); e.StatusCode != 429 || e.Type != "rate_limit_error" {
		t.Fatalf("over the token budget: %+v", e)
	}
	env.up.SetScript(func(int, *llmtest.Request) llmtest.Behavior { return llmtest.Behavior{Status: 503} })
	stream = d.Chat.Completions.NewStreaming(ctx, params)
	if stream.Next() {
		t.Fatal("a failed upstream produced a chunk")
	}
	if e := apiError(stream.Err()); e.StatusCode != 502 || e.Code != "provider_error" {
		t.Fatalf("upstream down: %+v", e)
	}
	// After the response started, a failure is an error event: the client library's stream error.
	env.up.SetScript(func(int, *llmtest.Request) llmtest.Behavior { return llmtest.Behavior{Fail: true, FailAfter: 2} })
	stream = d.Chat.Completions.NewStreaming(ctx, params)
	text.Reset()
	for stream.Next() {
		if c := stream.Current(); len(c.Choices) > 0 {
			text.WriteString(c.Choices[0].Delta.Content)
		}
	}
	var streamErr *ssestream.StreamError
	if !errors.As(stream.Err(), &streamErr) || text.String() != "Hello from" || !strings.Contains(string(streamErr.Event.Data), `"type":"server_error"`) {
		t.Fatalf("midway failure: %v (%T), text %q", stream.Err(), stream.Err(), text.String())
	}
}
