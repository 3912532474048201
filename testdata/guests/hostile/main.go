// Command hostile is a fixture plugin that misbehaves on purpose, chosen by the request path, in both
// its route and handle hooks: an endless loop, a memory bomb, deep recursion, a recovered panic, a crash
// (an unrecovered panic on another goroutine), a huge output. Any other path behaves.
package main

import (
	"bytes"
	"strings"
	"time"

	"github.com/plinth-dev/plinth/sdk"
)

var sink [][]byte

//go:noinline
func recurse(n int) int {
	var pad [64]byte
	pad[n%64] = byte(n)
	return recurse(n+1) + int(pad[0])
}

func misbehave(path string) []byte {
	switch strings.TrimPrefix(path, "/v1") {
	case "/loop":
		for i := 0; ; i++ {
			if i < 0 {
				return nil
			}
		}
	case "/bomb":
		for {
			sink = append(sink, make([]byte, 1<<20))
		}
	case "/recurse":
		recurse(0)
	case "/panic":
		panic("hostile plugin panicked on purpose")
	case "/crash":
		go func() { panic("hostile plugin crashed on purpose") }()
		time.Sleep(time.Millisecond)
	case "/huge":
		return bytes.Repeat([]byte("x"), 4<<20)
	}
	return nil
}

func init() {
	sdk.OnRoute(func(req *sdk.Request) (sdk.Route, error) {
		if body := misbehave(req.Path); body != nil {
			return sdk.Respond(200, body), nil
		}
		return sdk.Default(), nil
	})
	sdk.OnHandle(func(req *sdk.Request) (sdk.Response, error) {
		if body := misbehave(req.Path); body != nil {
			return sdk.Response{Body: body}, nil
		}
		return sdk.Response{Status: 200, Body: []byte("fine")}, nil
	})
}

func main() {}
