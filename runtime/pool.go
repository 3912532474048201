package runtime

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/plinth-dev/plinth/abi"
	"github.com/plinth-dev/plinth/runtime/stats"
)

// PoolConfig configures a Pool. Zero values take the documented defaults.
type PoolConfig struct {
	// Name identifies the pool in errors and logs, conventionally "tenant/plugin@version".
	Name string
	// Module is the compiled plugin; the pool holds its own reference.
	Module *Module
	// Hooks are the hooks the pool will call; every one must be exported and registered by the plugin,
	// which each new instance checks.
	Hooks abi.HookSet
	// Optional are hooks the pool calls only if the plugin registers a handler for them (the handle
	// hook of a plugin that may or may not serve requests). Calling an unregistered one fails.
	Optional abi.HookSet
	// MaxInstances caps the instances (idle and busy) of the pool; calls beyond it wait. Zero means 4.
	MaxInstances int
	// Deadline bounds each call. Zero means 1 s.
	Deadline time.Duration
	// InitDeadline bounds an instance's initialisation (_initialize and the ABI checks). Zero means 5 s.
	InitDeadline time.Duration
	// CallBudget caps the work units (instrumented loop iterations and function entries) of one call;
	// zero means no cap beyond the deadline. Only enforced under PreemptInstrument.
	CallBudget int64
	// Meter, when set, is charged with every call's work units while it runs, and can stop the call
	// (for example a tenant's per-minute CPU budget). Only used under PreemptInstrument.
	Meter Meter
	// InitHost serves the host calls a plugin makes while initialising (config, log). Nil means
	// every such call gets StatusUnavailable.
	InitHost abi.Host
	// MaxResult caps a hook result in bytes. Zero means 16 MiB.
	MaxResult int
	// Stats receives the pool's metrics; pools of one plugin can share it. Nil means a private one.
	Stats *Stats
}

// Meter is charged with the work units of calls: whole intervals as they run (an error stops the
// call), the remainder when the call returns, and 0 before a call starts (an error refuses the call).
// Errors are reported as the call's failure (KindBudget). Charge must be safe for concurrent use.
type Meter interface {
	Charge(units int64) error
}

// Pool is a capped set of initialised instances of one module for one tenant. Calls take an idle
// instance (or create one), run one hook, and give it back, or close it if anything went wrong.
type Pool struct {
	cfg    PoolConfig
	engine *Engine
	mod    *Module
	stats  *Stats
	slots  chan struct{} // one token per instance that may be busy; len(slots) = busy calls

	// registered is the set of hooks the plugin registered, as its first instance reported (0 until then).
	registered atomic.Uint64

	mu       sync.Mutex
	idle     []*instance // most recently used last; guarded by mu
	live     int         // idle + busy instances; guarded by mu
	lastSize int64       // memory of the most recent instance, the estimate for the next; guarded by mu
	closed   bool        // guarded by mu

	// closing counts instances of failed calls being closed in the background (see call); Close waits
	// for them before it releases the module.
	closing sync.WaitGroup
}

// NewPool returns a pool for cfg.Module. It creates no instance until the first call (or Warm).
func (e *Engine) NewPool(cfg PoolConfig) (*Pool, error) {
	if cfg.Module == nil {
		return nil, errors.New("runtime: pool without a module")
	}
	for _, h := range abi.Hooks {
		if (cfg.Hooks.Has(h) || cfg.Optional.Has(h)) && !cfg.Module.Hooks.Has(h) {
			return nil, invalid("the module does not export %s, needed for the %s hook", h.Export(), h)
		}
	}
	if cfg.MaxInstances <= 0 {
		cfg.MaxInstances = 4
	}
	if cfg.Deadline <= 0 {
		cfg.Deadline = time.Second
	}
	if cfg.InitDeadline <= 0 {
		cfg.InitDeadline = 5 * time.Second
	}
	if cfg.MaxResult <= 0 {
		cfg.MaxResult = 16 << 20
	}
	if cfg.Stats == nil {
		cfg.Stats = NewStats()
	}
	p := &Pool{
		cfg:      cfg,
		engine:   e,
		mod:      cfg.Module,
		stats:    cfg.Stats,
		slots:    make(chan struct{}, cfg.MaxInstances),
		lastSize: int64(cfg.Module.minPages) << 16,
	}
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil, ErrClosed
	}
	e.pools[p] = struct{}{}
	e.mu.Unlock()
	p.mod.retain()
	return p, nil
}

// Name returns the pool's name.
func (p *Pool) Name() string { return p.cfg.Name }

// Stats returns the pool's metrics.
func (p *Pool) Stats() *Stats { return p.stats }

