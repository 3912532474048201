//go:build wasip1

package sdk

import (
	"runtime"
	"unsafe"

	"github.com/plinth-dev/plinth/abi"
)

// This file is the guest side of the ABI: the exports the host calls and the raw host imports. Every
// other file of the package calls the host through the host* functions, whose native twins are in
// abi_native.go.
//
// The imports are //go:noescape: the host reads and writes the memory they point to only during the
// call (docs/abi.md), so the compiler may keep keys, buffers and results on the guest's stack. Without
// it every string or array passed to the host escapes to the heap, and allocation is slow in Go on Wasm.

//go:wasmexport plinth_abi_version
func exportABIVersion() int32 { return abi.Version }

//go:wasmexport plinth_hooks
func exportHooks() int64 { return int64(registered()) }

//go:wasmexport plinth_on_route
func exportRoute(inputLen int32) int64 { return dispatch(abi.HookRoute, inputLen) }

//go:wasmexport plinth_on_ratelimit
func exportRateLimit(inputLen int32) int64 { return dispatch(abi.HookRateLimit, inputLen) }

//go:wasmexport plinth_on_handle
func exportHandle(inputLen int32) int64 { return dispatch(abi.HookHandle, inputLen) }

//go:wasmexport plinth_on_prompt
func exportPrompt(inputLen int32) int64 { return dispatch(abi.HookPrompt, inputLen) }

// inBuf and outBuf are reused across calls. outBuf also keeps the last result reachable until the host
// has copied it out (the host copies before it calls into the instance again).
var inBuf, outBuf []byte

func dispatch(hook abi.Hook, inputLen int32) int64 {
	// The host copied the previous result out before this call: a buffer grown for one huge result
	// need not stay pinned for the instance's lifetime.
	if cap(outBuf) > 1<<20 {
		outBuf = nil
	}
	if int(inputLen) > cap(inBuf) {
		inBuf = make([]byte, inputLen)
	}
	in := inBuf[:inputLen]
	if n := _input(ptr(in), uint32(len(in))); n != inputLen {
		outBuf = encodeError(hook, outBuf[:0], abi.StatusInvalidArgument)
	} else {
		outBuf = callHook(hook, in, outBuf[:0])
	}
	if dispatched++; dispatched%yieldEvery == 0 {
		runtime.Gosched()
	}
	return abi.PackResult(uint32(uintptr(ptr(outBuf))), uint32(len(outBuf)))
}

// A Go guest runs other goroutines only when the one serving an export blocks or yields, and hooks rarely
// do. The garbage collector's background mark workers are such goroutines: without them a GC cycle
// advances only through allocation assists, so its mark phase (write barriers on, extra scanning) drags
// over thousands of calls. Yielding every yieldEvery calls lets the workers finish a started cycle; when
// nothing else is runnable it costs one scheduler pass. Measured on the first-party ratelimit plugin over
// 200,000 calls: write barriers active in 34% of calls without it, 7% with it; work units per call down 14%.
const yieldEvery = 64

var dispatched uint64

func ptr(b []byte) unsafe.Pointer { return unsafe.Pointer(unsafe.SliceData(b)) }

//go:wasmimport plinth input
//go:noescape
func _input(buf unsafe.Pointer, limit uint32) int32

//go:wasmimport plinth log
//go:noescape
func _log(level int32, msg unsafe.Pointer, msgLen uint32)

//go:wasmimport plinth config
//go:noescape
func _config(buf unsafe.Pointer, limit uint32) int32

//go:wasmimport plinth rl_take
//go:noescape
func _rlTake(key unsafe.Pointer, keyLen uint32, limit, periodMs, burst, cost int64, out unsafe.Pointer) int32

func hostLog(level int32, msg []byte) { _log(level, ptr(msg), uint32(len(msg))) }

func hostConfig(buf []byte) int32 { return _config(ptr(buf), uint32(len(buf))) }

