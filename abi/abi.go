// Package abi is the wire contract between the Plinth host and its Wasm plugins: the host module and
// function names, the names of the functions a plugin exports, status codes, the ABI version and the byte
// layouts of every message that crosses the boundary.
//
// Both sides import it: the host (runtime/, host/) and the guest SDK (sdk/), which is compiled for
// GOOS=wasip1. It therefore depends on the standard library only and contains no host or guest logic
// beyond encoding and decoding. docs/abi.md is the normative description; this package is its Go form.
//
// # Calling convention
//
// A hook call is one exported function call. The host calls the hook export with the length of the
// encoded input message; the guest fetches the input with the input host call into a buffer it owns, runs
// its handler, encodes the result in its own memory and returns the result's address and length packed
// into one i64 (PackResult). The host copies the result out before it lets the instance run again.
//
// Every host call that returns variable-sized data follows the buffer model: the guest passes (buf,
// limit); the host returns the data's full length and writes it only when it fits (length <= limit). A
// guest that gets a length above its limit retries with a buffer at least that large. Negative results are
// status codes (Status).
package abi

// Version is the ABI version this package describes. A plugin reports the version it was built against
// through its ExportABIVersion export; the host refuses versions it cannot serve.
const Version = 1

// HostModule is the import module name of every Plinth host function.
const HostModule = "plinth"

// WASIModule is the module name of the WASI preview 1 functions a plugin may import (an allow-listed
// subset; see docs/abi.md).
const WASIModule = "wasi_snapshot_preview1"

// Names of the functions a plugin exports.
const (
	// ExportABIVersion is `plinth_abi_version() -> i32`: the ABI version the plugin was built for.
	ExportABIVersion = "plinth_abi_version"
	// ExportHooks is `plinth_hooks() -> i64`: a bit set of the hooks the plugin registered a handler
	// for (bit 1<<Hook). The host calls it after initialisation to check the hooks it binds.
	ExportHooks = "plinth_hooks"
	// ExportInitialize is the WASI reactor initialiser; when exported it is called once per instance
	// before any other export.
	ExportInitialize = "_initialize"
	// ExportStart marks a WASI command module, which Plinth refuses: a command's main returns and exits.
	ExportStart = "_start"
	// ExportMemory is the linear memory every plugin must export.
	ExportMemory = "memory"
)

// Hook identifies a point in the request pipeline where the host calls a plugin.
type Hook uint8

// The hooks of ABI v1. Each has an export `plinth_on_<name>(input_len i32) -> i64`.
const (
	HookRoute     Hook = 1 // input Request, result RouteDecision
	HookRateLimit Hook = 2 // input Request (with Route set), result RateLimitDecision
	HookHandle    Hook = 3 // input Request (with Route and Body set), result Response
	HookPrompt    Hook = 4 // input PromptInput, result PromptOutput
	hookEnd       Hook = 5
)

// Hooks lists every hook of this ABI version in pipeline order.
var Hooks = []Hook{HookRoute, HookRateLimit, HookHandle, HookPrompt}

var hookNames = [hookEnd]string{"", "route", "ratelimit", "handle", "prompt"}

// String returns the hook's name as used in configuration, metrics and errors ("route", "ratelimit"...).
func (h Hook) String() string {
	if h > 0 && h < hookEnd {
		return hookNames[h]
	}
	return "hook(" + itoa(int64(h)) + ")"
}

// Export returns the name of the function a plugin exports for the hook ("plinth_on_route"...).
func (h Hook) Export() string { return "plinth_on_" + h.String() }

// Valid reports whether h is a hook of this ABI version.
func (h Hook) Valid() bool { return h > 0 && h < hookEnd }

// ParseHook returns the hook with the given name.
func ParseHook(name string) (Hook, bool) {
	for h := Hook(1); h < hookEnd; h++ {
		if hookNames[h] == name {
			return h, true
		}
	}
	return 0, false
}

// HookSet is a bit set of hooks, as returned by ExportHooks.
type HookSet uint64

// Has reports whether h is in the set.
func (s HookSet) Has(h Hook) bool { return s&(1<<h) != 0 }

// With returns the set with h added.
func (s HookSet) With(h Hook) HookSet { return s | 1<<h }

// PackResult packs a hook's result location into the i64 a hook export returns.
func PackResult(ptr, length uint32) int64 { return int64(uint64(ptr)<<32 | uint64(length)) }

// UnpackResult is the inverse of PackResult.
func UnpackResult(v int64) (ptr, length uint32) { return uint32(uint64(v) >> 32), uint32(v) }

