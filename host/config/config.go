// Package config loads the server's configuration. Every setting comes from, in order of precedence:
// a command-line flag, an environment variable, the config file, the default. The config file is JSON;
// its tenants seed a fresh data directory (after that the data directory is the source of truth).
package config

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Config is the server configuration. JSON names are the config file's; each field's doc gives its flag,
// environment variable and default.
type Config struct {
	// Addr is the listen address. -addr, PLINTH_ADDR, default 127.0.0.1:8080.
	Addr string `json:"addr"`
	// DataDir holds the store, indexes and compilation cache. -data-dir, PLINTH_DATA_DIR, default
	// ./plinth-data.
	DataDir string `json:"data_dir"`
	// ConfigFile is the JSON file this configuration was read from. -config, PLINTH_CONFIG, default none
	// (the embedded default setup).
	ConfigFile string `json:"-"`
	// DemoKey is the API key of the demo tenant, when the setup has one. -demo-key, PLINTH_DEMO_KEY,
	// default random (printed at start).
	DemoKey string `json:"-"`
	// OperatorKey authorises the operator admin API. -operator-key, PLINTH_OPERATOR_KEY, default random
	// (printed at start).
	OperatorKey string `json:"-"`
	// MaxBodyBytes caps request bodies. -max-body-bytes, PLINTH_MAX_BODY_BYTES, default 8 MiB.
	MaxBodyBytes int64 `json:"max_body_bytes"`
	// MaxPluginBytes caps uploaded plugin modules. -max-plugin-bytes, PLINTH_MAX_PLUGIN_BYTES, default 64 MiB.
	MaxPluginBytes int64 `json:"max_plugin_bytes"`
	// ReadTimeout bounds reading a request (headers and body). -read-timeout, PLINTH_READ_TIMEOUT,
	// default 30s.
	ReadTimeout Duration `json:"read_timeout"`
	// WriteTimeout bounds writing a non-streamed response. -write-timeout, PLINTH_WRITE_TIMEOUT,
	// default 60s.
	WriteTimeout Duration `json:"write_timeout"`
	// IdleTimeout closes idle keep-alive connections. -idle-timeout, PLINTH_IDLE_TIMEOUT, default 2m.
	IdleTimeout Duration `json:"idle_timeout"`
	// ShutdownTimeout bounds the drain of in-flight requests on SIGINT/SIGTERM. -shutdown-timeout,
	// PLINTH_SHUTDOWN_TIMEOUT, default 30s.
	ShutdownTimeout Duration `json:"shutdown_timeout"`
	// LogLevel is debug, info, warn or error. -log-level, PLINTH_LOG_LEVEL, default info.
	LogLevel string `json:"log_level"`
	// LogFormat is text or json. -log-format, PLINTH_LOG_FORMAT, default text.
	LogFormat string `json:"log_format"`
	// Preemption is the loop protection of plugins: instrument, close-on-done or none. -preemption,
	// PLINTH_PREEMPTION, default instrument.
	Preemption string `json:"preemption"`
	// PprofAddr, when set, serves Go's net/http/pprof profiles on this address (keep it on loopback).
	// -pprof-addr, PLINTH_PPROF_ADDR, default off.
	PprofAddr string `json:"pprof_addr"`
	// PluginMemoryBudget caps the memory of all plugin instances together, in bytes.
	// -plugin-memory-budget, PLINTH_PLUGIN_MEMORY_BUDGET, default 2 GiB.
	PluginMemoryBudget int64 `json:"plugin_memory_budget"`
	// EmbedBaseURL and EmbedModel name the default embedder: an OpenAI-compatible /embeddings endpoint
	// (OpenAI, Ollama, vLLM, TEI) for vector stores created without their own and for /v1/embeddings.
	// -embed-base-url, PLINTH_EMBED_BASE_URL and -embed-model, PLINTH_EMBED_MODEL; default none (lexical
	// search only).
	EmbedBaseURL string `json:"embed_base_url"`
	EmbedModel   string `json:"embed_model"`
	// EmbedAPIKeyEnv names the environment variable holding the default embedder's API key (the key itself
	// is never in the config). -embed-api-key-env, PLINTH_EMBED_API_KEY_ENV, default PLINTH_EMBED_API_KEY.
	EmbedAPIKeyEnv string `json:"embed_api_key_env"`
	// EmbedDimensions, when set, is requested from the default embedder and checked. -embed-dimensions,
	// PLINTH_EMBED_DIMENSIONS, default 0 (the model's).
	EmbedDimensions int64 `json:"embed_dimensions"`
	// EmbedAllowedURLs, when set, is a comma-separated list of URL prefixes a vector store's own embedder
	// must start with. -embed-allowed-urls, PLINTH_EMBED_ALLOWED_URLS, default any http(s) URL.
	EmbedAllowedURLs string `json:"embed_allowed_urls"`
	// Tenants seed a fresh data directory. Config file only.
	Tenants []Tenant `json:"tenants"`

	// dir is the directory of the config file, against which plugin paths resolve.
	dir string
}

