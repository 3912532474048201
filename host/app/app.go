// Package app assembles the Plinth server from its configuration: logger, plugin engine, tenants,
// HTTP server, and the signal-driven shutdown. The binary's main and the tests that run a whole server
// both start here.
package app

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/plinth-dev/plinth/abi"
	"github.com/plinth-dev/plinth/host/config"
	"github.com/plinth-dev/plinth/host/defaults"
	"github.com/plinth-dev/plinth/host/server"
	"github.com/plinth-dev/plinth/host/store"
	"github.com/plinth-dev/plinth/host/tenant"
	"github.com/plinth-dev/plinth/runtime"
)

// App is a running Plinth server.
type App struct {
	Config config.Config
	Log    *slog.Logger
	Engine *runtime.Engine
	Store  *store.Store
	Server *server.Server
	// DemoKey is the demo tenant's API key when the setup has a demo tenant (printed at start).
	DemoKey string

	ln net.Listener
}

// New builds the server from cfg without listening yet. out receives the start-up banner (keys).
func New(ctx context.Context, cfg config.Config, logOut io.Writer) (*App, error) {
	log, err := newLogger(cfg, logOut)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	pre, err := parsePreemption(cfg.Preemption)
	if err != nil {
		return nil, err
	}
	engine, err := runtime.New(runtime.Config{
		CacheDir:     filepath.Join(cfg.DataDir, "cache"),
		MemoryBudget: cfg.PluginMemoryBudget,
		Preemption:   pre,
		Logger:       log,
	})
	if err != nil {
		return nil, err
	}
	st, err := store.OpenDir(filepath.Join(cfg.DataDir, "store"))
	if err != nil {
		engine.Close(ctx)
		return nil, err
	}
	a := &App{Config: cfg, Log: log, Engine: engine, Store: st}
	modules := &memModules{m: map[string][]byte{}}
	snap, demoKey, err := fromConfig(cfg, modules)
	if err != nil {
		a.close()
		return nil, err
	}
	a.DemoKey = demoKey
	srv, err := server.New(server.Options{
		Engine:       engine,
		Modules:      modules,
		Logger:       log,
		MaxBodyBytes: cfg.MaxBodyBytes,
		ReadTimeout:  cfg.ReadTimeout.D(),
		WriteTimeout: cfg.WriteTimeout.D(),
		IdleTimeout:  cfg.IdleTimeout.D(),
		Store:        st,
	})
	if err != nil {
		a.close()
		return nil, err
	}
	a.Server = srv
	if err := srv.Apply(ctx, snap); err != nil {
		a.close()
		return nil, err
	}
	return a, nil
}

// Listen binds the configured address.
func (a *App) Listen() (net.Addr, error) {
	ln, err := net.Listen("tcp", a.Config.Addr)
	if err != nil {
		return nil, err
	}
	a.ln = ln
	return ln.Addr(), nil
}

// Serve serves until ctx is done, then drains in-flight requests (up to the shutdown timeout) and closes
// everything.
func (a *App) Serve(ctx context.Context) error {
	if a.ln == nil {
		if _, err := a.Listen(); err != nil {
			return err
		}
	}
	errc := make(chan error, 1)
	go func() { errc <- a.Server.Serve(a.ln) }()
	a.Log.Info("plinth listening", "addr", a.ln.Addr().String(), "data_dir", a.Config.DataDir,
		"preemption", a.Engine.Preemption().String())
	select {
	case err := <-errc:
		a.close()
		return err
	case <-ctx.Done():
	}
	a.Log.Info("shutting down: draining in-flight requests", "timeout", a.Config.ShutdownTimeout.D().String())
	sctx, cancel := context.WithTimeout(context.Background(), a.Config.ShutdownTimeout.D())
	defer cancel()
	err := a.Server.Shutdown(sctx)
	a.close()
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	a.Log.Info("stopped")
	return nil
}

func (a *App) close() {
	a.Engine.Close(context.Background())
	if err := a.Store.Close(); err != nil {
		a.Log.Error("closing the store", "err", err)
	}
}

func parsePreemption(s string) (runtime.Preemption, error) {
	switch s {
	case "", "instrument":
		return runtime.PreemptInstrument, nil
	case "close-on-done":
		return runtime.PreemptCloseOnDone, nil
	case "none":
		return runtime.PreemptNone, nil
	}
	return 0, fmt.Errorf("preemption %q: want instrument, close-on-done or none", s)
}

func newLogger(cfg config.Config, out io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		return nil, fmt.Errorf("log level %q: %w", cfg.LogLevel, err)
	}
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(out, opts)), nil
	}
	return slog.New(slog.NewTextHandler(out, opts)), nil
}

// memModules is a ModuleSource over modules loaded from the config.
type memModules struct {
	mu sync.RWMutex
	m  map[string][]byte // guarded by mu
}

