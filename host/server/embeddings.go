package server

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"math"
	"strconv"

	"github.com/valyala/fasthttp"

	"github.com/plinth-dev/plinth/host/search"
)

// POST /v1/embeddings (OpenAI-shaped), served through the server's default embedder (search.Options
// DefaultEmbedder; PLINTH_EMBED_* settings). Without one it answers 400 embedder_required.

func init() {
	endpointRegistrars = append(endpointRegistrars, func(s *Server) {
		s.route("POST", "/v1/embeddings", "embeddings.create", s.createEmbeddings)
	})
}

// maxEmbeddingInputs is OpenAI's limit of inputs per request.
const maxEmbeddingInputs = 2048

func (s *Server) createEmbeddings(rc *reqCtx) {
	if !s.needSearch(rc) {
		return
	}
	var req struct {
		Input          json.RawMessage `json:"input"`
		Model          string          `json:"model"`
		EncodingFormat string          `json:"encoding_format"`
		Dimensions     int             `json:"dimensions"`
		User           string          `json:"user"`
	}
	if e := decodeBody(rc, &req, false); e != nil {
		writeError(rc.ctx, e)
		return
	}
	var inputs []string
	var one string
	if err := json.Unmarshal(req.Input, &one); err == nil {
		inputs = []string{one}
	} else if err := json.Unmarshal(req.Input, &inputs); err != nil {
		writeError(rc.ctx, &APIError{Status: 400, Type: typeInvalidRequest, Code: "invalid_input", Param: "input",
			Message: "input must be a string or an array of strings (token arrays are not supported)"})
		return
	}
	if len(inputs) == 0 || len(inputs) > maxEmbeddingInputs {
		writeError(rc.ctx, &APIError{Status: 400, Type: typeInvalidRequest, Code: "invalid_input", Param: "input",
			Message: "input must hold 1 to " + strconv.Itoa(maxEmbeddingInputs) + " strings"})
		return
	}
	for i, in := range inputs {
		if in == "" {
			writeError(rc.ctx, &APIError{Status: 400, Type: typeInvalidRequest, Code: "invalid_input", Param: "input[" + strconv.Itoa(i) + "]",
				Message: "inputs must not be empty strings"})
			return
		}
	}
	switch req.EncodingFormat {
	case "", "float", "base64":
	default:
		writeError(rc.ctx, &APIError{Status: 400, Type: typeInvalidRequest, Code: "invalid_encoding_format", Param: "encoding_format",
			Message: "encoding_format must be float or base64"})
		return
	}
	if def := s.search.DefaultEmbedder(); req.Dimensions != 0 && (def == nil || def.Dimensions != req.Dimensions) {
		writeError(rc.ctx, &APIError{Status: 400, Type: typeInvalidRequest, Code: "unsupported_parameter", Param: "dimensions",
			Message: "dimensions can only be the configured embedder's"})
		return
	}
	vecs, model, err := s.search.Embed(rc.ctx, req.Model, inputs)
	if err != nil {
		writeError(rc.ctx, s.searchError(rc, "embedder", err))
		return
	}
	type item struct {
		Object    string `json:"object"`
		Index     int    `json:"index"`
		Embedding any    `json:"embedding"`
	}
	data := make([]item, len(vecs))
	tokens := 0
	for i, v := range vecs {
		data[i] = item{Object: "embedding", Index: i, Embedding: v}
		if req.EncodingFormat == "base64" {
			b := make([]byte, 0, 4*len(v))
			for _, f := range v {
				b = binary.LittleEndian.AppendUint32(b, math.Float32bits(f))
			}
			data[i].Embedding = base64.StdEncoding.EncodeToString(b)
		}
		tokens += search.EstimateTokens(inputs[i])
	}
	writeJSON(rc.ctx, fasthttp.StatusOK, map[string]any{"object": "list", "data": data, "model": model,
		"usage": map[string]int{"prompt_tokens": tokens, "total_tokens": tokens}})
}
