package runtime

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"

	"github.com/plinth-dev/plinth/abi"
	"github.com/plinth-dev/plinth/runtime/instrument"
)

// Module is a validated, compiled plugin module for one memory limit. Modules are shared: Compile
// returns the same Module for the same bytes and limit, counting references; call Release when done.
type Module struct {
	engine     *Engine
	key        moduleKey
	Hash       string      // hex sha256 of the module bytes as uploaded
	Hooks      abi.HookSet // hooks the module exports
	Size       int         // bytes as uploaded
	limitPages uint32
	minPages   uint32 // initial memory of a fresh instance
	compiled   wazero.CompiledModule
	runtime    wazero.Runtime
	hasInit    bool

	refs int // guarded by engine.mu
}

// CompileOptions are the per-module limits fixed at compile time.
type CompileOptions struct {
	// MemoryLimit caps an instance's linear memory in bytes (rounded down to 64 KiB pages). Zero
	// means 64 MiB.
	MemoryLimit int64
}

// ValidationError reports why a module cannot be a Plinth plugin, in words a plugin author can act on.
type ValidationError struct {
	Reason string
}

func (e *ValidationError) Error() string { return "invalid plugin module: " + e.Reason }

func invalid(format string, args ...any) error {
	return &ValidationError{Reason: fmt.Sprintf(format, args...)}
}

// hostSignatures are the plinth functions a module may import, with their exact signatures.
var hostSignatures = map[string][2][]api.ValueType{
	abi.FuncInput:     {{i32, i32}, {i32}},
	abi.FuncLog:       {{i32, i32, i32}, nil},
	abi.FuncConfig:    {{i32, i32}, {i32}},
	abi.FuncRLTake:    {{i32, i32, i64, i64, i64, i64, i32}, {i32}},
	abi.FuncKVGet:     {{i32, i32, i32, i32}, {i32}},
	abi.FuncKVPut:     {{i32, i32, i32, i32, i64}, {i32}},
	abi.FuncKVDelete:  {{i32, i32}, {i32}},
	abi.FuncKVIncr:    {{i32, i32, i64, i64, i32}, {i32}},
	abi.FuncKVCAS:     {{i32, i32, i32, i32, i32, i32, i64}, {i32}},
	abi.FuncKVScan:    {{i32, i32, i32, i32}, {i32}},
	abi.FuncSearch:    {{i32, i32, i32, i32}, {i32}},
	abi.FuncLLMOpen:   {{i32, i32}, {i32}},
	abi.FuncLLMRead:   {{i32, i32, i32}, {i32}},
	abi.FuncLLMClose:  {{i32}, {i32}},
	abi.FuncRespStart: {{i32, i32}, {i32}},
	abi.FuncRespWrite: {{i32, i32}, {i32}},
}

const (
	i32 = api.ValueTypeI32
	i64 = api.ValueTypeI64
)

// wasiAllowed is the WASI subset a plugin may import: what the Go and TinyGo runtimes import for a
// program that uses no files or sockets. Instances get no preopened directories, no arguments beyond
// the program name, only the environment Plinth sets, no stdin, and stdout/stderr go to the host log,
// so the file functions here can only ever see closed descriptors.
var wasiAllowed = map[string]bool{
	"args_get": true, "args_sizes_get": true, "environ_get": true, "environ_sizes_get": true,
	"clock_res_get": true, "clock_time_get": true, "random_get": true, "proc_exit": true,
	"sched_yield": true, "poll_oneoff": true,
	"fd_write": true, "fd_read": true, "fd_close": true, "fd_seek": true, "fd_sync": true,
	"fd_fdstat_get": true, "fd_fdstat_set_flags": true, "fd_filestat_get": true,
	"fd_prestat_get": true, "fd_prestat_dir_name": true,
}

// Compile validates, instruments and compiles a module, or returns the already compiled one. A module
// that cannot be a plugin gets a *ValidationError.
func (e *Engine) Compile(ctx context.Context, wasm []byte, opts CompileOptions) (*Module, error) {
	limit := opts.MemoryLimit
	if limit == 0 {
		limit = 64 << 20
	}
	pages := uint32(limit >> 16)
	if pages == 0 {
		return nil, fmt.Errorf("runtime: memory limit %d is below one 64 KiB page", limit)
	}
	key := moduleKey{hash: sha256.Sum256(wasm), limitPages: pages}

	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil, ErrClosed
	}
	if m, ok := e.modules[key]; ok {
		m.refs++
		return m, nil
	}
	code, err := e.prepare(wasm, key.hash)
	if err != nil {
		return nil, err
	}
	r, err := e.runtimeFor(ctx, pages)
	if err != nil {
		return nil, err
	}
	cm, err := r.CompileModule(ctx, code)
	if err != nil {
		return nil, invalid("%v", err)
	}
	m := &Module{engine: e, key: key, Hash: hex.EncodeToString(key.hash[:]), Size: len(wasm),
		limitPages: pages, compiled: cm, runtime: r, refs: 1}
	if err := m.validate(); err != nil {
		cm.Close(ctx)
		return nil, err
	}
	e.modules[key] = m
	return m, nil
}

// Release drops a reference; the compiled code is closed when the last one goes.
func (m *Module) Release() {
	e := m.engine
	e.mu.Lock()
	defer e.mu.Unlock()
	m.refs--
	if m.refs == 0 {
		delete(e.modules, m.key)
		m.compiled.Close(context.Background())
	}
}

func (m *Module) retain() {
	m.engine.mu.Lock()
	m.refs++
	m.engine.mu.Unlock()
}

// MemoryLimit returns the instance memory limit in bytes.
func (m *Module) MemoryLimit() int64 { return int64(m.limitPages) << 16 }

