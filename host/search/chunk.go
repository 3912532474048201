package search

import (
	"fmt"
	"unicode"
	"unicode/utf8"
)

// Chunking is a vector store's chunking strategy, in OpenAI's "static" shape. Sizes are in tokens as
// estimated by EstimateTokens (no tokenizer of a particular model is involved).
type Chunking struct {
	// MaxTokens is the largest chunk. Zero means 800 (OpenAI's default); 100 to 4096.
	MaxTokens int `json:"max_chunk_size_tokens"`
	// OverlapTokens is how much consecutive chunks share, at most half of MaxTokens. Zero means none,
	// except in the all-zero strategy, which means OpenAI's default of 800 tokens with 400 of overlap.
	OverlapTokens int `json:"chunk_overlap_tokens"`
}

// Chunking limits and defaults.
const (
	DefaultMaxTokens     = 800
	DefaultOverlapTokens = 400
	MinChunkTokens       = 100
	MaxChunkTokens       = 4096
)

// WithDefaults fills a zero strategy with the defaults (800 tokens, 400 overlap).
func (c Chunking) WithDefaults() Chunking {
	if c.MaxTokens == 0 && c.OverlapTokens == 0 {
		return Chunking{MaxTokens: DefaultMaxTokens, OverlapTokens: DefaultOverlapTokens}
	}
	if c.MaxTokens == 0 {
		c.MaxTokens = DefaultMaxTokens
	}
	return c
}

// Validate reports a strategy outside the limits, with what to change.
func (c Chunking) Validate() error {
	if c.MaxTokens < MinChunkTokens || c.MaxTokens > MaxChunkTokens {
		return fmt.Errorf("max_chunk_size_tokens must be from %d to %d, got %d", MinChunkTokens, MaxChunkTokens, c.MaxTokens)
	}
	if c.OverlapTokens < 0 || c.OverlapTokens > c.MaxTokens/2 {
		return fmt.Errorf("chunk_overlap_tokens must be from 0 to half of max_chunk_size_tokens (%d), got %d", c.MaxTokens/2, c.OverlapTokens)
	}
	return nil
}

// wordTokens estimates the tokens of one word: about one per five bytes, which is close to what BPE
// tokenizers produce for English prose and errs on the long side for code and numbers.
func wordTokens(n int) int { return 1 + (n-1)/5 }

// EstimateTokens estimates the number of model tokens of text.
func EstimateTokens(text string) int {
	n := 0
	for _, w := range words(text) {
		n += wordTokens(w[1] - w[0])
	}
	return n
}

// words returns the byte spans of the whitespace-separated words of text.
func words(text string) [][2]int {
	var out [][2]int
	start := -1
	for i, r := range text {
		if unicode.IsSpace(r) {
			if start >= 0 {
				out = append(out, [2]int{start, i})
				start = -1
			}
		} else if start < 0 {
			start = i
		}
	}
	if start >= 0 {
		out = append(out, [2]int{start, len(text)})
	}
	return out
}

// endsSentence reports whether a word ends a sentence.
func endsSentence(w string) bool {
	r, _ := utf8.DecodeLastRuneInString(w)
	switch r {
	case '.', '!', '?', ':', ';':
		return true
	}
	return false
}

// Split cuts text into chunks of at most c.MaxTokens estimated tokens, consecutive chunks sharing about
// c.OverlapTokens. Chunks are spans of the original text (whitespace inside a chunk is kept). A chunk
// that would end mid-sentence ends at the last sentence end in its final quarter, if there is one. Text
// without words gives no chunks. c must be valid.
func (c Chunking) Split(text string) []string {
	ws := words(text)
	if len(ws) == 0 {
		return nil
	}
	tok := make([]int, len(ws))
	total := 0
	for i, w := range ws {
		tok[i] = wordTokens(w[1] - w[0])
		total += tok[i]
	}
	if total <= c.MaxTokens {
		return []string{text[ws[0][0]:ws[len(ws)-1][1]]}
	}
	var out []string
	start := 0
	for start < len(ws) {
		// Extend to the largest end within the budget (a single overlong word makes a chunk of its own).
		end, sum := start, 0
		for end < len(ws) && (end == start || sum+tok[end] <= c.MaxTokens) {
			sum += tok[end]
			end++
		}
		if end < len(ws) {
			// Prefer a sentence boundary in the last quarter.
			floor, acc := end, 0
			for floor > start+1 && acc+tok[floor-1] <= c.MaxTokens/4 {
				acc += tok[floor-1]
				floor--
			}
			for j := end; j > floor; j-- {
				w := ws[j-1]
				if endsSentence(text[w[0]:w[1]]) {
					end = j
					break
				}
			}
		}
		out = append(out, text[ws[start][0]:ws[end-1][1]])
		if end == len(ws) {
			break
		}
		// The next chunk starts so that it repeats about OverlapTokens of this one, and always advances.
		next, acc := end, 0
		for next > start+1 && acc+tok[next-1] <= c.OverlapTokens {
			acc += tok[next-1]
			next--
		}
		start = next
	}
	return out
}
