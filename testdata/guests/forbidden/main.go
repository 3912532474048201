// Command forbidden is a fixture plugin that imports a function outside the allowed host modules; the
// runtime must refuse to load it.
package main

import "github.com/plinth-dev/plinth/sdk"

//go:wasmimport env open_socket
func openSocket(port int32) int32

func init() {
	sdk.OnRoute(func(req *sdk.Request) (sdk.Route, error) {
		openSocket(80)
		return sdk.Default(), nil
	})
}

func main() {}
