package llm

import (
	"unicode"
	"unicode/utf8"

	"github.com/plinth-dev/plinth/abi"
)

// Token estimates. Budgets are reserved before a completion runs, when no tokenizer of the (possibly
// remote, possibly unknown) model is at hand, and settled afterwards with the usage the provider reports.
// The estimate only has to be of the right size and deterministic: BPE tokenizers of current models
// give a common English word one token and split longer words into pieces of about six letters, and
// punctuation and non-Latin characters cost a token or so each.

// EstimateText returns the approximate token count of s.
func EstimateText(s string) int64 {
	var n int64
	run := 0 // bytes in the current word
	flush := func() {
		if run > 0 {
			n += int64(1 + (run-1)/6)
			run = 0
		}
	}
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		i += size
		switch {
		case r < utf8.RuneSelf && (unicode.IsLetter(r) || unicode.IsDigit(r)):
			run++
		case unicode.IsSpace(r):
			flush()
		case r >= utf8.RuneSelf && unicode.IsLetter(r) && unicode.Is(unicode.Latin, r):
			run += size
		default:
			// Punctuation, symbols and non-Latin scripts: about one token per character.
			flush()
			n++
		}
	}
	flush()
	return n
}

// perMessage is the overhead of a chat message (role and separators), as OpenAI documents for its
// chat formats; perRequest primes the assistant's reply.
const (
	perMessage = 4
	perRequest = 3
)

// EstimateMessages returns the approximate prompt tokens of a list of chat messages.
func EstimateMessages(msgs []abi.Message) int64 {
	n := int64(perRequest)
	for i := range msgs {
		n += perMessage + EstimateText(msgs[i].Content)
		if msgs[i].Name != "" {
			n += 1 + EstimateText(msgs[i].Name)
		}
	}
	return n
}
