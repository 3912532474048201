package server

import (
	"context"
	"crypto/sha256"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/plinth-dev/plinth/abi"
	"github.com/plinth-dev/plinth/host/store"
	"github.com/plinth-dev/plinth/host/tenant"
	"github.com/plinth-dev/plinth/runtime"
)

// ModuleSource returns a tenant's plugin module by the hex SHA-256 of its content.
type ModuleSource interface {
	Module(ctx context.Context, tenant, hash string) ([]byte, error)
}

// storeModules serves modules from the store's plugin registry.
type storeModules struct{ s *store.Store }

func (m storeModules) Module(_ context.Context, tenantID, hash string) ([]byte, error) {
	return m.s.Module(tenantID, hash)
}

// pluginRT is a loaded plugin version of one tenant: its pool of instances and its configuration.
// Pools are shared between successive states while the plugin, its version, configuration and the
// tenant's limits stay the same, so a reload that changes one plugin keeps every other warm.
type pluginRT struct {
	key     pluginKey
	tenant  string
	name    string
	version int
	config  []byte
	label   string // "tenant/name@version", in errors, logs and metrics
	quota   store.Quota
	pool    *runtime.Pool
	loadErr error // why the plugin could not be loaded; its requests fail with it
	refs    int   // states using it; guarded by Server.stateMu
}

// pluginKey identifies a pluginRT for reuse across states.
type pluginKey struct {
	tenant, name, hash string
	version            int
	config             [32]byte
	limits             tenant.Limits
	hooks              abi.HookSet
}

// tenantRT is the per-state runtime view of a tenant.
type tenantRT struct {
	t       *tenant.Tenant
	limits  tenant.Limits // with defaults applied
	hooks   [8]*pluginRT  // bound plugin by abi.Hook
	plugins map[string]*pluginRT
	stats   *tenantStats
	// modelsJSON caches the tenant's GET /v1/models answer for this state (see listModels).
	modelsJSON atomic.Pointer[[]byte]
}

// state is one consistent configuration of the server: a tenant snapshot and its loaded plugins.
// Requests pin the state they started with; a swap retires the old state, whose plugins are released
// once its last request ends (see acquire).
type state struct {
	snap     *tenant.Snapshot
	tenants  map[string]*tenantRT
	plugins  []*pluginRT
	inflight atomic.Int64
	retired  atomic.Bool
}

// acquire pins the current state for a request. The retired flag is checked after the increment and
// retire checks inflight after setting the flag; with sequentially consistent atomics one of the two
// sides always sees the other, so a released state never has a request inside.
func (s *Server) acquire() *state {
	for {
		st := s.cur.Load()
		st.inflight.Add(1)
		if !st.retired.Load() {
			return st
		}
		st.inflight.Add(-1)
	}
}

func (st *state) release() { st.inflight.Add(-1) }

// Apply builds a state from snap, loading the plugins it needs, and swaps it in. Requests in flight
// finish on the old state; new requests see the new one. A plugin that fails to load does not fail
// Apply: its tenant's requests that need it get an error naming it, and the error is logged.
func (s *Server) Apply(ctx context.Context, snap *tenant.Snapshot) error {
	s.stateMu.Lock()
	defer s.stateMu.Unlock()
	st := &state{snap: snap, tenants: map[string]*tenantRT{}}
	for _, t := range snap.Tenants() {
		trt := &tenantRT{t: t, limits: t.Limits.WithDefaults(), plugins: map[string]*pluginRT{},
			stats: s.metrics.tenant(t.ID)}
		bound := map[string]abi.HookSet{}
		for h, name := range t.Bindings {
			bound[name] = bound[name].With(h)
		}
		for name, p := range t.Plugins {
			prt := s.loadPlugin(ctx, t, trt.limits, p, bound[name])
			prt.refs++
			st.plugins = append(st.plugins, prt)
			trt.plugins[name] = prt
		}
		for h, name := range t.Bindings {
			trt.hooks[h] = trt.plugins[name]
		}
		st.tenants[t.ID] = trt
	}
	old := s.cur.Swap(st)
	if old != nil {
		go s.retire(old)
	}
	return nil
}

// retire waits for the old state's last request and releases its plugins.
func (s *Server) retire(old *state) {
	old.retired.Store(true)
	for old.inflight.Load() > 0 {
		time.Sleep(5 * time.Millisecond)
	}
	s.stateMu.Lock()
	defer s.stateMu.Unlock()
	for _, p := range old.plugins {
		p.refs--
		if p.refs == 0 {
			delete(s.live, p.key)
			if p.pool != nil {
				p.pool.Close()
			}
		}
	}
}

