package runtime

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"

	"github.com/plinth-dev/plinth/abi"
)

// The plinth host module. Every function is a stack-based api.GoModuleFunc (no reflection): it finds the
// call in progress through its context, turns (pointer, length) pairs into views of guest memory, and
// delegates to the call's abi.Host. A pointer range outside memory yields StatusInvalidArgument rather
// than a trap, so a buggy guest gets an error it can handle.

const (
	// funcTick is the host function the instrumentation imports; see preempt.go.
	funcTick = "tick"
	// exportCountdown is the export name of the instrumentation's countdown global.
	exportCountdown = "plinth_countdown"
)

func instantiateHostModule(ctx context.Context, r wazero.Runtime, e *Engine) error {
	b := r.NewHostModuleBuilder(abi.HostModule)
	def := func(name string, f api.GoModuleFunc) {
		sig := hostSignatures[name]
		b.NewFunctionBuilder().WithGoModuleFunction(f, sig[0], sig[1]).WithName(name).Export(name)
	}
	def(abi.FuncInput, hostInput)
	def(abi.FuncLog, hostLog)
	def(abi.FuncConfig, hostConfig)
	def(abi.FuncRLTake, hostRLTake)
	def(abi.FuncKVGet, hostKVGet)
	def(abi.FuncKVPut, hostKVPut)
	def(abi.FuncKVDelete, hostKVDelete)
	def(abi.FuncKVIncr, hostKVIncr)
	def(abi.FuncKVCAS, hostKVCAS)
	def(abi.FuncKVScan, hostKVScan)
	def(abi.FuncSearch, hostSearch)
	def(abi.FuncLLMOpen, hostLLMOpen)
	def(abi.FuncLLMRead, hostLLMRead)
	def(abi.FuncLLMClose, hostLLMClose)
	def(abi.FuncRespStart, hostRespStart)
	def(abi.FuncRespWrite, hostRespWrite)
	b.NewFunctionBuilder().WithGoModuleFunction(api.GoModuleFunc(e.tick), nil, nil).WithName(funcTick).Export(funcTick)
	_, err := b.Instantiate(ctx)
	return err
}

func status(s abi.Status) uint64 { return api.EncodeI32(int32(s)) }

// view returns guest memory [ptr, ptr+n) without copying.
func view(mod api.Module, ptr, n uint64) ([]byte, bool) {
	return mod.Memory().Read(uint32(ptr), uint32(n))
}

// optView is view for the optional arguments of kv_cas, where length -1 means absent (nil).
func optView(mod api.Module, ptr, n uint64) ([]byte, bool) {
	if int32(uint32(n)) == -1 {
		return nil, true
	}
	return view(mod, ptr, n)
}

func hostInput(ctx context.Context, mod api.Module, stack []uint64) {
	c := callFrom(ctx)
	buf, ok := view(mod, stack[0], stack[1])
	if !ok || c == nil {
		stack[0] = status(abi.StatusInvalidArgument)
		return
	}
	stack[0] = api.EncodeI32(abi.Fit(buf, c.input))
}

func hostLog(ctx context.Context, mod api.Module, stack []uint64) {
	c := callFrom(ctx)
	msg, ok := view(mod, stack[1], stack[2])
	if ok && c != nil {
		c.host.Log(int32(uint32(stack[0])), msg)
	}
}

func hostConfig(ctx context.Context, mod api.Module, stack []uint64) {
	c := callFrom(ctx)
	buf, ok := view(mod, stack[0], stack[1])
	if !ok || c == nil {
		stack[0] = status(abi.StatusInvalidArgument)
		return
	}
	stack[0] = api.EncodeI32(c.host.Config(buf))
}

func hostRLTake(ctx context.Context, mod api.Module, stack []uint64) {
	c := callFrom(ctx)
	key, ok1 := view(mod, stack[0], stack[1])
	out, ok2 := view(mod, stack[6], abi.RLResultSize)
	if !ok1 || !ok2 || c == nil {
		stack[0] = status(abi.StatusInvalidArgument)
		return
	}
	stack[0] = api.EncodeI32(c.host.RLTake(key, int64(stack[2]), int64(stack[3]), int64(stack[4]), int64(stack[5]), out))
}

func hostKVGet(ctx context.Context, mod api.Module, stack []uint64) {
	c := callFrom(ctx)
	key, ok1 := view(mod, stack[0], stack[1])
	buf, ok2 := view(mod, stack[2], stack[3])
	if !ok1 || !ok2 || c == nil {
		stack[0] = status(abi.StatusInvalidArgument)
		return
	}
	stack[0] = api.EncodeI32(c.host.KVGet(key, buf))
}