// Warm creates instances until n are idle (capped by MaxInstances), so the first requests do not pay
// for instantiation. It returns the first error, which is also what a call would have met.
func (p *Pool) Warm(ctx context.Context, n int) error {
	n = min(n, p.cfg.MaxInstances)
	for {
		p.mu.Lock()
		enough := len(p.idle) >= n || p.live >= p.cfg.MaxInstances || p.closed
		p.mu.Unlock()
		if enough {
			return nil
		}
		inst, err := p.newInstance(ctx, p.cfg.InitHost)
		if err != nil {
			return err
		}
		p.put(inst)
	}
}

// Call runs hook with the encoded input on an instance, with host serving the plugin's host calls, and
// returns the result appended to dst[:0]. A failure is a *CallError; the instance involved is closed.
func (p *Pool) Call(ctx context.Context, hook abi.Hook, input []byte, host abi.Host, dst []byte) ([]byte, error) {
	start := mono()
	out, err := p.call(ctx, hook, input, host, dst)
	p.stats.record(mono()-start, err)
	return out, err
}

func (p *Pool) call(ctx context.Context, hook abi.Hook, input []byte, host abi.Host, dst []byte) ([]byte, error) {
	if !p.cfg.Hooks.Has(hook) && !p.cfg.Optional.Has(hook) {
		return nil, p.fail(hook, KindInvalid, fmt.Errorf("the pool was not created for the %s hook", hook))
	}
	select {
	case p.slots <- struct{}{}:
	default:
		// All instances are busy: wait for one, but not past the caller's deadline.
		t := time.NewTimer(p.cfg.Deadline)
		defer t.Stop()
		select {
		case p.slots <- struct{}{}:
		case <-ctx.Done():
			return nil, p.fail(hook, KindOverload, fmt.Errorf("all %d instances busy: %w", p.cfg.MaxInstances, ctx.Err()))
		case <-t.C:
			return nil, p.fail(hook, KindOverload, fmt.Errorf("all %d instances busy for %v", p.cfg.MaxInstances, p.cfg.Deadline))
		}
	}
	defer func() { <-p.slots }()

	inst, err := p.get(ctx, host)
	if err != nil {
		return nil, err
	}
	out, err := inst.call(ctx, hook, input, host, dst)
	if err != nil {
		// Closing an instance unmaps its memory, which takes hundreds of microseconds for a guest
		// that touched megabytes: the caller gets its error first, and the memory stays counted in
		// the engine's budget until it is really gone. Add happens under mu before Close sets closed,
		// so Close's Wait covers every background close.
		p.mu.Lock()
		closed := p.closed
		if !closed {
			p.closing.Add(1)
		}
		p.mu.Unlock()
		if closed {
			p.discard(inst)
			return nil, err
		}
		go func() {
			defer p.closing.Done()
			p.discard(inst)
		}()
		return nil, err
	}
	p.put(inst)
	return out, nil
}

// get returns an idle instance or a new one. The caller holds a slot.
func (p *Pool) get(ctx context.Context, host abi.Host) (*instance, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, p.fail(0, KindOverload, ErrClosed)
	}
	if n := len(p.idle); n > 0 {
		inst := p.idle[n-1]
		p.idle[n-1] = nil
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		return inst, nil
	}
	p.mu.Unlock()
	return p.newInstance(ctx, host)
}

// put returns a healthy instance to the idle list.
func (p *Pool) put(inst *instance) {
	inst.lastUsed = mono()
	p.resize(inst)
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		p.discard(inst)
		return
	}
	p.idle = append(p.idle, inst)
	p.mu.Unlock()
}

// resize brings the engine's accounting in line with the instance's current memory.
func (p *Pool) resize(inst *instance) {
	size := int64(inst.mem.Size())
	if d := size - inst.accounted; d != 0 {
		if d > 0 {
			p.engine.memUsed.Add(d)
		} else {
			p.engine.release(-d)
		}
		inst.accounted = size
	}
	p.mu.Lock()
	p.lastSize = size
	p.mu.Unlock()
}

// discard closes an instance that must not be used again.
func (p *Pool) discard(inst *instance) {
	inst.close()
	p.engine.release(inst.accounted)
	p.stats.Discarded.Add(1)
	p.stats.Instances.Add(-1)
	p.mu.Lock()
	p.live--
	p.mu.Unlock()
}

// oldestIdle returns the last-use time (mono clock) of the least recently used idle instance.
func (p *Pool) oldestIdle() (time.Duration, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.idle) == 0 {
		return 0, false
	}
	return p.idle[0].lastUsed, true
}

// evictIdle closes idle instances last used before cutoff (mono clock), or just the oldest one when
// one is true, and returns how many it closed.
func (p *Pool) evictIdle(cutoff time.Duration, one bool) int {
	p.mu.Lock()
	var victims []*instance
	for len(p.idle) > 0 && (one && len(victims) == 0 || !one && p.idle[0].lastUsed < cutoff) {
		victims = append(victims, p.idle[0])
		p.idle[0] = nil
		p.idle = p.idle[1:]
	}
	p.mu.Unlock()
	for _, inst := range victims {
		p.discard(inst)
		p.stats.Evicted.Add(1)
	}
	return len(victims)
}

