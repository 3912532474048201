package llm

import (
	"strconv"
	"strings"

	"github.com/plinth-dev/plinth/abi"
	"github.com/plinth-dev/plinth/sdk/rag"
)

// The default prompt: retrieval-augmented generation with numbered citations. The host uses it for
// tenants that bind no prompt plugin; the first-party prompt plugin (plugins/prompt) builds the same
// messages from the same input, and is the place to start for a custom prompt.
//
// The messages are: one system message with the instructions and the retrieved chunks numbered [1],
// [2]... in the order of PromptInput.Chunks (only when there are chunks), then the conversation's
// history, then the client's messages. Citations in responses refer to the same numbers: a prompt that
// numbers chunks differently makes them wrong.

// DefaultInstructions open the system message of the default prompt.
const DefaultInstructions = "Answer the user's question using the numbered sources below. Cite the sources " +
	"you use with their numbers in square brackets, like [1] or [2][3]. If the sources do not contain the " +
	"answer, say so instead of guessing."

// Defaults of PromptOptions.
const (
	DefaultMaxSourceChars = 12000
	DefaultMaxHistory     = 20
)

// PromptOptions tune BuildPrompt. Zero values take the defaults.
type PromptOptions struct {
	// Instructions open the system message. Default DefaultInstructions.
	Instructions string
	// MaxSourceChars caps the bytes of chunk text in the prompt; chunks past it are cut or left out
	// (best chunks come first). Default DefaultMaxSourceChars.
	MaxSourceChars int
	// MaxHistory is how many of the most recent history messages are kept. Default DefaultMaxHistory.
	MaxHistory int
}

// BuildPrompt returns the default prompt for in.
func BuildPrompt(in *abi.PromptInput, o PromptOptions) abi.PromptOutput {
	if o.Instructions == "" {
		o.Instructions = DefaultInstructions
	}
	if o.MaxSourceChars <= 0 {
		o.MaxSourceChars = DefaultMaxSourceChars
	}
	if o.MaxHistory <= 0 {
		o.MaxHistory = DefaultMaxHistory
	}
	var msgs []abi.Message
	if len(in.Chunks) > 0 {
		msgs = append(msgs, abi.Message{Role: "system", Content: SourcesMessage(o.Instructions, in.Chunks, o.MaxSourceChars)})
	}
	history := in.History
	if len(history) > o.MaxHistory {
		history = history[len(history)-o.MaxHistory:]
	}
	msgs = append(msgs, history...)
	msgs = append(msgs, in.Messages...)
	return abi.PromptOutput{Messages: msgs}
}

// SourcesMessage is the system message text of the default prompt (see sdk/rag.Sources).
func SourcesMessage(instructions string, chunks []abi.SearchHit, maxChars int) string {
	return rag.Sources(instructions, chunks, maxChars)
}

// CitedSources returns the source numbers cited as [n] in text (1-based), in order of first citation.
// "[1][2]" and "[1, 2]" both cite 1 and 2.
func CitedSources(text string, max int) []int {
	var out []int
	seen := map[int]bool{}
	for i := 0; i < len(text); i++ {
		if text[i] != '[' {
			continue
		}
		end := strings.IndexByte(text[i:], ']')
		if end < 0 || end > 40 {
			continue
		}
		inner := text[i+1 : i+end]
		ok := true
		var nums []int
		for _, part := range strings.Split(inner, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(part))
			if err != nil || n < 1 || n > max {
				ok = false
				break
			}
			nums = append(nums, n)
		}
		if !ok {
			continue
		}
		for _, n := range nums {
			if !seen[n] {
				seen[n] = true
				out = append(out, n)
			}
		}
		i += end
	}
	return out
}