// prepare returns the bytes to compile: the module itself, or its instrumented form under
// PreemptInstrument, cached on disk by hash so restarts skip the rewrite.
func (e *Engine) prepare(wasm []byte, hash [32]byte) ([]byte, error) {
	if e.cfg.Preemption != PreemptInstrument {
		return wasm, nil
	}
	var path string
	if e.cfg.CacheDir != "" {
		path = filepath.Join(e.cfg.CacheDir, "instrumented",
			fmt.Sprintf("%x-%d.wasm", hash, e.cfg.TickInterval))
		if b, err := os.ReadFile(path); err == nil {
			return b, nil
		}
	}
	out, err := instrument.Instrument(wasm, instrument.Options{
		Interval:      e.cfg.TickInterval,
		ImportModule:  abi.HostModule,
		ImportName:    funcTick,
		CounterExport: exportCountdown,
	})
	if err != nil {
		return nil, invalid("%v", err)
	}
	if path != "" {
		writeFileAtomic(path, out)
	}
	return out, nil
}

// writeFileAtomic writes a cache file; failures only cost a recompute later, so they are ignored.
func writeFileAtomic(path string, data []byte) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return
	}
	os.Rename(tmp, path)
}

func (m *Module) validate() error {
	cm := m.compiled
	if len(cm.ImportedMemories()) > 0 {
		return invalid("the module imports its memory; a plugin must define and export its own")
	}
	for _, f := range cm.ImportedFunctions() {
		mod, name, _ := f.Import()
		switch mod {
		case abi.HostModule:
			if name == funcTick && m.engine.cfg.Preemption == PreemptInstrument {
				continue // added by the instrumentation
			}
			sig, ok := hostSignatures[name]
			if !ok {
				return invalid("imports %s.%s, which ABI v%d does not define (see docs/abi.md)", mod, name, abi.Version)
			}
			if !slices.Equal(f.ParamTypes(), sig[0]) || !slices.Equal(f.ResultTypes(), sig[1]) {
				return invalid("imports %s.%s with signature %s, want %s", mod, name,
					sigString(f.ParamTypes(), f.ResultTypes()), sigString(sig[0], sig[1]))
			}
		case abi.WASIModule:
			if !wasiAllowed[name] {
				return invalid("imports %s.%s: plugins have no filesystem, sockets or other processes; "+
					"allowed WASI functions are %s", mod, name, wasiAllowedList)
			}
		default:
			return invalid("imports %s.%s: a plugin may import only from %q and an allow-listed subset of %q",
				mod, name, abi.HostModule, abi.WASIModule)
		}
	}
	exports := cm.ExportedFunctions()
	if _, ok := cm.ExportedMemories()[abi.ExportMemory]; !ok {
		return invalid("the module does not export its memory as %q", abi.ExportMemory)
	}
	if _, ok := exports[abi.ExportStart]; ok {
		if _, ok := exports[abi.ExportInitialize]; !ok {
			return invalid("the module is a WASI command (it exports _start); build a reactor: " +
				"GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared")
		}
	}
	if f, ok := exports[abi.ExportInitialize]; ok {
		if len(f.ParamTypes()) != 0 || len(f.ResultTypes()) != 0 {
			return invalid("export _initialize must take and return nothing")
		}
		m.hasInit = true
	}
	if err := checkExport(exports, abi.ExportABIVersion, nil, []api.ValueType{i32}); err != nil {
		return err
	}
	if err := checkExport(exports, abi.ExportHooks, nil, []api.ValueType{i64}); err != nil {
		return err
	}
	for _, h := range abi.Hooks {
		if _, ok := exports[h.Export()]; !ok {
			continue
		}
		if err := checkExport(exports, h.Export(), []api.ValueType{i32}, []api.ValueType{i64}); err != nil {
			return err
		}
		m.Hooks = m.Hooks.With(h)
	}
	if m.Hooks == 0 {
		return invalid("the module exports no hook (plinth_on_route, plinth_on_ratelimit, plinth_on_handle, plinth_on_prompt)")
	}
	if mem, ok := cm.ExportedMemories()[abi.ExportMemory]; ok {
		m.minPages = mem.Min()
		if m.minPages > m.limitPages {
			return invalid("the module's initial memory (%d KiB) exceeds the plugin memory limit (%d KiB)",
				m.minPages*64, m.limitPages*64)
		}
	}
	return nil
}

func checkExport(exports map[string]api.FunctionDefinition, name string, params, results []api.ValueType) error {
	f, ok := exports[name]
	if !ok {
		return invalid("the module does not export %s; build it with the Plinth SDK (github.com/plinth-dev/plinth/sdk) "+
			"or export it as docs/abi.md describes", name)
	}
	if !slices.Equal(f.ParamTypes(), params) || !slices.Equal(f.ResultTypes(), results) {
		return invalid("export %s has signature %s, want %s", name, sigString(f.ParamTypes(), f.ResultTypes()),
			sigString(params, results))
	}
	return nil
}

func sigString(params, results []api.ValueType) string {
	name := func(ts []api.ValueType) string {
		s := make([]string, len(ts))
		for i, t := range ts {
			s[i] = api.ValueTypeName(t)
		}
		return "(" + strings.Join(s, ", ") + ")"
	}
	return name(params) + " -> " + name(results)
}

// wasiAllowedList is wasiAllowed for error messages, sorted.
var wasiAllowedList = func() string {
	names := make([]string, 0, len(wasiAllowed))
	for k := range wasiAllowed {
		names = append(names, k)
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}()

// IsValidation reports whether err says the module is not a valid plugin.
func IsValidation(err error) bool {
	var v *ValidationError
	return errors.As(err, &v)
}
