package abi

// Host is the set of host functions of ABI v1 as Go methods, one method per function in HostModule
// (except input, which the caller of a hook serves itself).
//
// Pointer/length pairs become byte slices and (buf, limit) pairs become a destination slice whose length
// is the limit; results keep the ABI's meaning exactly (a length, a handle or a negative Status). Three
// parties use it:
//   - runtime/ binds each wasm import to the Host of the call in progress, reading and writing guest
//     memory directly (the slices passed in alias guest memory for the duration of the call only);
//   - host/ implements it over Pebble, the rate limiter, search and LLM providers;
//   - sdk/sdktest implements it in memory, and a native (non-wasip1) build of the SDK calls it, so a
//     plugin's handlers run in a plain `go test` with the same semantics as in the real host.
//
// Implementations must not retain the slices they are passed.
type Host interface {
	Log(level int32, msg []byte)
	Config(buf []byte) int32
	RLTake(key []byte, limit, periodMs, burst, cost int64, out []byte) int32
	KVGet(key, buf []byte) int32
	KVPut(key, val []byte, ttlMs int64) int32
	KVDelete(key []byte) int32
	KVIncr(key []byte, delta, ttlMs int64, out []byte) int32
	// KVCAS: old == nil means the key must be absent; new == nil deletes it. (A present but empty
	// value is a non-nil empty slice.)
	KVCAS(key, old, new []byte, ttlMs int64) int32
	KVScan(req, buf []byte) int32
	Search(req, buf []byte) int32
	LLMOpen(req []byte) int32
	LLMRead(handle int32, buf []byte) int32
	LLMClose(handle int32) int32
	RespStart(resp []byte) int32
	RespWrite(data []byte) int32
}

// Fit implements the buffer model for a host: it copies data into buf when it fits and returns data's
// length either way.
func Fit(buf, data []byte) int32 {
	if len(data) <= len(buf) {
		copy(buf, data)
	}
	return int32(len(data))
}
