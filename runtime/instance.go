package runtime

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/experimental"
	"github.com/tetratelabs/wazero/sys"

	"github.com/plinth-dev/plinth/abi"
)

// instance is one instantiated module. It is used by one call at a time: the pool hands it out through
// a slot and takes it back (or discards it) when the call ends, so its fields need no lock.
type instance struct {
	pool      *Pool
	mod       api.Module
	mem       api.Memory
	hooks     [8]api.Function   // by abi.Hook
	countdown api.MutableGlobal // nil unless instrumented
	cctx      callCtx
	stack     [2]uint64
	out       *guestOutput
	accounted int64         // bytes of linear memory counted in the engine's budget
	lastUsed  time.Duration // on the mono clock
}

// monoBase anchors the mono clock.
var monoBase = time.Now()

// mono reads the monotonic clock: half the cost of time.Now, which reads the wall clock too, and it is
// read several times per hook call.
func mono() time.Duration { return time.Since(monoBase) }

// callCtx is the context.Context every guest call runs with. Host functions reach the call's state
// through it without allocating: the instance reuses one callCtx for all its calls.
type callCtx struct {
	context.Context
	inst *instance

	// State of the call in progress.
	host     abi.Host
	input    []byte
	deadline time.Duration // on the mono clock
	ticks    int64         // tick host calls this call
	budget   int64         // work-unit cap; 0 none
	metered  bool          // charge the pool's Meter (hook calls; not instance initialisation)
	blocked  time.Duration // time spent blocked in I/O host calls, added to the deadline (hostmod.go)
	abort    error         // why tick stopped the call
}

type callCtxKey struct{}

// Value lets host functions find the call state even if wazero hands them a derived context.
func (c *callCtx) Value(key any) any {
	if key == (callCtxKey{}) {
		return c
	}
	return c.Context.Value(key)
}

// callFrom returns the call state of the guest call that invoked a host function.
func callFrom(ctx context.Context) *callCtx {
	if c, ok := ctx.(*callCtx); ok {
		return c
	}
	c, _ := ctx.Value(callCtxKey{}).(*callCtx)
	return c
}

// newInstance instantiates and initialises the pool's module. The caller holds a slot (or is Warm).
func (p *Pool) newInstance(ctx context.Context, host abi.Host) (*instance, error) {
	p.mu.Lock()
	estimate := p.lastSize
	p.mu.Unlock()
	if !p.engine.reserve(estimate, p) {
		return nil, p.fail(0, KindOverload, fmt.Errorf("the plugin memory budget (%d MiB) is exhausted",
			p.engine.cfg.MemoryBudget>>20))
	}
	start := mono()
	inst := &instance{pool: p, out: &guestOutput{pool: p}, accounted: estimate}
	inst.cctx.inst = inst
	if host == nil {
		host = unavailableHost{}
	}
	err := inst.init(ctx, host)
	if err != nil {
		if inst.mod != nil {
			inst.mod.Close(context.Background())
		}
		p.engine.release(estimate)
		return nil, err
	}
	p.stats.InitTime.ObserveDuration(mono() - start)
	p.stats.Created.Add(1)
	p.stats.Instances.Add(1)
	p.mu.Lock()
	p.live++
	p.mu.Unlock()
	p.resize(inst)
	return inst, nil
}