// Close closes the idle instances and makes busy ones close when their call ends. Calls after Close
// fail with ErrClosed.
func (p *Pool) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	for _, inst := range idle {
		p.discard(inst)
	}
	p.closing.Wait()
	p.engine.mu.Lock()
	delete(p.engine.pools, p)
	p.engine.mu.Unlock()
	p.mod.Release()
}

// Kind classifies a failed call.
type Kind uint8

// Kinds of call failure.
const (
	KindTrap     Kind = iota + 1 // the guest trapped, panicked, exited or ran out of memory
	KindTimeout                  // the call's deadline passed (or its context was cancelled)
	KindBudget                   // the call exceeded its CPU budget
	KindOverload                 // no instance could be had in time (pool busy, memory budget)
	KindInit                     // a new instance failed to initialise or failed the ABI checks
	KindInvalid                  // the guest broke the ABI (bad result location or size)
)

func (k Kind) String() string {
	switch k {
	case KindTrap:
		return "trap"
	case KindTimeout:
		return "timeout"
	case KindBudget:
		return "cpu_budget"
	case KindOverload:
		return "overload"
	case KindInit:
		return "init"
	case KindInvalid:
		return "abi_violation"
	}
	return "unknown"
}

// CallError is the error of a failed call. Its message names the plugin and the hook and never contains
// request data.
type CallError struct {
	Plugin string
	Hook   abi.Hook
	Kind   Kind
	Err    error
}

func (e *CallError) Error() string {
	hook := ""
	if e.Hook != 0 {
		hook = " " + e.Hook.String() + " hook"
	}
	return fmt.Sprintf("plugin %s%s: %s: %v", e.Plugin, hook, e.Kind, e.Err)
}

func (e *CallError) Unwrap() error { return e.Err }

func (p *Pool) fail(hook abi.Hook, kind Kind, err error) *CallError {
	return &CallError{Plugin: p.cfg.Name, Hook: hook, Kind: kind, Err: err}
}

// Stats are a pool's (or a plugin's) metrics. Fields are updated atomically; read them any time.
type Stats struct {
	Calls     stats.Counter
	Errors    stats.Counter // failed calls of any kind, plus handler errors the host adds
	Traps     stats.Counter
	Timeouts  stats.Counter
	Budget    stats.Counter // calls stopped by a CPU budget
	Overload  stats.Counter
	Created   stats.Counter // instances created
	Discarded stats.Counter // instances closed, for any reason
	Evicted   stats.Counter // idle instances closed by the idle timeout or memory pressure
	Instances stats.Gauge   // live instances
	WorkUnits stats.Counter // instrumented work units run (the CPU metering unit)
	Latency   *stats.Histogram
	InitTime  *stats.Histogram // instance creation, including _initialize
}

// NewStats returns empty stats.
func NewStats() *Stats {
	return &Stats{Latency: stats.NewHistogram(stats.LatencyBuckets), InitTime: stats.NewHistogram(stats.LatencyBuckets)}
}

func (s *Stats) record(d time.Duration, err error) {
	s.Calls.Add(1)
	s.Latency.ObserveDuration(d)
	if err == nil {
		return
	}
	s.Errors.Add(1)
	var ce *CallError
	if errors.As(err, &ce) {
		switch ce.Kind {
		case KindTrap, KindInit, KindInvalid:
			s.Traps.Add(1)
		case KindTimeout:
			s.Timeouts.Add(1)
		case KindBudget:
			s.Budget.Add(1)
		case KindOverload:
			s.Overload.Add(1)
		}
	}
}

// Registered returns the hooks the plugin registered handlers for, and whether that is known yet (it is
// once an instance has initialised).
func (p *Pool) Registered() (abi.HookSet, bool) {
	r := p.registered.Load()
	return abi.HookSet(r), r != 0
}

// Probe starts one instance of m (initialisation and the ABI checks) and returns the hooks the plugin
// registers handlers for: what an upload must pass before it is accepted. host serves the host calls
// the plugin makes while initialising; nil makes them fail with StatusUnavailable.
func (e *Engine) Probe(ctx context.Context, m *Module, host abi.Host, deadline time.Duration) (abi.HookSet, error) {
	p, err := e.NewPool(PoolConfig{Name: "probe", Module: m, MaxInstances: 1, InitDeadline: deadline, InitHost: host})
	if err != nil {
		return 0, err
	}
	defer p.Close()
	if err := p.Warm(ctx, 1); err != nil {
		return 0, err
	}
	registered, _ := p.Registered()
	return m.Hooks & registered, nil
}