func hostKVPut(ctx context.Context, mod api.Module, stack []uint64) {
	c := callFrom(ctx)
	key, ok1 := view(mod, stack[0], stack[1])
	val, ok2 := view(mod, stack[2], stack[3])
	if !ok1 || !ok2 || c == nil {
		stack[0] = status(abi.StatusInvalidArgument)
		return
	}
	stack[0] = api.EncodeI32(c.host.KVPut(key, val, int64(stack[4])))
}

func hostKVDelete(ctx context.Context, mod api.Module, stack []uint64) {
	c := callFrom(ctx)
	key, ok := view(mod, stack[0], stack[1])
	if !ok || c == nil {
		stack[0] = status(abi.StatusInvalidArgument)
		return
	}
	stack[0] = api.EncodeI32(c.host.KVDelete(key))
}

func hostKVIncr(ctx context.Context, mod api.Module, stack []uint64) {
	c := callFrom(ctx)
	key, ok1 := view(mod, stack[0], stack[1])
	out, ok2 := view(mod, stack[4], 8)
	if !ok1 || !ok2 || c == nil {
		stack[0] = status(abi.StatusInvalidArgument)
		return
	}
	stack[0] = api.EncodeI32(c.host.KVIncr(key, int64(stack[2]), int64(stack[3]), out))
}

func hostKVCAS(ctx context.Context, mod api.Module, stack []uint64) {
	c := callFrom(ctx)
	key, ok1 := view(mod, stack[0], stack[1])
	old, ok2 := optView(mod, stack[2], stack[3])
	nw, ok3 := optView(mod, stack[4], stack[5])
	if !ok1 || !ok2 || !ok3 || c == nil {
		stack[0] = status(abi.StatusInvalidArgument)
		return
	}
	stack[0] = api.EncodeI32(c.host.KVCAS(key, old, nw, int64(stack[6])))
}

func hostKVScan(ctx context.Context, mod api.Module, stack []uint64) {
	c := callFrom(ctx)
	req, ok1 := view(mod, stack[0], stack[1])
	buf, ok2 := view(mod, stack[2], stack[3])
	if !ok1 || !ok2 || c == nil {
		stack[0] = status(abi.StatusInvalidArgument)
		return
	}
	stack[0] = api.EncodeI32(c.host.KVScan(req, buf))
}

func hostSearch(ctx context.Context, mod api.Module, stack []uint64) {
	c := callFrom(ctx)
	req, ok1 := view(mod, stack[0], stack[1])
	buf, ok2 := view(mod, stack[2], stack[3])
	if !ok1 || !ok2 || c == nil {
		stack[0] = status(abi.StatusInvalidArgument)
		return
	}
	start := c.blockStart()
	stack[0] = api.EncodeI32(c.host.Search(req, buf))
	c.blockEnd(start)
}

func hostLLMOpen(ctx context.Context, mod api.Module, stack []uint64) {
	c := callFrom(ctx)
	req, ok := view(mod, stack[0], stack[1])
	if !ok || c == nil {
		stack[0] = status(abi.StatusInvalidArgument)
		return
	}
	start := c.blockStart()
	stack[0] = api.EncodeI32(c.host.LLMOpen(req))
	c.blockEnd(start)
}

func hostLLMRead(ctx context.Context, mod api.Module, stack []uint64) {
	c := callFrom(ctx)
	buf, ok := view(mod, stack[1], stack[2])
	if !ok || c == nil {
		stack[0] = status(abi.StatusInvalidArgument)
		return
	}
	start := c.blockStart()
	stack[0] = api.EncodeI32(c.host.LLMRead(int32(uint32(stack[0])), buf))
	c.blockEnd(start)
}

func hostLLMClose(ctx context.Context, _ api.Module, stack []uint64) {
	c := callFrom(ctx)
	if c == nil {
		stack[0] = status(abi.StatusInvalidArgument)
		return
	}
	stack[0] = api.EncodeI32(c.host.LLMClose(int32(uint32(stack[0]))))
}

func hostRespStart(ctx context.Context, mod api.Module, stack []uint64) {
	c := callFrom(ctx)
	resp, ok := view(mod, stack[0], stack[1])
	if !ok || c == nil {
		stack[0] = status(abi.StatusInvalidArgument)
		return
	}
	stack[0] = api.EncodeI32(c.host.RespStart(resp))
}

