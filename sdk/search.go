package sdk

import (
	"fmt"

	"github.com/plinth-dev/plinth/abi"
)

type (
	// SearchRequest is a search over the tenant's vector stores; see abi.SearchRequest for each field.
	SearchRequest = abi.SearchRequest
	// SearchHit is one search result: a chunk of a document with its score.
	SearchHit = abi.SearchHit
)

// Search runs one search over the tenant's vector stores (lexical, vector or hybrid, with filters) and
// returns the hits, best first.
func Search(req SearchRequest) ([]SearchHit, error) {
	enc := req.AppendTo(nil)
	buf := make([]byte, 32<<10)
	for {
		n := hostSearch(enc, buf)
		if n < 0 {
			return nil, fmt.Errorf("search: %w", abi.Status(n))
		}
		if int(n) > len(buf) {
			buf = make([]byte, n)
			continue
		}
		var res abi.SearchResult
		if err := res.Decode(buf[:n]); err != nil {
			return nil, fmt.Errorf("search: %w", err)
		}
		if res.Error != "" {
			return nil, fmt.Errorf("search: %s", res.Error)
		}
		// Decoded byte slices alias buf, which is not reused: the hits own their data.
		return res.Hits, nil
	}
}
