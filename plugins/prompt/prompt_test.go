package main

import (
	"strings"
	"testing"

	"github.com/plinth-dev/plinth/host/plugintest"
	"github.com/plinth-dev/plinth/sdk"
	"github.com/plinth-dev/plinth/sdk/sdktest"
)

var chunks = []sdk.SearchHit{
	{DocumentID: "doc-1", Filename: "cats.md", Score: 0.9, Text: "Cats sleep up to sixteen hours a day."},
	{DocumentID: "doc-2", Score: 0.5, Text: "  Dogs sleep about twelve hours.  "},
}

func testRAG(t *testing.T, h *sdktest.Host) {
	in := &sdk.PromptInput{
		Messages: []sdk.Message{{Role: "user", Content: "How long do cats sleep?"}},
		History:  []sdk.Message{{Role: "user", Content: "hi"}, {Role: "assistant", Content: "hello"}},
		Chunks:   chunks,
		Model:    "m",
	}
	out, err := h.Prompt(in)
	if err != nil {
		t.Fatal(err)
	}
	want := defaultInstructions + "\n\nSources:\n\n[1] cats.md\nCats sleep up to sixteen hours a day.\n\n[2] doc-2\nDogs sleep about twelve hours."
	if len(out.Messages) != 4 || out.Messages[0].Role != "system" || out.Messages[0].Content != want {
		t.Fatalf("system message:\n%q\nwant\n%q", out.Messages[0].Content, want)
	}
	if out.Messages[1].Content != "hi" || out.Messages[2].Content != "hello" || out.Messages[3].Content != "How long do cats sleep?" {
		t.Fatalf("messages %+v", out.Messages)
	}
	if out.Model != "" || out.Params.Temperature != nil {
		t.Fatalf("model and parameters must be left to the client: %+v", out)
	}
	// Without chunks, history and messages pass through.
	in.Chunks = nil
	if out, err = h.Prompt(in); err != nil || len(out.Messages) != 3 || out.Messages[0].Role != "user" {
		t.Fatalf("%+v %v", out, err)
	}
}

func testConfig(t *testing.T, h *sdktest.Host) {
	h.SetConfigJSON(t, map[string]any{"instructions": "Be brief.", "max_source_chars": 20, "max_history": 1,
		"model": "small", "temperature": 0.1})
	out, err := h.Prompt(&sdk.PromptInput{
		Messages: []sdk.Message{{Role: "user", Content: "q"}},
		History:  []sdk.Message{{Role: "user", Content: "old"}, {Role: "assistant", Content: "recent"}},
		Chunks:   chunks,
	})
	if err != nil {
		t.Fatal(err)
	}
	sys := out.Messages[0].Content
	if !strings.HasPrefix(sys, "Be brief.\n\nSources:\n\n[1] cats.md\n") || strings.Contains(sys, "[2]") || !strings.HasSuffix(sys, "...") {
		t.Fatalf("system message %q", sys)
	}
	if len(out.Messages) != 3 || out.Messages[1].Content != "recent" || out.Model != "small" || *out.Params.Temperature != 0.1 {
		t.Fatalf("%+v", out)
	}
	h.SetConfigJSON(t, map[string]any{"temperature": 5})
	if _, err := h.Prompt(&sdk.PromptInput{}); err == nil || !strings.Contains(err.Error(), "temperature") {
		t.Fatalf("bad config: %v", err)
	}
}

func TestRAG(t *testing.T)        { testRAG(t, sdktest.New()) }
func TestConfig(t *testing.T)     { testConfig(t, sdktest.New()) }
func TestRAGWasm(t *testing.T)    { testRAG(t, plugintest.New(t, ".")) }
func TestConfigWasm(t *testing.T) { testConfig(t, plugintest.New(t, ".")) }
