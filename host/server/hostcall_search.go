package server

import "github.com/plinth-dev/plinth/abi"

// Search implements abi.Host. Served by the search service once it is configured.
func (h *hostCall) Search(req, buf []byte) int32 { return int32(abi.StatusUnavailable) }