func (m *memModules) Module(_ context.Context, hash string) ([]byte, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	b, ok := m.m[hash]
	if !ok {
		return nil, errors.New("module not found")
	}
	return b, nil
}

func (m *memModules) add(b []byte) string {
	h := runtime.ModuleHash(b)
	m.mu.Lock()
	m.m[h] = b
	m.mu.Unlock()
	return h
}

// fromConfig builds the tenant snapshot of a configuration: the config file's tenants, or the embedded
// default setup when the file names none. It returns the demo tenant's key (generated when the
// configuration does not set one).
func fromConfig(cfg config.Config, modules *memModules) (*tenant.Snapshot, string, error) {
	tenants := cfg.Tenants
	if len(tenants) == 0 && cfg.ConfigFile == "" {
		var def config.Config
		if err := config.Parse(defaults.Config(), &def); err != nil {
			return nil, "", fmt.Errorf("embedded default config: %w", err)
		}
		tenants = def.Tenants
	}
	var ts []*tenant.Tenant
	var keys []*tenant.Key
	demoKey := ""
	for _, tc := range tenants {
		t := &tenant.Tenant{ID: tc.ID, Name: tc.Name, Demo: tc.Demo, Plugins: map[string]*tenant.Plugin{},
			Bindings: map[abi.Hook]string{}, Limits: limitsFromConfig(tc.Limits)}
		for _, pc := range tc.Plugins {
			wasm, err := loadWasm(&cfg, pc.Wasm)
			if err != nil {
				return nil, "", fmt.Errorf("tenant %s plugin %s: %w", tc.ID, pc.Name, err)
			}
			t.Plugins[pc.Name] = &tenant.Plugin{Name: pc.Name, Version: 1, Hash: modules.add(wasm),
				Config: []byte(pc.Config)}
			for _, hn := range pc.Hooks {
				h, ok := abi.ParseHook(hn)
				if !ok || h == abi.HookHandle {
					return nil, "", fmt.Errorf("tenant %s plugin %s: cannot bind hook %q (route, ratelimit or prompt)", tc.ID, pc.Name, hn)
				}
				if other, dup := t.Bindings[h]; dup {
					return nil, "", fmt.Errorf("tenant %s: %s hook bound to both %s and %s", tc.ID, h, other, pc.Name)
				}
				t.Bindings[h] = pc.Name
			}
		}
		for _, kc := range tc.Keys {
			h, err := tenant.ParseHash(kc.SHA256)
			if err != nil {
				return nil, "", fmt.Errorf("tenant %s key %s: %w", tc.ID, kc.ID, err)
			}
			keys = append(keys, &tenant.Key{ID: kc.ID, Tenant: tc.ID, Label: kc.Label, Hash: h, Admin: kc.Admin})
		}
		if tc.Demo {
			if demoKey != "" {
				return nil, "", errors.New("more than one demo tenant")
			}
			demoKey = cfg.DemoKey
			if demoKey == "" {
				demoKey = NewKey()
			}
			keys = append(keys, &tenant.Key{ID: "demo-key", Tenant: tc.ID, Label: "default",
				Hash: tenant.HashKey([]byte(demoKey)), Admin: true})
		}
		ts = append(ts, t)
	}
	snap, err := tenant.NewSnapshot(ts, keys)
	return snap, demoKey, err
}

func limitsFromConfig(l config.Limits) tenant.Limits {
	return tenant.Limits{
		PluginMemoryBytes: l.PluginMemoryBytes,
		PluginDeadline:    l.PluginDeadline.D(),
		PluginInstances:   l.PluginInstances,
		StorageBytes:      l.StorageBytes,
		StorageKeys:       l.StorageKeys,
		RequestBytes:      l.RequestBytes,
		CPUPerCall:        l.CPUPerCall,
		CPUPerMinute:      l.CPUPerMinute,

		ConversationRetention: l.ConversationRetention.D(),
	}
}

func loadWasm(cfg *config.Config, src string) ([]byte, error) {
	if name, ok := strings.CutPrefix(src, "embedded:"); ok {
		return defaults.Plugin(name)
	}
	return os.ReadFile(cfg.ResolvePath(src))
}

// NewKey returns a new random API key: "pk-" and 32 base32 characters (160 bits).
func NewKey() string {
	var b [20]byte
	rand.Read(b[:])
	return "pk-" + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:]))
}

// Banner returns the start-up lines that tell a user how to call the server.
func (a *App) Banner() string {
	if a.DemoKey == "" || a.ln == nil {
		return ""
	}
	var b strings.Builder
	base := "http://" + a.ln.Addr().String()
	fmt.Fprintf(&b, "\nPlinth is running at %s\n", base)
	fmt.Fprintf(&b, "  demo tenant API key: %s\n", a.DemoKey)
	fmt.Fprintf(&b, "  try: curl -s %s/v1/models -H 'Authorization: Bearer %s'\n\n", base, a.DemoKey)
	return b.String()
}