func (inst *instance) init(ctx context.Context, host abi.Host) error {
	p := inst.pool
	m := p.mod
	// GOMEMLIMIT keeps a Go guest's heap under the instance limit, so its GC works harder instead of
	// the instance dying at the limit; 3/4 leaves room for stacks and runtime structures.
	goMemLimit := m.MemoryLimit() * 3 / 4
	cfg := wazero.NewModuleConfig().
		WithName("").
		WithStartFunctions().
		WithArgs("plugin").
		WithEnv("GOMEMLIMIT", strconv.FormatInt(goMemLimit, 10)).
		WithSysWalltime().
		WithSysNanotime().
		WithRandSource(rand.Reader).
		WithStdout(inst.out).
		WithStderr(inst.out)
	inst.begin(ctx, host, nil, p.cfg.InitDeadline, 0)
	defer inst.end()
	ictx := context.Context(&inst.cctx)
	if a := memoryAllocator(); a != nil {
		ictx = experimental.WithMemoryAllocator(ictx, a)
	}
	mod, err := m.runtime.InstantiateModule(ictx, m.compiled, cfg)
	if err != nil {
		return p.fail(0, inst.initKind(err), inst.explain(err))
	}
	inst.mod = mod
	inst.mem = mod.Memory()
	if g, ok := mod.ExportedGlobal(exportCountdown).(api.MutableGlobal); ok {
		inst.countdown = g
	}
	if m.hasInit {
		if err := inst.invoke(mod.ExportedFunction(abi.ExportInitialize), 0); err != nil {
			return p.fail(0, inst.initKind(err), fmt.Errorf("_initialize: %w", inst.explain(err)))
		}
	}
	if err := inst.invoke(mod.ExportedFunction(abi.ExportABIVersion), 0); err != nil {
		return p.fail(0, KindInit, fmt.Errorf("%s: %w", abi.ExportABIVersion, inst.explain(err)))
	}
	if v := int32(inst.stack[0]); v != abi.Version {
		return p.fail(0, KindInit, invalid("the plugin was built for ABI v%d; this host serves v%d "+
			"(rebuild it with a matching SDK)", v, abi.Version))
	}
	if err := inst.invoke(mod.ExportedFunction(abi.ExportHooks), 0); err != nil {
		return p.fail(0, KindInit, fmt.Errorf("%s: %w", abi.ExportHooks, inst.explain(err)))
	}
	registered := abi.HookSet(inst.stack[0])
	for _, h := range abi.Hooks {
		if p.cfg.Hooks.Has(h) && !registered.Has(h) {
			return p.fail(0, KindInit, invalid("the plugin is bound to the %s hook but registers no %s "+
				"handler (with the Go SDK: call sdk.On%s in init)", h, h, exportedName(h)))
		}
		if (p.cfg.Hooks.Has(h) || p.cfg.Optional.Has(h)) && registered.Has(h) && m.Hooks.Has(h) {
			inst.hooks[h] = mod.ExportedFunction(h.Export())
		}
	}
	// Bit 0 is never a hook, so storing it marks the set as known even when it is empty.
	p.registered.Store(uint64(registered) | 1)
	return nil
}

func exportedName(h abi.Hook) string {
	switch h {
	case abi.HookRoute:
		return "Route"
	case abi.HookRateLimit:
		return "RateLimit"
	case abi.HookHandle:
		return "Handle"
	case abi.HookPrompt:
		return "Prompt"
	}
	return h.String()
}

// initKind classifies a failure during initialisation: stopped by the deadline or the caller's
// cancellation is a timeout like any call's; anything else is an init failure.
func (inst *instance) initKind(err error) Kind {
	if k := inst.classify(err); k == KindTimeout {
		return k
	}
	return KindInit
}

// begin prepares the call state. Deadline is the pool's limit; the caller's context may be earlier.
func (inst *instance) begin(ctx context.Context, host abi.Host, input []byte, limit time.Duration, budget int64) {
	c := &inst.cctx
	c.Context, c.host, c.input, c.ticks, c.budget, c.abort, c.metered, c.blocked = ctx, host, input, 0, budget, nil, false, 0
	// The caller's context deadline is not extended by blocked time: it is the caller's limit.
	c.deadline = mono() + limit
	if d, ok := ctx.Deadline(); ok {
		c.deadline = min(c.deadline, d.Sub(monoBase))
	}
	inst.out.begin()
	if inst.countdown != nil {
		inst.countdown.Set(uint64(uint32(inst.pool.engine.cfg.TickInterval)))
	}
}

// end clears references the call state holds, so an idle instance pins no request data.
func (inst *instance) end() {
	c := &inst.cctx
	c.Context, c.host, c.input = nil, nil, nil
}

