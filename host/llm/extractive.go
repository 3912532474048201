package llm

import (
	"context"
	"io"
	"sort"
	"strconv"
	"strings"
	"unicode"

	"github.com/plinth-dev/plinth/abi"
)

// extractiveProvider is the offline default: it needs no model. Its answer is the sentences of the
// sources that share the most words with the user's last message, each followed by its citation [n],
// streamed word by word. It is deterministic: the same request gives the same answer, byte for byte.
//
// The sources are Request.Sources (the chat endpoint passes the retrieved chunks). A request without
// them (a plugin's llm_open) is answered from the numbered sources in its system messages, in the format
// of the default prompt: a line "[n] title" followed by the source's text.
type extractiveProvider struct{}

// maxExtractiveSentences is how many sentences an answer quotes.
const maxExtractiveSentences = 3

// Open implements Provider.
func (extractiveProvider) Open(ctx context.Context, req *Request) (Upstream, error) {
	answer := ExtractiveAnswer(req)
	u := &sliceUpstream{ctx: ctx}
	words := splitKeepSpace(answer)
	finish := "stop"
	if max := req.Params.MaxTokens; max > 0 {
		var n int64
		for i, w := range words {
			n += EstimateText(w)
			if n > max {
				words, finish = words[:i], "length"
				break
			}
		}
	}
	var out strings.Builder
	for _, w := range words {
		u.events = append(u.events, abi.LLMEvent{Delta: w})
		out.WriteString(w)
	}
	if len(u.events) > 0 {
		u.events[0].Model = ExtractiveModel
	}
	u.events = append(u.events, abi.LLMEvent{FinishReason: finish, Model: ExtractiveModel, Usage: abi.Usage{
		PromptTokens: EstimateMessages(req.Messages), CompletionTokens: EstimateText(out.String())}})
	return u, nil
}

// sliceUpstream replays events, stopping when its context ends.
type sliceUpstream struct {
	ctx    context.Context
	events []abi.LLMEvent
}

func (u *sliceUpstream) Recv() (abi.LLMEvent, error) {
	if err := u.ctx.Err(); err != nil {
		return abi.LLMEvent{}, errorf(KindCanceled, ExtractiveProvider, 0, "request cancelled")
	}
	if len(u.events) == 0 {
		return abi.LLMEvent{}, io.EOF
	}
	ev := u.events[0]
	u.events = u.events[1:]
	return ev, nil
}

func (u *sliceUpstream) Close() error { u.events = nil; return nil }

// splitKeepSpace splits s into words, each with the whitespace that follows it.
func splitKeepSpace(s string) []string {
	var out []string
	start := 0
	inSpace := false
	for i, r := range s {
		sp := unicode.IsSpace(r)
		if inSpace && !sp {
			out = append(out, s[start:i])
			start = i
		}
		inSpace = sp
	}
	if start < len(s) {
		out = append(out, s[start:])
	}
	return out
}

// noSourcesAnswer is the answer when there is nothing to extract from.
const noSourcesAnswer = "I found no retrieved documents to answer from. (" + ExtractiveModel + " quotes retrieved " +
	"passages and does not generate text: search a vector store with the request's \"rag\" option, or " +
	"configure an LLM provider for this tenant.)"

// ExtractiveAnswer is the extractive provider's answer to req.
func ExtractiveAnswer(req *Request) string {
	sources := req.Sources
	var texts []string
	if len(sources) > 0 {
		texts = make([]string, len(sources))
		for i := range sources {
			texts[i] = sources[i].Text
		}
	} else {
		texts = sourcesFromMessages(req.Messages)
	}
	query := ""
	for i := len(req.Messages) - 1; i >= 0; i-- {
		if req.Messages[i].Role == "user" {
			query = req.Messages[i].Content
			break
		}
	}
	type sentence struct {
		text        string
		source, pos int
		score       int
	}
	terms := queryTerms(query)
	var all []sentence
	for si, t := range texts {
		if t == "" {
			continue
		}
		for pi, s := range sentences(t) {
			all = append(all, sentence{text: s, source: si, pos: pi, score: overlap(terms, s)})
		}
	}
	if len(all) == 0 {
		return noSourcesAnswer
	}
	sort.SliceStable(all, func(i, j int) bool {
		if all[i].score != all[j].score {
			return all[i].score > all[j].score
		}
		if all[i].source != all[j].source {
			return all[i].source < all[j].source
		}
		return all[i].pos < all[j].pos
	})
	var picked []sentence
	if all[0].score == 0 {
		// Nothing matches the question: quote the opening of the best-ranked sources.
		seen := map[int]bool{}
		for _, s := range all {
			if s.pos == 0 && !seen[s.source] && len(picked) < 2 {
				seen[s.source] = true
				picked = append(picked, s)
			}
		}
	} else {
		for _, s := range all {
			if s.score == 0 || len(picked) == maxExtractiveSentences {
				break
			}
			picked = append(picked, s)
		}
	}
	var b strings.Builder
	if all[0].score == 0 {
		b.WriteString("The retrieved documents do not answer this directly. The closest passages: ")
	}
	for i, s := range picked {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(s.text)
		b.WriteString(" [")
		b.WriteString(strconv.Itoa(s.source + 1))
		b.WriteByte(']')
	}
	return b.String()
}

