package server

// modelInfo describes a model a tenant's chat completions can use.
type modelInfo struct {
	ID      string
	Created int64
	OwnedBy string
}

// models returns the models of the request's tenant.
func (s *Server) models(rc *reqCtx) []modelInfo {
	return []modelInfo{{ID: "plinth-extractive", OwnedBy: "plinth"}}
}
