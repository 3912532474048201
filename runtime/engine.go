// Package runtime runs Plinth plugins on wazero.
//
// The lifecycle of a plugin module is:
//
//	Engine.Compile   validate imports and exports, instrument for preemption, compile (cached by hash)
//	Engine.NewPool   a pool of initialised instances for one (tenant, plugin version, configuration)
//	Pool.Call        run one hook on an idle instance, with a deadline, a memory limit and metering
//	Pool.Close       close the instances; the compiled module is released when no pool uses it
//
// Invariants the rest of Plinth relies on:
//   - an instance belongs to exactly one pool, so it never serves two tenants or two plugin versions;
//   - an instance runs one call at a time;
//   - an instance whose call failed in any way (trap, timeout, budget, bad result) is closed, never reused;
//   - a call never runs past its deadline by more than one preemption interval, and a guest never keeps
//     the Go garbage collector from stopping the world for longer than that (see preempt.go).
package runtime

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"
)

// Preemption selects how runaway guests are stopped.
type Preemption uint8

const (
	// PreemptInstrument rewrites modules so every loop header and function entry counts down and calls
	// the host every Config.TickInterval steps; the host checks the deadline and the CPU budget there.
	// This is the default: it costs a few percent where the alternative costs 4–40x.
	PreemptInstrument Preemption = iota
	// PreemptCloseOnDone uses wazero's WithCloseOnContextDone: correct but slow. For comparison.
	PreemptCloseOnDone
	// PreemptNone runs guests unprotected: an endless loop never returns and blocks the garbage
	// collector of the whole process. Only for benchmarks.
	PreemptNone
)

func (p Preemption) String() string {
	switch p {
	case PreemptInstrument:
		return "instrument"
	case PreemptCloseOnDone:
		return "close-on-done"
	case PreemptNone:
		return "none"
	}
	return fmt.Sprintf("preemption(%d)", p)
}

// Config configures an Engine. The zero value is usable; each field documents its default.
type Config struct {
	// CacheDir holds the compilation cache (wazero's file cache) and instrumented modules, so a restart
	// does not recompile. Empty means an in-memory cache.
	CacheDir string
	// MemoryBudget caps the total linear memory of all instances; idle instances are evicted, least
	// recently used first, to stay under it. Zero means 2 GiB.
	MemoryBudget int64
	// Preemption selects the loop protection. Zero means PreemptInstrument.
	Preemption Preemption
	// TickInterval is the instrumented countdown between host checks. Zero means 1<<14.
	TickInterval int32
	// IdleTimeout closes instances unused for this long. Zero means 2 minutes.
	IdleTimeout time.Duration
	// Logger receives guest stdout/stderr and runtime events. Nil means slog.Default().
	Logger *slog.Logger
}

// Engine compiles modules and owns the instance pools. It is safe for concurrent use.
type Engine struct {
	cfg   Config
	log   *slog.Logger
	cache wazero.CompilationCache

	mu       sync.Mutex
	runtimes map[uint32]wazero.Runtime // by memory limit in pages; guarded by mu
	modules  map[moduleKey]*Module     // compiled modules in use; guarded by mu
	pools    map[*Pool]struct{}        // live pools, for eviction under the budget; guarded by mu
	closed   bool                      // guarded by mu

	memUsed atomic.Int64 // linear memory of all live instances, bytes

	stop chan struct{}
	done chan struct{}
}

type moduleKey struct {
	hash       [32]byte
	limitPages uint32
}

