// Command bench is a fixture plugin for benchmarks of the host calls: its route hook does nothing, or
// one KV get or put, or a hundred of them, chosen by the path.
package main

import (
	"strings"

	"github.com/plinth-dev/plinth/sdk"
)

var value = []byte(strings.Repeat("v", 64))

func init() {
	sdk.OnRoute(func(req *sdk.Request) (sdk.Route, error) {
		n := 1
		path := req.Path
		if p, ok := strings.CutSuffix(path, "100"); ok {
			n, path = 100, p
		}
		for i := 0; i < n; i++ {
			var err error
			switch path {
			case "/kvget":
				_, err = sdk.KV.Get("bench-key")
			case "/kvput":
				err = sdk.KV.Put("bench-key", value, 0)
			case "/noop":
			}
			if err != nil {
				return sdk.Route{}, err
			}
		}
		return sdk.Default(), nil
	})
}

func main() {}
