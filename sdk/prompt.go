package sdk

import (
	"fmt"

	"github.com/plinth-dev/plinth/abi"
)

type (
	// PromptInput is what the prompt hook gets: the client's messages, the conversation history, the
	// retrieved chunks, the route's tags, the requested model and parameters.
	PromptInput = abi.PromptInput
	// PromptOutput is what the prompt hook returns: the messages, model and parameters to send.
	PromptOutput = abi.PromptOutput
	// PromptHandler builds the prompt of a chat completion.
	PromptHandler func(in *PromptInput) (PromptOutput, error)
)

// OnPrompt registers the prompt handler, called for chat completions of tenants that bind this plugin
// to the prompt hook. Call it from init().
func OnPrompt(h PromptHandler) { handlers.prompt = h }

func runPromptHook(input []byte, out []byte) (res []byte) {
	defer func() {
		if p := recover(); p != nil {
			res = encodeError(abi.HookPrompt, out, fmt.Errorf("panic: %v", p))
		}
	}()
	if err := ensureConfigured(); err != nil {
		return encodeError(abi.HookPrompt, out, err)
	}
	if handlers.prompt == nil {
		return encodeError(abi.HookPrompt, out, errNoHandler(abi.HookPrompt))
	}
	var in PromptInput
	if err := in.DecodeString(inputString(input)); err != nil {
		return encodeError(abi.HookPrompt, out, err)
	}
	o, err := handlers.prompt(&in)
	if err != nil {
		o = PromptOutput{Error: err.Error()}
	}
	return o.AppendTo(out)
}
