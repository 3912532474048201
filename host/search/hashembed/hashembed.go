// Package hashembed is a deterministic stand-in for an embedding model: an OpenAI-compatible
// POST /embeddings handler whose vectors are feature-hashed bags of words and character trigrams. It
// knows no semantics (texts are near when they share words), so it measures the machinery — HTTP
// batching, vector indexes, fusion, throughput — never retrieval quality. Tests and benchmarks serve it on
// 127.0.0.1; `plinth eval -hash-embedder` labels its numbers as such.
package hashembed

import (
	"encoding/json"
	"hash/fnv"
	"math"
	"net/http"
	"strings"
	"sync/atomic"
	"unicode"
)

// Handler serves POST .../embeddings.
type Handler struct {
	// Dims is the vector length; zero means 256.
	Dims int
	// Requests and Inputs count what was served.
	Requests, Inputs atomic.Int64
	// Fail, when set, is called per request; a non-zero status it returns is answered instead.
	Fail func(n int64) int
}

// Embed returns the vector of text.
func Embed(text string, dims int) []float32 {
	if dims <= 0 {
		dims = 256
	}
	v := make([]float32, dims)
	add := func(s string, w float32) {
		h := fnv.New64a()
		h.Write([]byte(s))
		x := h.Sum64()
		sign := float32(1)
		if x>>63 == 1 {
			sign = -1
		}
		v[int(x%uint64(dims))] += sign * w
	}
	for _, word := range strings.FieldsFunc(strings.ToLower(text), func(r rune) bool { return !unicode.IsLetter(r) && !unicode.IsDigit(r) }) {
		add(word, 1)
		p := "#" + word + "#"
		for i := 0; i+3 <= len(p); i++ {
			add(p[i:i+3], 0.3)
		}
	}
	var n float64
	for _, f := range v {
		n += float64(f) * float64(f)
	}
	if n == 0 {
		v[0] = 1
		return v
	}
	inv := float32(1 / math.Sqrt(n))
	for i := range v {
		v[i] *= inv
	}
	return v
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := h.Requests.Add(1)
	if h.Fail != nil {
		if status := h.Fail(n); status != 0 {
			http.Error(w, `{"error":{"message":"injected failure"}}`, status)
			return
		}
	}
	if r.Method != http.MethodPost || !strings.HasSuffix(r.URL.Path, "/embeddings") {
		http.Error(w, `{"error":{"message":"not found"}}`, http.StatusNotFound)
		return
	}
	var req struct {
		Model string          `json:"model"`
		Input json.RawMessage `json:"input"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(w, `{"error":{"message":"bad json"}}`, http.StatusBadRequest)
		return
	}
	var inputs []string
	var one string
	if json.Unmarshal(req.Input, &one) == nil {
		inputs = []string{one}
	} else if err := json.Unmarshal(req.Input, &inputs); err != nil {
		http.Error(w, `{"error":{"message":"input must be strings"}}`, http.StatusBadRequest)
		return
	}
	h.Inputs.Add(int64(len(inputs)))
	type item struct {
		Object    string    `json:"object"`
		Index     int       `json:"index"`
		Embedding []float32 `json:"embedding"`
	}
	data := make([]item, len(inputs))
	for i, in := range inputs {
		data[i] = item{Object: "embedding", Index: i, Embedding: Embed(in, h.Dims)}
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"object": "list", "data": data, "model": req.Model,
		"usage": map[string]int{"prompt_tokens": 0, "total_tokens": 0}})
}
