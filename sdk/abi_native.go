//go:build !wasip1

package sdk

import (
	"bytes"
	"sync"

	"github.com/plinth-dev/plinth/abi"
)

// This file is the native twin of abi_wasip1.go: outside wasm, host calls go to the abi.Host installed by
// Use (sdk/sdktest does that), so a plugin's handlers run in a plain `go test`.

var native struct {
	mu   sync.Mutex // serialises hook calls, as the host serialises calls into one instance
	host abi.Host   // guarded by mu while a call runs
}

// Call runs the registered handler of hook on the encoded input with h serving its host calls, and
// returns the encoded result, exactly as the host would see it from a wasm build. It is meant for
// sdk/sdktest; calls are serialised.
//
// Natively one process plays one instance for every Host, so Call re-runs the OnConfigure function
// whenever the host's configuration differs from the one the plugin last saw, as a new instance would.
func Call(h abi.Host, hook abi.Hook, input []byte) []byte {
	native.mu.Lock()
	defer native.mu.Unlock()
	native.host = h
	defer func() { native.host = nil }()
	if configLoaded {
		buf := make([]byte, len(configCache)+1)
		if n := h.Config(buf); n < 0 || int(n) != len(configCache) || !bytes.Equal(buf[:n], configCache) {
			configLoaded, configCache, configured, configErr = false, nil, false, nil
		}
	}
	return callHook(hook, input, nil)
}

// Hooks returns the set of hooks with a registered handler, as the plinth_hooks export reports it.
func Hooks() abi.HookSet { return registered() }

// host returns the Host of the call in progress.
func host() abi.Host {
	if native.host == nil {
		panic("sdk: host call outside a hook call; run handlers through sdk/sdktest")
	}
	return native.host
}

func hostLog(level int32, msg []byte) { host().Log(level, msg) }

func hostConfig(buf []byte) int32 { return host().Config(buf) }

func hostRLTake(key []byte, limit, periodMs, burst, cost int64, out []byte) int32 {
	return host().RLTake(key, limit, periodMs, burst, cost, out)
}

func hostKVGet(key, buf []byte) int32 { return host().KVGet(key, buf) }

func hostKVPut(key, val []byte, ttlMs int64) int32 { return host().KVPut(key, val, ttlMs) }

func hostKVDelete(key []byte) int32 { return host().KVDelete(key) }

func hostKVIncr(key []byte, delta, ttlMs int64, out []byte) int32 {
	return host().KVIncr(key, delta, ttlMs, out)
}

func hostKVCAS(key, old, new []byte, ttlMs int64) int32 { return host().KVCAS(key, old, new, ttlMs) }

func hostKVScan(req, buf []byte) int32 { return host().KVScan(req, buf) }

func hostSearch(req, buf []byte) int32 { return host().Search(req, buf) }

func hostLLMOpen(req []byte) int32 { return host().LLMOpen(req) }

func hostLLMRead(h int32, buf []byte) int32 { return host().LLMRead(h, buf) }

func hostLLMClose(h int32) int32 { return host().LLMClose(h) }

func hostRespStart(resp []byte) int32 { return host().RespStart(resp) }

func hostRespWrite(data []byte) int32 { return host().RespWrite(data) }