// Names of the host functions, all in HostModule. Signatures use only i32 and i64; pointers and lengths
// are i32 offsets into the plugin's exported memory. docs/abi.md gives each function's exact semantics.
const (
	// FuncInput is `input(buf, limit i32) -> i32`: the current hook's encoded input (buffer model).
	FuncInput = "input"
	// FuncLog is `log(level i32, msg, msg_len i32)`: a log line attributed to the plugin.
	FuncLog = "log"
	// FuncConfig is `config(buf, limit i32) -> i32`: the plugin's configuration bytes (buffer model).
	FuncConfig = "config"
	// FuncRLTake is `rl_take(key, key_len i32, limit, period_ms, burst, cost i64, out i32) -> i32`:
	// an atomic GCRA take on the plugin's rate-limit key; writes RLResultSize bytes at out.
	FuncRLTake = "rl_take"
	// FuncKVGet is `kv_get(key, key_len, buf, limit i32) -> i32`: value length or StatusNotFound.
	FuncKVGet = "kv_get"
	// FuncKVPut is `kv_put(key, key_len, val, val_len i32, ttl_ms i64) -> i32`.
	FuncKVPut = "kv_put"
	// FuncKVDelete is `kv_delete(key, key_len i32) -> i32`.
	FuncKVDelete = "kv_delete"
	// FuncKVIncr is `kv_incr(key, key_len i32, delta, ttl_ms i64, out i32) -> i32`: writes the new
	// value as a little-endian i64 at out.
	FuncKVIncr = "kv_incr"
	// FuncKVCAS is `kv_cas(key, key_len, old, old_len, new, new_len i32, ttl_ms i64) -> i32`; a length
	// of -1 means "absent" (old: must not exist; new: delete).
	FuncKVCAS = "kv_cas"
	// FuncKVScan is `kv_scan(req, req_len, buf, limit i32) -> i32`: req is a KVScanRequest, the
	// result a KVScanResult (buffer model).
	FuncKVScan = "kv_scan"
	// FuncSearch is `search(req, req_len, buf, limit i32) -> i32`: req is a SearchRequest, the
	// result a SearchResult (buffer model).
	FuncSearch = "search"
	// FuncLLMOpen is `llm_open(req, req_len i32) -> i32`: starts a completion stream for an
	// LLMRequest and returns a handle (> 0) or a status.
	FuncLLMOpen = "llm_open"
	// FuncLLMRead is `llm_read(handle, buf, limit i32) -> i32`: the next LLMEvent of the stream
	// (buffer model); 0 when the stream has ended.
	FuncLLMRead = "llm_read"
	// FuncLLMClose is `llm_close(handle i32) -> i32`: ends the stream and cancels the upstream call.
	FuncLLMClose = "llm_close"
	// FuncRespStart is `resp_start(resp, resp_len i32) -> i32`: starts a streamed response to the
	// client with the status and headers of a Response message (handle hook only).
	FuncRespStart = "resp_start"
	// FuncRespWrite is `resp_write(data, data_len i32) -> i32`: writes body bytes and flushes them to
	// the client; StatusClosed once the client has gone.
	FuncRespWrite = "resp_write"
)

// Status is a negative host-call result. Zero and positive results are lengths or handles.
type Status int32

// Status codes returned by host calls.
const (
	StatusOK              Status = 0
	StatusNotFound        Status = -1  // no such key, handle or resource
	StatusInvalidArgument Status = -2  // malformed message, bad pointer range, bad parameter
	StatusConflict        Status = -3  // kv_cas precondition failed
	StatusQuotaExceeded   Status = -4  // a tenant quota or budget would be exceeded
	StatusUnavailable     Status = -5  // the service behind the call is not configured or down
	StatusInternal        Status = -6  // host-side failure; details are in the host's log
	StatusDenied          Status = -7  // not allowed from this hook or for this plugin
	StatusTooLarge        Status = -8  // a key, value or message exceeds its size limit
	StatusClosed          Status = -9  // the stream or client connection has ended
	StatusTimeout         Status = -10 // the call's deadline passed
)

var statusNames = map[Status]string{
	StatusOK: "ok", StatusNotFound: "not found", StatusInvalidArgument: "invalid argument",
	StatusConflict: "conflict", StatusQuotaExceeded: "quota exceeded", StatusUnavailable: "unavailable",
	StatusInternal: "internal error", StatusDenied: "denied", StatusTooLarge: "too large",
	StatusClosed: "closed", StatusTimeout: "timeout",
}

// Error returns the status's name; Status implements error so SDKs can return it directly.
func (s Status) Error() string {
	if n, ok := statusNames[s]; ok {
		return n
	}
	return "status " + itoa(int64(s))
}

// Log levels for FuncLog, matching log/slog's levels.
const (
	LogDebug int32 = -4
	LogInfo  int32 = 0
	LogWarn  int32 = 4
	LogError int32 = 8
)

// Size limits that both sides enforce.
const (
	MaxKeyLen      = 1024    // bytes of a KV or rate-limit key
	MaxValueLen    = 1 << 20 // bytes of one KV value
	MaxScanEntries = 1000    // entries of one kv_scan page
)

// RLResultSize is the size of the rl_take result written at out: five little-endian i64 values,
// allowed (0 or 1), remaining, retry_after_ms, reset_ms, limit.
const RLResultSize = 40

// itoa avoids strconv so that a plugin that needs nothing else does not pull it in.
func itoa(v int64) string {
	if v == 0 {
		return "0"
	}
	var b [20]byte
	i := len(b)
	neg := v < 0
	u := uint64(v)
	if neg {
		u = uint64(-v)
	}
	for u > 0 {
		i--
		b[i] = byte('0' + u%10)
		u /= 10
	}
	if neg {
		i--
		b[i] = '-'
	}
	return string(b[i:])
}