// Tenant is a tenant in the config file.
type Tenant struct {
	ID      string   `json:"id"`
	Name    string   `json:"name"`
	Keys    []Key    `json:"keys"`
	Plugins []Plugin `json:"plugins"`
	Limits  Limits   `json:"limits"`
	// Demo marks the tenant whose key is DemoKey (random and printed when unset).
	Demo bool `json:"demo"`
	// LLM is the tenant's LLM configuration: providers and models (docs/chat.md).
	LLM json.RawMessage `json:"llm"`
}

// Key is an API key in the config file. Only its SHA-256 is ever stored: generate one with
// `plinth keys hash`.
type Key struct {
	ID     string `json:"id"`
	SHA256 string `json:"sha256"`
	Label  string `json:"label"`
	// Admin makes the key a tenant-admin key (manages the tenant's plugins through /admin/v1).
	Admin bool `json:"admin"`
}

// Plugin is a plugin of a tenant in the config file.
type Plugin struct {
	Name string `json:"name"`
	// Wasm is a path to the module (relative to the config file) or "embedded:NAME" for a first-party
	// plugin built into the binary.
	Wasm string `json:"wasm"`
	// Hooks are the hooks the plugin is bound to: route, ratelimit, prompt. (handle needs no binding:
	// a route decision names the plugin.)
	Hooks  []string        `json:"hooks"`
	Config json.RawMessage `json:"config"`
}

// Limits are per-tenant limits; zero values mean the server defaults.
type Limits struct {
	PluginMemoryBytes int64    `json:"plugin_memory_bytes"`
	PluginDeadline    Duration `json:"plugin_deadline"`
	PluginInstances   int      `json:"plugin_instances"`
	StorageBytes      int64    `json:"storage_bytes"`
	StorageKeys       int64    `json:"storage_keys"`
	RequestBytes      int64    `json:"request_bytes"`
	CPUPerCall        int64    `json:"cpu_per_call"`
	CPUPerMinute      int64    `json:"cpu_per_minute"`
	// ConversationRetention deletes conversations this long after their last update; default 720h.
	ConversationRetention Duration `json:"conversation_retention"`
}

// Duration is a time.Duration that reads "1.5s"-style strings from JSON.
type Duration time.Duration

// UnmarshalJSON accepts a duration string or a number of seconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		var secs float64
		if err2 := json.Unmarshal(b, &secs); err2 != nil {
			return fmt.Errorf("duration: want a string like \"30s\" or seconds, got %s", b)
		}
		*d = Duration(secs * float64(time.Second))
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// D returns the time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Defaults returns the built-in defaults.
func Defaults() Config {
	return Config{
		Addr:               "127.0.0.1:8080",
		DataDir:            "plinth-data",
		MaxBodyBytes:       8 << 20,
		MaxPluginBytes:     64 << 20,
		ReadTimeout:        Duration(30 * time.Second),
		WriteTimeout:       Duration(60 * time.Second),
		IdleTimeout:        Duration(2 * time.Minute),
		ShutdownTimeout:    Duration(30 * time.Second),
		LogLevel:           "info",
		LogFormat:          "text",
		Preemption:         "instrument",
		PluginMemoryBudget: 2 << 30,
		EmbedAPIKeyEnv:     "PLINTH_EMBED_API_KEY",
	}
}