// invoke calls fn with one argument, leaving its result in inst.stack[0].
func (inst *instance) invoke(fn api.Function, arg uint64) error {
	if fn == nil {
		return errors.New("export missing")
	}
	inst.stack[0] = arg
	ctx := context.Context(&inst.cctx)
	if inst.pool.engine.cfg.Preemption == PreemptCloseOnDone {
		// wazero closes the module when this context ends. It must not derive from &inst.cctx: the
		// context package would watch a parent of a foreign type from a goroutine that can outlive the
		// call and read the callCtx after end cleared it (or while the next call fills it in).
		dctx, cancel := context.WithDeadline(context.Background(), monoBase.Add(inst.cctx.deadline))
		defer cancel()
		if caller := inst.cctx.Context; caller != nil && caller.Done() != nil {
			defer context.AfterFunc(caller, cancel)()
		}
		ctx = callRef{dctx, &inst.cctx}
	}
	return fn.CallWithStack(ctx, inst.stack[:])
}

// callRef is the context of a close-on-done call: wazero watches its Done, and host functions find
// the call state through Value.
type callRef struct {
	context.Context
	c *callCtx
}

func (r callRef) Value(key any) any {
	if key == (callCtxKey{}) {
		return r.c
	}
	return r.c.Value(key)
}

// call runs one hook. Any error leaves the instance unusable (the pool discards it).
func (inst *instance) call(ctx context.Context, hook abi.Hook, input []byte, host abi.Host, dst []byte) ([]byte, error) {
	p := inst.pool
	fn := inst.hooks[hook]
	if fn == nil {
		return nil, p.fail(hook, KindInvalid, fmt.Errorf("the plugin registers no %s handler (with the Go SDK: "+
			"call sdk.On%s in init)", hook, exportedName(hook)))
	}
	meter := p.cfg.Meter
	if meter != nil && inst.countdown != nil {
		// A spent budget refuses the call before it runs rather than after 16384 units.
		if err := meter.Charge(0); err != nil {
			return nil, p.fail(hook, KindBudget, fmt.Errorf("%w: %v", errBudget, err))
		}
	}
	inst.begin(ctx, host, input, p.cfg.Deadline, p.cfg.CallBudget)
	inst.cctx.metered = true
	defer inst.end()
	err := inst.invoke(fn, uint64(len(input)))
	units := inst.workUnits()
	p.stats.WorkUnits.Add(units)
	if meter != nil && inst.countdown != nil {
		// tick charged whole intervals as they ran; charge the rest. Its error only matters to the next
		// call, which the check above then refuses.
		meter.Charge(units - inst.cctx.ticks*int64(p.engine.cfg.TickInterval))
	}
	if err != nil {
		return nil, p.fail(hook, inst.classify(err), inst.explain(err))
	}
	ptr, n := abi.UnpackResult(int64(inst.stack[0]))
	if int(n) > p.cfg.MaxResult {
		return nil, p.fail(hook, KindInvalid, fmt.Errorf("result of %d bytes exceeds the %d byte limit", n, p.cfg.MaxResult))
	}
	view, ok := inst.mem.Read(ptr, n)
	if !ok {
		return nil, p.fail(hook, KindInvalid, fmt.Errorf("result location [%d, +%d) is outside memory", ptr, n))
	}
	return append(dst[:0], view...), nil
}

// workUnits returns the work units the last call ran: every tick stands for TickInterval units, plus
// what the countdown consumed since the last tick.
func (inst *instance) workUnits() int64 {
	if inst.countdown == nil {
		return 0
	}
	interval := int64(inst.pool.engine.cfg.TickInterval)
	left := int64(int32(uint32(inst.countdown.Get())))
	return inst.cctx.ticks*interval + max(interval-left, 0)
}

// classify maps a call error to its kind.
func (inst *instance) classify(err error) Kind {
	c := &inst.cctx
	switch {
	case errors.Is(c.abort, errBudget):
		return KindBudget
	case c.abort != nil:
		return KindTimeout
	}
	var exit *sys.ExitError
	if errors.As(err, &exit) {
		switch exit.ExitCode() {
		case sys.ExitCodeDeadlineExceeded, sys.ExitCodeContextCanceled:
			return KindTimeout
		}
	}
	return KindTrap
}