// loadPlugin returns the live pluginRT for p, or loads it. Caller holds stateMu.
func (s *Server) loadPlugin(ctx context.Context, t *tenant.Tenant, limits tenant.Limits, p *tenant.Plugin, bound abi.HookSet) *pluginRT {
	key := pluginKey{tenant: t.ID, name: p.Name, hash: p.Hash, version: p.Version,
		config: sha256.Sum256(p.Config), limits: limits, hooks: bound}
	if prt, ok := s.live[key]; ok {
		return prt
	}
	prt := &pluginRT{key: key, tenant: t.ID, name: p.Name, version: p.Version, config: p.Config,
		label: fmt.Sprintf("%s/%s@%d", t.ID, p.Name, p.Version),
		quota: store.Quota{Bytes: limits.StorageBytes, Keys: limits.StorageKeys}}
	s.live[key] = prt
	pool, err := s.newPool(ctx, prt, limits, p.Hash, bound)
	if err != nil {
		prt.loadErr = err
		s.log.Error("plugin failed to load", "plugin", prt.label, "err", err)
		return prt
	}
	prt.pool = pool
	// Warm one instance in the background so the first request does not pay for instantiation.
	go func() {
		if err := pool.Warm(context.Background(), 1); err != nil {
			s.log.Warn("plugin warm-up failed", "plugin", prt.label, "err", err)
		}
	}()
	return prt
}

func (s *Server) newPool(ctx context.Context, prt *pluginRT, limits tenant.Limits, hash string, bound abi.HookSet) (*runtime.Pool, error) {
	wasm, err := s.modules.Module(ctx, prt.tenant, hash)
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", hash, err)
	}
	m, err := s.engine.Compile(ctx, wasm, runtime.CompileOptions{MemoryLimit: limits.PluginMemoryBytes})
	if err != nil {
		return nil, err
	}
	defer m.Release()
	var optional abi.HookSet
	if m.Hooks.Has(abi.HookHandle) {
		optional = optional.With(abi.HookHandle)
	}
	return s.engine.NewPool(runtime.PoolConfig{
		Name:         prt.label,
		Module:       m,
		Hooks:        bound,
		Optional:     optional,
		MaxInstances: limits.PluginInstances,
		Deadline:     limits.PluginDeadline,
		CallBudget:   limits.CPUPerCall,
		Meter:        s.metrics.tenant(prt.tenant).cpuMeter(limits.CPUPerMinute),
		InitHost:     &hostCall{s: s, plugin: prt},
		Stats:        s.metrics.plugin(prt.tenant, prt.name),
	})
}

// call runs a hook of a plugin for a request, with a hostCall serving its host calls.
func (s *Server) call(ctx context.Context, prt *pluginRT, hook abi.Hook, rid string, input, dst []byte) ([]byte, error) {
	out, _, err := s.callCountingTokens(ctx, prt, hook, rid, input, dst)
	return out, err
}

// callCountingTokens is call that also returns the tokens the LLM streams the plugin opened used.
func (s *Server) callCountingTokens(ctx context.Context, prt *pluginRT, hook abi.Hook, rid string, input, dst []byte) ([]byte, int64, error) {
	if prt.loadErr != nil {
		return nil, 0, &runtime.CallError{Plugin: prt.label, Hook: hook, Kind: runtime.KindInit, Err: prt.loadErr}
	}
	hc := hostCallPool.Get().(*hostCall)
	hc.s, hc.plugin, hc.ctx, hc.requestID = s, prt, ctx, rid
	out, err := prt.pool.Call(ctx, hook, input, hc, dst)
	hc.finish()
	tokens := hc.llmTokens
	*hc = hostCall{keyBuf: hc.keyBuf[:0]}
	hostCallPool.Put(hc)
	return out, tokens, err
}

var hostCallPool = sync.Pool{New: func() any { return new(hostCall) }}

// closePlugins closes every live pool (at shutdown).
func (s *Server) closePlugins() {
	s.stateMu.Lock()
	defer s.stateMu.Unlock()
	for k, p := range s.live {
		if p.pool != nil {
			p.pool.Close()
		}
		delete(s.live, k)
	}
}

// mayHandle reports whether the plugin can serve the handle hook, as far as is known: a plugin whose
// instances have not initialised yet gets the benefit of the doubt (the call then fails clearly).
func (p *pluginRT) mayHandle() bool {
	if p.pool == nil {
		return p.loadErr != nil // report the load error rather than "unknown plugin"
	}
	reg, known := p.pool.Registered()
	return !known || reg.Has(abi.HookHandle)
}