func hostRespWrite(ctx context.Context, mod api.Module, stack []uint64) {
	c := callFrom(ctx)
	data, ok := view(mod, stack[0], stack[1])
	if !ok || c == nil {
		stack[0] = status(abi.StatusInvalidArgument)
		return
	}
	start := c.blockStart()
	stack[0] = api.EncodeI32(c.host.RespWrite(data))
	c.blockEnd(start)
}

// maxBlocked caps how much a call's deadline moves for time spent blocked in host calls.
const maxBlocked = 5 * time.Minute

// blockStart and blockEnd bracket a host call that waits on I/O (search, LLM streams, the client). The
// time it blocks does not count against the call's deadline, which bounds the plugin's own running time:
// a handle hook that streams an answer spends seconds in llm_read and resp_write, and those calls have
// their own timeouts (the provider's first-token and idle timeouts, the client's write deadline). The
// extension is capped (maxBlocked) so a plugin cannot hold an instance indefinitely.
func (c *callCtx) blockStart() time.Duration { return mono() }

func (c *callCtx) blockEnd(start time.Duration) {
	d := mono() - start
	if c.blocked+d > maxBlocked {
		d = max(maxBlocked-c.blocked, 0)
	}
	c.blocked += d
	c.deadline += d
}

// errBudget marks a call stopped by its CPU budget.
var errBudget = errors.New("CPU budget exceeded")

// tick is the instrumentation's check, called every TickInterval loop iterations or function entries.
// Being a Go function, it is also where a spinning guest's goroutine reaches a GC safe point. To stop a
// call it panics; wazero unwinds the guest and returns the panic value as the call's error, and the pool
// discards the instance.
func (e *Engine) tick(ctx context.Context, _ api.Module, _ []uint64) {
	c := callFrom(ctx)
	if c == nil {
		return
	}
	c.ticks++
	interval := int64(e.cfg.TickInterval)
	switch {
	case mono() > c.deadline:
		c.abort = fmt.Errorf("deadline exceeded (limit %v)", c.inst.pool.cfg.Deadline)
	case c.Context != nil && c.Context.Err() != nil:
		c.abort = fmt.Errorf("request cancelled: %w", c.Context.Err())
	case c.budget > 0 && c.ticks*interval > c.budget:
		c.abort = fmt.Errorf("%w (limit %d work units per call)", errBudget, c.budget)
	}
	if c.abort == nil && c.metered && c.inst.pool.cfg.Meter != nil {
		if err := c.inst.pool.cfg.Meter.Charge(interval); err != nil {
			c.abort = fmt.Errorf("%w: %v", errBudget, err)
		}
	}
	if c.abort != nil {
		panic(c.abort)
	}
}

// unavailableHost serves the host calls of an instance initialising without a host: every call fails
// with StatusUnavailable and logs are dropped.
type unavailableHost struct{}

func (unavailableHost) Log(int32, []byte)   {}
func (unavailableHost) Config([]byte) int32 { return int32(abi.StatusUnavailable) }
func (unavailableHost) RLTake([]byte, int64, int64, int64, int64, []byte) int32 {
	return int32(abi.StatusUnavailable)
}
func (unavailableHost) KVGet([]byte, []byte) int32        { return int32(abi.StatusUnavailable) }
func (unavailableHost) KVPut([]byte, []byte, int64) int32 { return int32(abi.StatusUnavailable) }
func (unavailableHost) KVDelete([]byte) int32             { return int32(abi.StatusUnavailable) }
func (unavailableHost) KVIncr([]byte, int64, int64, []byte) int32 {
	return int32(abi.StatusUnavailable)
}
func (unavailableHost) KVCAS([]byte, []byte, []byte, int64) int32 {
	return int32(abi.StatusUnavailable)
}
func (unavailableHost) KVScan([]byte, []byte) int32 { return int32(abi.StatusUnavailable) }
func (unavailableHost) Search([]byte, []byte) int32 { return int32(abi.StatusUnavailable) }
func (unavailableHost) LLMOpen([]byte) int32        { return int32(abi.StatusUnavailable) }
func (unavailableHost) LLMRead(int32, []byte) int32 { return int32(abi.StatusUnavailable) }
func (unavailableHost) LLMClose(int32) int32        { return int32(abi.StatusUnavailable) }
func (unavailableHost) RespStart([]byte) int32      { return int32(abi.StatusUnavailable) }
func (unavailableHost) RespWrite([]byte) int32      { return int32(abi.StatusUnavailable) }

var _ abi.Host = unavailableHost{}