// setting is one configurable scalar: its flag name, environment variable and destination.
type setting struct {
	flag, env, usage string
	set              func(*Config, string) error
}

func str(dst func(*Config) *string) func(*Config, string) error {
	return func(c *Config, v string) error { *dst(c) = v; return nil }
}

func i64(dst func(*Config) *int64) func(*Config, string) error {
	return func(c *Config, v string) error {
		n, err := parseSize(v)
		if err != nil {
			return err
		}
		*dst(c) = n
		return nil
	}
}

func dur(dst func(*Config) *Duration) func(*Config, string) error {
	return func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil {
			return err
		}
		*dst(c) = Duration(d)
		return nil
	}
}

var settings = []setting{
	{"addr", "PLINTH_ADDR", "listen address", str(func(c *Config) *string { return &c.Addr })},
	{"data-dir", "PLINTH_DATA_DIR", "data directory", str(func(c *Config) *string { return &c.DataDir })},
	{"demo-key", "PLINTH_DEMO_KEY", "API key of the demo tenant (random when unset)", str(func(c *Config) *string { return &c.DemoKey })},
	{"operator-key", "PLINTH_OPERATOR_KEY", "operator admin key (random when unset)", str(func(c *Config) *string { return &c.OperatorKey })},
	{"max-body-bytes", "PLINTH_MAX_BODY_BYTES", "request body limit (bytes, or with KiB/MiB suffix)", i64(func(c *Config) *int64 { return &c.MaxBodyBytes })},
	{"max-plugin-bytes", "PLINTH_MAX_PLUGIN_BYTES", "plugin upload limit (bytes, or with KiB/MiB suffix)", i64(func(c *Config) *int64 { return &c.MaxPluginBytes })},
	{"read-timeout", "PLINTH_READ_TIMEOUT", "request read timeout", dur(func(c *Config) *Duration { return &c.ReadTimeout })},
	{"write-timeout", "PLINTH_WRITE_TIMEOUT", "response write timeout", dur(func(c *Config) *Duration { return &c.WriteTimeout })},
	{"idle-timeout", "PLINTH_IDLE_TIMEOUT", "keep-alive idle timeout", dur(func(c *Config) *Duration { return &c.IdleTimeout })},
	{"shutdown-timeout", "PLINTH_SHUTDOWN_TIMEOUT", "drain time on SIGINT/SIGTERM", dur(func(c *Config) *Duration { return &c.ShutdownTimeout })},
	{"log-level", "PLINTH_LOG_LEVEL", "debug, info, warn or error", str(func(c *Config) *string { return &c.LogLevel })},
	{"log-format", "PLINTH_LOG_FORMAT", "text or json", str(func(c *Config) *string { return &c.LogFormat })},
	{"preemption", "PLINTH_PREEMPTION", "plugin loop protection: instrument, close-on-done or none", str(func(c *Config) *string { return &c.Preemption })},
	{"pprof-addr", "PLINTH_PPROF_ADDR", "serve Go profiles on this address (loopback only; off when empty)", str(func(c *Config) *string { return &c.PprofAddr })},
	{"embed-base-url", "PLINTH_EMBED_BASE_URL", "default embedder: OpenAI-compatible API base URL", str(func(c *Config) *string { return &c.EmbedBaseURL })},
	{"embed-model", "PLINTH_EMBED_MODEL", "default embedder: model", str(func(c *Config) *string { return &c.EmbedModel })},
	{"embed-api-key-env", "PLINTH_EMBED_API_KEY_ENV", "default embedder: name of the variable holding its API key", str(func(c *Config) *string { return &c.EmbedAPIKeyEnv })},
	{"embed-dimensions", "PLINTH_EMBED_DIMENSIONS", "default embedder: vector dimensions to request (0: the model's)", i64(func(c *Config) *int64 { return &c.EmbedDimensions })},
	{"embed-allowed-urls", "PLINTH_EMBED_ALLOWED_URLS", "comma-separated URL prefixes allowed for vector stores' own embedders (empty: any)", str(func(c *Config) *string { return &c.EmbedAllowedURLs })},
	{"plugin-memory-budget", "PLINTH_PLUGIN_MEMORY_BUDGET", "memory of all plugin instances (bytes, or with KiB/MiB/GiB suffix)", i64(func(c *Config) *int64 { return &c.PluginMemoryBudget })},
}

