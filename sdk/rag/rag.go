// Package rag builds retrieval-augmented prompts with numbered sources, for prompt plugins. The host's
// default prompt (when a tenant binds no prompt plugin) and the first-party prompt plugin both use it, so
// a tenant sees the same prompt with or without the plugin.
package rag

import (
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/plinth-dev/plinth/abi"
)

// Sources returns a system message: the instructions, a blank line, "Sources:", then each chunk as a line
// "[n] title" followed by its text, chunks separated by blank lines. Chunk text is budgeted to maxChars
// bytes in all: the best chunks come first, later ones are cut (at a word when possible) or left out.
// A chunk's title is its filename, or its document id.
func Sources(instructions string, chunks []abi.SearchHit, maxChars int) string {
	var b strings.Builder
	b.WriteString(instructions)
	b.WriteString("\n\nSources:")
	left := maxChars
	for i := range chunks {
		if left <= 0 {
			break
		}
		c := &chunks[i]
		title := c.Filename
		if title == "" {
			title = c.DocumentID
		}
		text := strings.TrimSpace(c.Text)
		if len(text) > left {
			text = CutAt(text, left) + "..."
		}
		left -= len(text)
		b.WriteString("\n\n[")
		b.WriteString(strconv.Itoa(i + 1))
		b.WriteString("] ")
		b.WriteString(title)
		b.WriteByte('\n')
		b.WriteString(text)
	}
	return b.String()
}

// CutAt cuts s to at most n bytes, at a space when there is one in the last fifth, never inside a UTF-8
// sequence.
func CutAt(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	s = s[:n]
	if i := strings.LastIndexByte(s, ' '); i > n*4/5 {
		s = s[:i]
	}
	return s
}