func hostRLTake(key []byte, limit, periodMs, burst, cost int64, out []byte) int32 {
	return _rlTake(ptr(key), uint32(len(key)), limit, periodMs, burst, cost, ptr(out))
}

//go:wasmimport plinth kv_get
//go:noescape
func _kvGet(key unsafe.Pointer, keyLen uint32, buf unsafe.Pointer, limit uint32) int32

//go:wasmimport plinth kv_put
//go:noescape
func _kvPut(key unsafe.Pointer, keyLen uint32, val unsafe.Pointer, valLen uint32, ttlMs int64) int32

//go:wasmimport plinth kv_delete
//go:noescape
func _kvDelete(key unsafe.Pointer, keyLen uint32) int32

//go:wasmimport plinth kv_incr
//go:noescape
func _kvIncr(key unsafe.Pointer, keyLen uint32, delta, ttlMs int64, out unsafe.Pointer) int32

//go:wasmimport plinth kv_cas
//go:noescape
func _kvCAS(key unsafe.Pointer, keyLen uint32, old unsafe.Pointer, oldLen int32, new unsafe.Pointer, newLen int32, ttlMs int64) int32

//go:wasmimport plinth kv_scan
//go:noescape
func _kvScan(req unsafe.Pointer, reqLen uint32, buf unsafe.Pointer, limit uint32) int32

func hostKVGet(key, buf []byte) int32 {
	return _kvGet(ptr(key), uint32(len(key)), ptr(buf), uint32(len(buf)))
}

func hostKVPut(key, val []byte, ttlMs int64) int32 {
	return _kvPut(ptr(key), uint32(len(key)), ptr(val), uint32(len(val)), ttlMs)
}

func hostKVDelete(key []byte) int32 { return _kvDelete(ptr(key), uint32(len(key))) }

func hostKVIncr(key []byte, delta, ttlMs int64, out []byte) int32 {
	return _kvIncr(ptr(key), uint32(len(key)), delta, ttlMs, ptr(out))
}

// hostKVCAS encodes nil (absent) as length -1.
func hostKVCAS(key, old, new []byte, ttlMs int64) int32 {
	return _kvCAS(ptr(key), uint32(len(key)), ptr(old), optLen(old), ptr(new), optLen(new), ttlMs)
}

func optLen(b []byte) int32 {
	if b == nil {
		return -1
	}
	return int32(len(b))
}

func hostKVScan(req, buf []byte) int32 {
	return _kvScan(ptr(req), uint32(len(req)), ptr(buf), uint32(len(buf)))
}

//go:wasmimport plinth search
//go:noescape
func _search(req unsafe.Pointer, reqLen uint32, buf unsafe.Pointer, limit uint32) int32

//go:wasmimport plinth llm_open
//go:noescape
func _llmOpen(req unsafe.Pointer, reqLen uint32) int32

//go:wasmimport plinth llm_read
//go:noescape
func _llmRead(handle int32, buf unsafe.Pointer, limit uint32) int32

//go:wasmimport plinth llm_close
func _llmClose(handle int32) int32

//go:wasmimport plinth resp_start
//go:noescape
func _respStart(resp unsafe.Pointer, respLen uint32) int32

//go:wasmimport plinth resp_write
//go:noescape
func _respWrite(data unsafe.Pointer, dataLen uint32) int32

func hostSearch(req, buf []byte) int32 {
	return _search(ptr(req), uint32(len(req)), ptr(buf), uint32(len(buf)))
}

func hostLLMOpen(req []byte) int32 { return _llmOpen(ptr(req), uint32(len(req))) }

func hostLLMRead(h int32, buf []byte) int32 { return _llmRead(h, ptr(buf), uint32(len(buf))) }

func hostLLMClose(h int32) int32 { return _llmClose(h) }

func hostRespStart(resp []byte) int32 { return _respStart(ptr(resp), uint32(len(resp))) }

func hostRespWrite(data []byte) int32 { return _respWrite(ptr(data), uint32(len(data))) }
