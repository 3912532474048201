// Package sdktest is an in-memory Plinth host for testing plugins with plain `go test`.
//
// A plugin's test creates a Host, sets the plugin's configuration and calls its hooks:
//
//	func TestRoute(t *testing.T) {
//		h := sdktest.New()
//		h.SetConfigJSON(t, map[string]any{"routes": ...})
//		d, err := h.Route(&sdk.Request{Method: "GET", Path: "/hello"})
//		...
//	}
//
// By default hooks run natively, in the test binary, through the same encode → handler → decode path
// the wasm build takes. host/plugintest builds the plugin to .wasm and runs the same Host against the
// real runtime, so one test body can check both (see docs/sdk.md).
//
// The host calls (KV, rate limits, logs...) follow the semantics of docs/abi.md; the clock is virtual
// and moves only with Advance, so rate-limit and TTL tests are deterministic.
package sdktest

import (
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/abi"
	"github.com/plinth-dev/plinth/abi/gcra"
	"github.com/plinth-dev/plinth/sdk"
)

// Runner executes one hook call of a plugin with h serving its host calls and returns the encoded result.
// The native runner calls the handlers registered in the test binary; host/plugintest provides one that
// runs the plugin's .wasm in the real runtime.
type Runner interface {
	Run(h abi.Host, hook abi.Hook, input []byte) ([]byte, error)
}

type nativeRunner struct{}

func (nativeRunner) Run(h abi.Host, hook abi.Hook, input []byte) ([]byte, error) {
	return sdk.Call(h, hook, input), nil
}

// LogLine is one line a plugin logged.
type LogLine struct {
	Level int32
	Msg   string
}

// Host is an in-memory implementation of every host call, plus helpers to call a plugin's hooks.
// Its methods are safe for concurrent use.
type Host struct {
	runner Runner

	mu     sync.Mutex
	now    time.Time         // virtual clock; guarded by mu
	config []byte            // guarded by mu
	logs   []LogLine         // guarded by mu
	tats   map[string]int64  // rate-limit key → GCRA theoretical arrival time (Unix ns); guarded by mu
	kv     map[string]kvItem // guarded by mu

	search     SearchFunc               // guarded by mu
	llm        LLMFunc                  // guarded by mu
	streams    map[int32][]abi.LLMEvent // open LLM streams: events left; guarded by mu
	nextStream int32                    // guarded by mu
	streamed   *abi.Response            // the handle hook's streamed response; guarded by mu
}

// New returns a Host that runs hooks natively.
func New() *Host { return NewWithRunner(nativeRunner{}) }

// NewWithRunner returns a Host that runs hooks with r.
func NewWithRunner(r Runner) *Host {
	return &Host{
		runner: r,
		now:    time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
		tats:   map[string]int64{},
		kv:     map[string]kvItem{},
	}
}

// Now returns the virtual clock.
func (h *Host) Now() time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.now
}

// Advance moves the virtual clock forward.
func (h *Host) Advance(d time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.now = h.now.Add(d)
}

// SetConfig sets the plugin configuration returned by the config host call.
func (h *Host) SetConfig(b []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.config = append([]byte(nil), b...)
}

// SetConfigJSON sets the plugin configuration to the JSON encoding of v.
func (h *Host) SetConfigJSON(t testing.TB, v any) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("sdktest: encoding config: %v", err)
	}
	h.SetConfig(b)
}

// ConfigBytes returns the configuration set by SetConfig.
func (h *Host) ConfigBytes() []byte {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.config
}

// Logs returns the lines logged so far.
func (h *Host) Logs() []LogLine {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]LogLine(nil), h.logs...)
}

// ErrPlugin wraps the error text a handler returned (or a panic it recovered from).
var ErrPlugin = errors.New("plugin error")

func (h *Host) call(hook abi.Hook, input []byte) ([]byte, error) {
	return h.runner.Run(h, hook, input)
}

// Route runs the plugin's route hook.
func (h *Host) Route(req *sdk.Request) (sdk.Route, error) {
	var d sdk.Route
	out, err := h.call(abi.HookRoute, req.AppendTo(nil))
	if err != nil {
		return d, err
	}
	if err := d.Decode(out); err != nil {
		return d, err
	}
	return d, resultErr(d.Error)
}

// RateLimit runs the plugin's ratelimit hook.
func (h *Host) RateLimit(req *sdk.Request) (sdk.RateLimit, error) {
	var d sdk.RateLimit
	out, err := h.call(abi.HookRateLimit, req.AppendTo(nil))
	if err != nil {
		return d, err
	}
	if err := d.Decode(out); err != nil {
		return d, err
	}
	return d, resultErr(d.Error)
}

// Handle runs the plugin's handle hook.
func (h *Host) Handle(req *sdk.Request) (sdk.Response, error) {
	var r sdk.Response
	out, err := h.call(abi.HookHandle, req.AppendTo(nil))
	if err != nil {
		return r, err
	}
	if err := r.Decode(out); err != nil {
		return r, err
	}
	return r, resultErr(r.Error)
}

func resultErr(text string) error {
	if text == "" {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrPlugin, text)
}

// Log implements abi.Host.
func (h *Host) Log(level int32, msg []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.logs = append(h.logs, LogLine{Level: level, Msg: string(msg)})
}

// Config implements abi.Host.
func (h *Host) Config(buf []byte) int32 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return abi.Fit(buf, h.config)
}

// RLTake implements abi.Host with the GCRA of abi/gcra on the virtual clock.
func (h *Host) RLTake(key []byte, limit, periodMs, burst, cost int64, out []byte) int32 {
	p := gcra.Params{Limit: limit, Period: time.Duration(periodMs) * time.Millisecond, Burst: burst, Cost: cost}
	if !p.Valid() || len(key) > abi.MaxKeyLen || len(out) < abi.RLResultSize {
		return int32(abi.StatusInvalidArgument)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	tat, r := gcra.Take(h.tats[string(key)], h.now.UnixNano(), p)
	h.tats[string(key)] = tat
	abi.PutRLResult(out, r.ABI())
	return 0
}
