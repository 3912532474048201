// Command prompt is Plinth's first-party prompt plugin: retrieval-augmented generation with numbered
// citations. Bound to a tenant's prompt hook, it builds the messages of every chat completion: a system
// message with the instructions and the retrieved chunks numbered [1], [2]... in the order the host
// passes them (the numbers the host's citations use), then the conversation's most recent history, then
// the client's messages. Without retrieved chunks the history and the client's messages pass through.
//
// Its output is the host's default prompt, byte for byte (host/llm.BuildPrompt): a tenant that wants a
// different prompt copies this plugin and changes it.
//
// Configuration (JSON, every field optional):
//
//	{
//	  "instructions": "Answer using the numbered sources below ...",
//	  "max_source_chars": 12000,
//	  "max_history": 20,
//	  "model": "",
//	  "temperature": 0.2
//	}
//
// "model" and "temperature", when set, replace the client's choice for every completion.
package main

import (
	"errors"

	"github.com/plinth-dev/plinth/sdk"
	"github.com/plinth-dev/plinth/sdk/rag"
)

// defaultInstructions open the system message (the same text as the host's default prompt).
const defaultInstructions = "Answer the user's question using the numbered sources below. Cite the sources " +
	"you use with their numbers in square brackets, like [1] or [2][3]. If the sources do not contain the " +
	"answer, say so instead of guessing."

type config struct {
	Instructions   string   `json:"instructions"`
	MaxSourceChars int      `json:"max_source_chars"`
	MaxHistory     int      `json:"max_history"`
	Model          string   `json:"model"`
	Temperature    *float64 `json:"temperature"`
}

// cfg is the instance's configuration, set by configure before any hook call.
var cfg config

func configure([]byte) error {
	c := config{Instructions: defaultInstructions, MaxSourceChars: 12000, MaxHistory: 20}
	if err := sdk.ConfigJSON(&c); err != nil {
		return err
	}
	if c.MaxSourceChars < 0 || c.MaxHistory < 0 {
		return errors.New("prompt config: max_source_chars and max_history must not be negative")
	}
	if c.Temperature != nil && (*c.Temperature < 0 || *c.Temperature > 2) {
		return errors.New("prompt config: temperature must be from 0 to 2")
	}
	if c.Instructions == "" {
		c.Instructions = defaultInstructions
	}
	if c.MaxSourceChars == 0 {
		c.MaxSourceChars = 12000
	}
	if c.MaxHistory == 0 {
		c.MaxHistory = 20
	}
	cfg = c
	return nil
}

func prompt(in *sdk.PromptInput) (sdk.PromptOutput, error) {
	var msgs []sdk.Message
	if len(in.Chunks) > 0 {
		msgs = append(msgs, sdk.Message{Role: "system", Content: rag.Sources(cfg.Instructions, in.Chunks, cfg.MaxSourceChars)})
	}
	history := in.History
	if len(history) > cfg.MaxHistory {
		history = history[len(history)-cfg.MaxHistory:]
	}
	msgs = append(msgs, history...)
	msgs = append(msgs, in.Messages...)
	out := sdk.PromptOutput{Messages: msgs, Model: cfg.Model}
	out.Params.Temperature = cfg.Temperature
	return out, nil
}

func init() {
	sdk.OnConfigure(configure)
	sdk.OnPrompt(prompt)
}

func main() {}