// sourcesFromMessages reads numbered sources from system and developer messages: a line starting with
// "[n]" opens source n (the rest of the line is its title), the lines up to the next such line are its
// text. Source n lands at index n-1; numbers without a source stay empty.
func sourcesFromMessages(msgs []abi.Message) []string {
	var out []string
	for _, m := range msgs {
		if m.Role != "system" && m.Role != "developer" {
			continue
		}
		cur := -1
		for _, line := range strings.Split(m.Content, "\n") {
			if n, ok := sourceHeader(line); ok {
				cur = n - 1
				for len(out) <= cur {
					out = append(out, "")
				}
				continue
			}
			if cur >= 0 {
				if out[cur] != "" {
					out[cur] += "\n"
				}
				out[cur] += line
			}
		}
	}
	for i := range out {
		out[i] = strings.TrimSpace(out[i])
	}
	return out
}

// sourceHeader recognises "[n]" at the start of a line.
func sourceHeader(line string) (int, bool) {
	if !strings.HasPrefix(line, "[") {
		return 0, false
	}
	end := strings.IndexByte(line, ']')
	if end < 2 || end > 5 {
		return 0, false
	}
	n, err := strconv.Atoi(line[1:end])
	if err != nil || n < 1 || n > 1000 {
		return 0, false
	}
	return n, true
}

// sentences splits text at sentence ends (. ! ? followed by a space) and at blank or list lines.
func sentences(text string) []string {
	var out []string
	for _, para := range strings.Split(text, "\n") {
		para = strings.TrimSpace(para)
		start := 0
		for i := 0; i < len(para); i++ {
			c := para[i]
			if (c == '.' || c == '!' || c == '?') && (i+1 == len(para) || para[i+1] == ' ') {
				if s := strings.TrimSpace(para[start : i+1]); s != "" {
					out = append(out, s)
				}
				start = i + 1
			}
		}
		if s := strings.TrimSpace(para[start:]); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// stopwords are left out of overlap scores.
var stopwords = map[string]bool{}

func init() {
	for _, w := range strings.Fields(`a an and are as at be but by can do does for from has have how i if in
		is it its me my no not of on or our so that the their them then there these they this to was we
		were what when where which who why will with you your about into than also just more most some such
		tell please`) {
		stopwords[w] = true
	}
}

// terms splits text into lower-cased words without stopwords, with a plural "s" removed.
func terms(text string) []string {
	var out []string
	for _, w := range strings.FieldsFunc(strings.ToLower(text), func(r rune) bool {
		return !unicode.IsLetter(r) && !unicode.IsDigit(r)
	}) {
		if len(w) < 2 || stopwords[w] {
			continue
		}
		if len(w) > 3 && strings.HasSuffix(w, "s") && !strings.HasSuffix(w, "ss") {
			w = w[:len(w)-1]
		}
		out = append(out, w)
	}
	return out
}

func queryTerms(q string) map[string]bool {
	m := map[string]bool{}
	for _, t := range terms(q) {
		m[t] = true
	}
	return m
}

// overlap counts the distinct query terms that occur in s.
func overlap(q map[string]bool, s string) int {
	seen := map[string]bool{}
	for _, t := range terms(s) {
		if q[t] && !seen[t] {
			seen[t] = true
		}
	}
	return len(seen)
}