// Load builds the configuration from args (without the program name), the environment (getenv) and
// the config file named by -config or PLINTH_CONFIG. The flag set's usage lists every setting.
func Load(fs *flag.FlagSet, args []string, getenv func(string) string) (Config, error) {
	flagVals := map[string]*string{}
	for _, s := range settings {
		flagVals[s.flag] = fs.String(s.flag, "", s.usage+" (env "+s.env+")")
	}
	configPath := fs.String("config", "", "JSON config file (env PLINTH_CONFIG)")
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })

	c := Defaults()
	path := *configPath
	if !set["config"] {
		path = getenv("PLINTH_CONFIG")
	}
	if path != "" {
		if err := c.ReadFile(path); err != nil {
			return Config{}, err
		}
	}
	for _, s := range settings {
		if v := getenv(s.env); v != "" && !set[s.flag] {
			if err := s.set(&c, v); err != nil {
				return Config{}, fmt.Errorf("%s=%q: %w", s.env, v, err)
			}
		}
		if set[s.flag] {
			if err := s.set(&c, *flagVals[s.flag]); err != nil {
				return Config{}, fmt.Errorf("-%s=%q: %w", s.flag, *flagVals[s.flag], err)
			}
		}
	}
	return c, c.Validate()
}

// ReadFile reads a JSON config file over c.
func (c *Config) ReadFile(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	if err := Parse(b, c); err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	c.ConfigFile = path
	c.dir = filepath.Dir(path)
	return nil
}

// Parse reads a JSON config over c, refusing unknown fields so typos do not pass silently.
func Parse(b []byte, c *Config) error {
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	return dec.Decode(c)
}

// Validate checks the configuration for mistakes the server would only find later.
func (c *Config) Validate() error {
	var errs []error
	if c.MaxBodyBytes <= 0 {
		errs = append(errs, errors.New("max_body_bytes must be positive"))
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		errs = append(errs, fmt.Errorf("log_format %q: want text or json", c.LogFormat))
	}
	switch c.Preemption {
	case "instrument", "close-on-done", "none":
	default:
		errs = append(errs, fmt.Errorf("preemption %q: want instrument, close-on-done or none", c.Preemption))
	}
	if (c.EmbedBaseURL == "") != (c.EmbedModel == "") {
		errs = append(errs, errors.New("embed_base_url and embed_model are set together (or neither)"))
	}
	ids := map[string]bool{}
	for i, t := range c.Tenants {
		if t.ID == "" {
			errs = append(errs, fmt.Errorf("tenants[%d]: id is required", i))
		}
		if ids[t.ID] {
			errs = append(errs, fmt.Errorf("tenants[%d]: duplicate id %q", i, t.ID))
		}
		ids[t.ID] = true
		for j, k := range t.Keys {
			if len(k.SHA256) != 64 {
				errs = append(errs, fmt.Errorf("tenant %s keys[%d]: sha256 must be 64 hex digits (see `plinth keys hash`)", t.ID, j))
			}
		}
		for j, p := range t.Plugins {
			if p.Name == "" || p.Wasm == "" {
				errs = append(errs, fmt.Errorf("tenant %s plugins[%d]: name and wasm are required", t.ID, j))
			}
		}
	}
	return errors.Join(errs...)
}

// ResolvePath resolves a plugin path from the config file against the file's directory.
func (c *Config) ResolvePath(p string) string {
	if filepath.IsAbs(p) || c.dir == "" {
		return p
	}
	return filepath.Join(c.dir, p)
}

// parseSize reads a byte count with an optional KiB/MiB/GiB suffix.
func parseSize(s string) (int64, error) {
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}} {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSuffix(s, u.suffix), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("want a byte count like 1048576 or 1MiB")
	}
	return n * mult, nil
}