// New returns an Engine. Close it to release compiled code and instances.
func New(cfg Config) (*Engine, error) {
	if cfg.MemoryBudget == 0 {
		cfg.MemoryBudget = 2 << 30
	}
	if cfg.TickInterval == 0 {
		cfg.TickInterval = 1 << 14
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = 2 * time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	e := &Engine{
		cfg:      cfg,
		log:      cfg.Logger,
		runtimes: map[uint32]wazero.Runtime{},
		modules:  map[moduleKey]*Module{},
		pools:    map[*Pool]struct{}{},
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	if cfg.CacheDir != "" {
		dir := filepath.Join(cfg.CacheDir, "wazero")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("runtime: compilation cache: %w", err)
		}
		c, err := wazero.NewCompilationCacheWithDir(dir)
		if err != nil {
			return nil, fmt.Errorf("runtime: compilation cache: %w", err)
		}
		e.cache = c
	} else {
		e.cache = wazero.NewCompilationCache()
	}
	go e.janitor()
	return e, nil
}

// Preemption returns the engine's loop protection.
func (e *Engine) Preemption() Preemption { return e.cfg.Preemption }

// MemoryUsed returns the linear memory held by all live instances, in bytes.
func (e *Engine) MemoryUsed() int64 { return e.memUsed.Load() }

// MemoryBudget returns the configured budget in bytes.
func (e *Engine) MemoryBudget() int64 { return e.cfg.MemoryBudget }

// runtime returns the wazero runtime for a memory limit, creating it on first use. Caller holds mu.
func (e *Engine) runtimeFor(ctx context.Context, limitPages uint32) (wazero.Runtime, error) {
	if r, ok := e.runtimes[limitPages]; ok {
		return r, nil
	}
	rc := wazero.NewRuntimeConfigCompiler().
		WithCompilationCache(e.cache).
		WithMemoryLimitPages(limitPages).
		WithCloseOnContextDone(e.cfg.Preemption == PreemptCloseOnDone)
	r := wazero.NewRuntimeWithConfig(ctx, rc)
	if _, err := wasi_snapshot_preview1.Instantiate(ctx, r); err != nil {
		r.Close(ctx)
		return nil, fmt.Errorf("runtime: wasi: %w", err)
	}
	if err := instantiateHostModule(ctx, r, e); err != nil {
		r.Close(ctx)
		return nil, fmt.Errorf("runtime: host module: %w", err)
	}
	e.runtimes[limitPages] = r
	return r, nil
}

// ModuleHash returns the hex sha256 of a module's bytes, its identity everywhere in Plinth.
func ModuleHash(wasm []byte) string {
	h := sha256.Sum256(wasm)
	return hex.EncodeToString(h[:])
}

// ErrClosed is returned by calls on a closed Engine or Pool.
var ErrClosed = errors.New("runtime: closed")

// Close closes every pool, compiled module and runtime.
func (e *Engine) Close(ctx context.Context) error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	pools := make([]*Pool, 0, len(e.pools))
	for p := range e.pools {
		pools = append(pools, p)
	}
	e.mu.Unlock()
	close(e.stop)
	<-e.done
	for _, p := range pools {
		p.Close()
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	var errs []error
	for _, r := range e.runtimes {
		errs = append(errs, r.Close(ctx))
	}
	errs = append(errs, e.cache.Close(ctx))
	return errors.Join(errs...)
}

// janitor closes idle instances past the idle timeout.
func (e *Engine) janitor() {
	defer close(e.done)
	period := e.cfg.IdleTimeout / 4
	if period > 10*time.Second {
		period = 10 * time.Second
	}
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-e.stop:
			return
		case <-t.C:
			for _, p := range e.livePools() {
				p.evictIdle(mono()-e.cfg.IdleTimeout, false)
			}
		}
	}
}

func (e *Engine) livePools() []*Pool {
	e.mu.Lock()
	defer e.mu.Unlock()
	ps := make([]*Pool, 0, len(e.pools))
	for p := range e.pools {
		ps = append(ps, p)
	}
	return ps
}

// reserve accounts for n more bytes of instance memory, evicting idle instances of any pool (least
// recently used first) when the budget would be exceeded. It reports whether the bytes fit.
func (e *Engine) reserve(n int64, except *Pool) bool {
	for {
		used := e.memUsed.Load()
		if used+n <= e.cfg.MemoryBudget {
			if e.memUsed.CompareAndSwap(used, used+n) {
				return true
			}
			continue
		}
		if !e.evictOneIdle(except) {
			return false
		}
	}
}

func (e *Engine) release(n int64) { e.memUsed.Add(-n) }

// evictOneIdle closes the least recently used idle instance, looking at other pools before except (the
// pool asking for memory), so a busy pool does not evict its own warm instances first.
func (e *Engine) evictOneIdle(except *Pool) bool {
	var best *Pool
	var bestAt time.Duration
	for pass := 0; pass < 2 && best == nil; pass++ {
		for _, p := range e.livePools() {
			if (p == except) != (pass == 1) {
				continue
			}
			if at, ok := p.oldestIdle(); ok && (best == nil || at < bestAt) {
				best, bestAt = p, at
			}
		}
	}
	return best != nil && best.evictIdle(0, true) > 0
}