// explain turns a wazero error into one a plugin author can act on: the abort reason for a stopped call,
// the exit code and the guest's last stderr line for an exit (Go's runtime reports "fatal error: out of
// memory" or a panic that way), the trap's first line otherwise.
func (inst *instance) explain(err error) error {
	c := &inst.cctx
	if c.abort != nil {
		return c.abort
	}
	var exit *sys.ExitError
	if errors.As(err, &exit) {
		switch exit.ExitCode() {
		case sys.ExitCodeDeadlineExceeded:
			return fmt.Errorf("deadline exceeded")
		case sys.ExitCodeContextCanceled:
			return fmt.Errorf("request cancelled")
		}
		if last := inst.out.lastError(); last != "" {
			return fmt.Errorf("exited with code %d: %s", exit.ExitCode(), last)
		}
		return fmt.Errorf("exited with code %d", exit.ExitCode())
	}
	// A Go guest's fatal error (out of memory, unrecovered panic) prints its reason and then executes
	// `unreachable`: the printed reason is what the author needs.
	if fatal := inst.out.fatalLine(); fatal != "" {
		return errors.New("crashed: " + fatal)
	}
	msg, _, _ := strings.Cut(err.Error(), "\n")
	if last := inst.out.lastError(); last != "" {
		msg += " (last output: " + last + ")"
	}
	return errors.New(msg)
}

func (inst *instance) close() {
	if inst.mod != nil {
		inst.mod.Close(context.Background())
	}
}

// guestOutput collects a guest's stdout and stderr: lines go to the host log attributed to the plugin,
// capped per call so a plugin cannot flood the log, and the telling lines are kept for error messages.
type guestOutput struct {
	pool    *Pool
	mu      sync.Mutex // Write runs on the calling goroutine, lastError after the call; keep them apart
	line    []byte     // incomplete line
	fatal   string     // first "fatal error:"/"panic:" line of this call (Go's runtime reports so)
	last    string     // last complete line of this call
	written int        // bytes this call
}

const guestOutputCap = 64 << 10

func (o *guestOutput) begin() {
	o.mu.Lock()
	o.line, o.fatal, o.last, o.written = o.line[:0], "", "", 0
	o.mu.Unlock()
}

func (o *guestOutput) Write(b []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := len(b)
	if o.written >= guestOutputCap {
		return n, nil
	}
	if o.written+len(b) > guestOutputCap {
		b = b[:guestOutputCap-o.written]
	}
	o.written += len(b)
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			o.line = append(o.line, b...)
			break
		}
		o.line = append(o.line, b[:i]...)
		o.emit()
		b = b[i+1:]
	}
	if o.written >= guestOutputCap {
		o.line = append(o.line, " [output truncated]"...)
		o.emit()
	}
	return n, nil
}

// emit logs the pending line. Caller holds mu.
func (o *guestOutput) emit() {
	line := string(o.line)
	o.line = o.line[:0]
	if line == "" {
		return
	}
	o.pool.engine.log.Info(line, "plugin", o.pool.cfg.Name, "source", "guest")
	if o.fatal == "" && (strings.HasPrefix(line, "fatal error:") || strings.HasPrefix(line, "panic:") ||
		strings.HasPrefix(line, "runtime: out of memory")) {
		o.fatal = line
	}
	o.last = line
}

// lastError returns the most telling output line of the call: Go's "fatal error:" or "panic:" line if
// there is one, else the last line.
func (o *guestOutput) lastError() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.line) > 0 {
		o.emit()
	}
	if o.fatal != "" {
		return o.fatal
	}
	return o.last
}

// fatalLine returns the call's "fatal error:"/"panic:" line, or "".
func (o *guestOutput) fatalLine() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.line) > 0 {
		o.emit()
	}
	return o.fatal
}
