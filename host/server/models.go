package server

import (
	"github.com/valyala/fasthttp"

	"github.com/plinth-dev/plinth/host/llm"
)

func init() {
	endpointRegistrars = append(endpointRegistrars, func(s *Server) {
		s.route("GET", "/v1/models/{model}", "models.get", s.getModel)
	})
}

// modelInfo describes a model a tenant's chat completions can use. Created is when the server started:
// models here are configuration and have no creation date of their own, and OpenAI clients expect a
// plausible Unix time rather than 0.
type modelInfo struct {
	ID      string
	Created int64
	OwnedBy string
}

// models returns the models of the request's tenant: those of its LLM configuration and the built-in
// extractive model. owned_by names the provider ("plinth" for the built-in one). An invalid
// configuration lists only the built-in model (chat completions then report the configuration error).
func (s *Server) models(rc *reqCtx) []modelInfo {
	tn, err := s.llmService().Tenant(rc.trt.t.ID, rc.trt.t.LLM)
	if err != nil {
		return []modelInfo{{ID: llm.ExtractiveModel, Created: s.started, OwnedBy: "plinth"}}
	}
	var out []modelInfo
	for _, m := range tn.Models() {
		owner := m.Provider
		if owner == llm.ExtractiveProvider {
			owner = "plinth"
		}
		out = append(out, modelInfo{ID: m.ID, Created: s.started, OwnedBy: owner})
	}
	return out
}

// getModel serves GET /v1/models/{model}.
func (s *Server) getModel(rc *reqCtx) {
	id := rc.param("model")
	for _, m := range s.models(rc) {
		if m.ID == id {
			writeJSON(rc.ctx, fasthttp.StatusOK, map[string]any{"id": m.ID, "object": "model", "created": m.Created,
				"owned_by": m.OwnedBy})
			return
		}
	}
	writeError(rc.ctx, errModelNotFound(id))
}

func errModelNotFound(id string) *APIError {
	return &APIError{Status: fasthttp.StatusNotFound, Type: typeInvalidRequest, Code: "model_not_found", Param: "model",
		Message: "The model '" + id + "' does not exist for this tenant (GET /v1/models lists its models)"}
}
