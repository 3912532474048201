// Package app assembles the Plinth server from its configuration: logger, plugin engine, tenants,
// HTTP server, and the signal-driven shutdown. The binary's main and the tests that run a whole server
// both start here.
package app

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	_ "net/http/pprof" // served only when PprofAddr is set
	"os"
	"path/filepath"
	"strings"

	"github.com/plinth-dev/plinth/abi"
	"github.com/plinth-dev/plinth/host/config"
	"github.com/plinth-dev/plinth/host/defaults"
	"github.com/plinth-dev/plinth/host/llm"
	"github.com/plinth-dev/plinth/host/search"
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
	Search *search.Service
	Server *server.Server
	// DemoKey is the demo tenant's API key when the setup has a demo tenant (printed at start).
	DemoKey string
	// OperatorKey authorises the operator admin API (printed at start when it was generated).
	OperatorKey       string
	operatorGenerated bool

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
	if err := seed(ctx, cfg, st, engine); err != nil {
		a.close()
		return nil, fmt.Errorf("seeding the data directory: %w", err)
	}
	if err := refreshEmbedded(ctx, st, engine, log); err != nil {
		a.close()
		return nil, err
	}
	if a.DemoKey, err = demoKey(cfg, st); err != nil {
		a.close()
		return nil, err
	}
	snap, err := st.Snapshot()
	if err != nil {
		a.close()
		return nil, fmt.Errorf("loading tenants: %w", err)
	}
	if a.Search, err = newSearch(cfg, st, log); err != nil {
		a.close()
		return nil, err
	}
	a.OperatorKey = cfg.OperatorKey
	if a.OperatorKey == "" {
		a.OperatorKey, a.operatorGenerated = tenant.NewSecret(), true
	}
	srv, err := server.New(server.Options{
		OperatorKeyHash: tenant.HashKey([]byte(a.OperatorKey)),
		Engine:          engine,
		Logger:          log,
		MaxBodyBytes:    cfg.MaxBodyBytes,
		MaxPluginBytes:  cfg.MaxPluginBytes,
		ReadTimeout:     cfg.ReadTimeout.D(),
		WriteTimeout:    cfg.WriteTimeout.D(),
		IdleTimeout:     cfg.IdleTimeout.D(),
		Store:           st,
		LLM:             llm.New(llm.Options{Logger: log}),
		Retriever:       a.Search,
		Search:          a.Search,
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
	if a.Config.PprofAddr != "" {
		go func() {
			a.Log.Info("serving Go profiles", "addr", a.Config.PprofAddr)
			if err := http.ListenAndServe(a.Config.PprofAddr, nil); err != nil {
				a.Log.Error("pprof listener", "err", err)
			}
		}()
	}
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
	if a.Search != nil {
		if err := a.Search.Close(); err != nil {
			a.Log.Error("closing the search indexes", "err", err)
		}
	}
	if err := a.Store.Close(); err != nil {
		a.Log.Error("closing the store", "err", err)
	}
}

// newSearch opens the search service (vector stores; indexes under DataDir/indexes) with the configured
// default embedder.
func newSearch(cfg config.Config, st *store.Store, log *slog.Logger) (*search.Service, error) {
	opts := search.Options{Store: st, Dir: filepath.Join(cfg.DataDir, "indexes"), Logger: log}
	if cfg.EmbedBaseURL != "" {
		opts.DefaultEmbedder = &search.EmbedderConfig{BaseURL: cfg.EmbedBaseURL, Model: cfg.EmbedModel,
			APIKeyEnv: cfg.EmbedAPIKeyEnv, Dimensions: int(cfg.EmbedDimensions)}
	}
	for _, u := range strings.Split(cfg.EmbedAllowedURLs, ",") {
		if u = strings.TrimSpace(u); u != "" {
			opts.AllowedEmbedderURLs = append(opts.AllowedEmbedderURLs, u)
		}
	}
	return search.New(opts)
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

// seed writes the configuration's tenants (or the embedded default setup when the config file names
// none) into a fresh data directory. After that the store is the source of truth and the config file's
// tenants are ignored.
func seed(ctx context.Context, cfg config.Config, st *store.Store, engine *runtime.Engine) error {
	seeded, err := st.Seeded()
	if err != nil || seeded {
		return err
	}
	tenants := cfg.Tenants
	if len(tenants) == 0 && cfg.ConfigFile == "" {
		var def config.Config
		if err := config.Parse(defaults.Config(), &def); err != nil {
			return fmt.Errorf("embedded default config: %w", err)
		}
		tenants = def.Tenants
	}
	for _, tc := range tenants {
		rec := &store.TenantRecord{ID: tc.ID, Name: tc.Name, Demo: tc.Demo, Limits: limitsFromConfig(tc.Limits),
			LLM: tc.LLM, Bindings: map[string]string{}}
		for _, pc := range tc.Plugins {
			for _, hn := range pc.Hooks {
				h, ok := abi.ParseHook(hn)
				if !ok || h == abi.HookHandle {
					return fmt.Errorf("tenant %s plugin %s: cannot bind hook %q (route, ratelimit or prompt)", tc.ID, pc.Name, hn)
				}
				if other, dup := rec.Bindings[hn]; dup {
					return fmt.Errorf("tenant %s: %s hook bound to both %s and %s", tc.ID, hn, other, pc.Name)
				}
				rec.Bindings[hn] = pc.Name
			}
		}
		if err := st.PutTenant(rec, true); err != nil {
			return fmt.Errorf("tenant %s: %w", tc.ID, err)
		}
		for _, pc := range tc.Plugins {
			wasm, err := loadWasm(&cfg, pc.Wasm)
			if err != nil {
				return fmt.Errorf("tenant %s plugin %s: %w", tc.ID, pc.Name, err)
			}
			if _, err := addVersion(ctx, st, engine, tc.ID, pc.Name, wasm); err != nil {
				return fmt.Errorf("tenant %s plugin %s: %w", tc.ID, pc.Name, err)
			}
			source := ""
			if strings.HasPrefix(pc.Wasm, "embedded:") {
				source = pc.Wasm
			}
			config := pc.Config
			if _, err := st.UpdatePlugin(tc.ID, pc.Name, func(p *store.PluginRecord) error {
				p.Config, p.Source = config, source
				return nil
			}); err != nil {
				return err
			}
		}
		for _, kc := range tc.Keys {
			if err := st.PutKey(&store.KeyRecord{ID: kc.ID, Tenant: tc.ID, Label: kc.Label, Hash: kc.SHA256, Admin: kc.Admin}); err != nil {
				return fmt.Errorf("tenant %s key %s: %w", tc.ID, kc.ID, err)
			}
		}
	}
	return st.MarkSeeded()
}

// addVersion validates a module and stores it as the new active version of a plugin.
func addVersion(ctx context.Context, st *store.Store, engine *runtime.Engine, tenantID, name string, wasm []byte) (*store.VersionRecord, error) {
	m, err := engine.Compile(ctx, wasm, runtime.CompileOptions{})
	if err != nil {
		return nil, err
	}
	defer m.Release()
	hooks, err := engine.Probe(ctx, m, nil, 0)
	if err != nil {
		return nil, err
	}
	return st.AddVersion(tenantID, name, wasm, hooks, true, store.Quota{})
}

// refreshEmbedded keeps first-party plugins that a tenant uses from the binary ("embedded:NAME") in step
// with the binary: a rebuilt binary with a changed plugin adds and activates a new version.
func refreshEmbedded(ctx context.Context, st *store.Store, engine *runtime.Engine, log *slog.Logger) error {
	tenants, err := st.Tenants()
	if err != nil {
		return err
	}
	for _, t := range tenants {
		plugins, err := st.Plugins(t.ID)
		if err != nil {
			return err
		}
		for _, p := range plugins {
			name, ok := strings.CutPrefix(p.Source, "embedded:")
			if !ok {
				continue
			}
			wasm, err := defaults.Plugin(name)
			if err != nil {
				log.Warn("first-party plugin missing from this binary; keeping the stored version", "tenant", t.ID, "plugin", p.Name, "err", err)
				continue
			}
			if v, err := st.Version(t.ID, p.Name, p.Active); err == nil && v.Hash == runtime.ModuleHash(wasm) {
				continue
			}
			v, err := addVersion(ctx, st, engine, t.ID, p.Name, wasm)
			if err != nil {
				return fmt.Errorf("tenant %s plugin %s: %w", t.ID, p.Name, err)
			}
			log.Info("first-party plugin updated from the binary", "tenant", t.ID, "plugin", p.Name, "version", v.Version)
		}
	}
	return nil
}

// demoKey sets the demo tenant's key (PLINTH_DEMO_KEY, or a new random one) and returns it; "" when
// there is no demo tenant.
func demoKey(cfg config.Config, st *store.Store) (string, error) {
	tenants, err := st.Tenants()
	if err != nil {
		return "", err
	}
	for _, t := range tenants {
		if !t.Demo {
			continue
		}
		key := cfg.DemoKey
		if key == "" {
			key = tenant.NewSecret()
		}
		h := tenant.HashKey([]byte(key))
		err := st.PutKey(&store.KeyRecord{ID: "demo-key", Tenant: t.ID, Label: "default", Hash: hex.EncodeToString(h[:]), Admin: true})
		return key, err
	}
	return "", nil
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

// NewKey returns a new random API key secret.
func NewKey() string { return tenant.NewSecret() }

// Banner returns the start-up lines that tell a user how to call the server.
func (a *App) Banner() string {
	if a.ln == nil {
		return ""
	}
	var b strings.Builder
	base := "http://" + a.ln.Addr().String()
	fmt.Fprintf(&b, "\nPlinth is running at %s\n", base)
	if a.DemoKey != "" {
		fmt.Fprintf(&b, "  demo tenant API key: %s\n", a.DemoKey)
		fmt.Fprintf(&b, "  try: curl -s %s/v1/models -H 'Authorization: Bearer %s'\n", base, a.DemoKey)
	}
	if a.operatorGenerated {
		fmt.Fprintf(&b, "  operator key (admin API, this run only; set PLINTH_OPERATOR_KEY to keep one): %s\n", a.OperatorKey)
	}
	b.WriteString("\n")
	return b.String()
}
