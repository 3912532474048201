package llm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"sort"
	"strings"
	"time"
)

// Config is a tenant's LLM configuration, the "llm" object of a tenant in the config file:
//
//	{
//	  "providers": {
//	    "openai": {"type": "openai", "base_url": "https://api.openai.com/v1", "api_key_env": "OPENAI_API_KEY",
//	               "timeout": {"connect": "10s", "first_token": "60s", "idle": "60s"}, "retries": 1},
//	    "local":  {"type": "openai", "base_url": "http://127.0.0.1:11434/v1"}
//	  },
//	  "models": {
//	    "gpt-4o-mini": {"provider": "openai", "fallback": "local-llama"},
//	    "local-llama": {"provider": "local", "model": "llama3.2:1b"}
//	  },
//	  "default_model": "gpt-4o-mini"
//	}
//
// Every tenant also has the built-in provider "extractive" and the model ExtractiveModel, which need
// no configuration; an empty configuration makes ExtractiveModel the default model. docs/chat.md
// describes each field.
type Config struct {
	Providers    map[string]ProviderConfig `json:"providers"`
	Models       map[string]ModelConfig    `json:"models"`
	DefaultModel string                    `json:"default_model"`
}

// ProviderConfig configures one provider.
type ProviderConfig struct {
	// Type is "openai" (any OpenAI-compatible chat completions server: OpenAI, vLLM, Ollama, llama.cpp
	// server, LM Studio...) or "extractive" (the offline provider).
	Type string `json:"type"`
	// BaseURL is the API root that "/chat/completions" is appended to. Default https://api.openai.com/v1.
	BaseURL string `json:"base_url"`
	// APIKeyEnv names the environment variable that holds the API key. The key itself never appears in
	// the configuration, the store, logs or responses. Unset: no key is sent (local servers). Variables
	// named PLINTH_* are refused, except PLINTH_LLM_*: they hold the server's own secrets.
	APIKeyEnv string `json:"api_key_env"`
	// Timeout bounds connecting, the wait for the first token, and the gap between tokens. A string
	// ("30s") sets all three.
	Timeout Timeouts `json:"timeout"`
	// Retries is how many times a failed request is tried again before the first token (0-5). Default 1.
	Retries *int `json:"retries"`
}

// Timeouts of a provider. Zero fields take the defaults.
type Timeouts struct {
	// Connect bounds TCP and TLS connection set-up. Default 10s.
	Connect Duration `json:"connect"`
	// FirstToken bounds the wait from sending the request to the first token. Default 60s.
	FirstToken Duration `json:"first_token"`
	// Idle bounds the gap between two tokens once the stream has started. Default 60s.
	Idle Duration `json:"idle"`
}

// UnmarshalJSON accepts an object or one duration for every field.
func (t *Timeouts) UnmarshalJSON(b []byte) error {
	var d Duration
	if err := d.UnmarshalJSON(b); err == nil {
		*t = Timeouts{Connect: d, FirstToken: d, Idle: d}
		return nil
	}
	type plain Timeouts
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	return dec.Decode((*plain)(t))
}

// Default timeouts and retries.
const (
	DefaultConnectTimeout    = 10 * time.Second
	DefaultFirstTokenTimeout = 60 * time.Second
	DefaultIdleTimeout       = 60 * time.Second
	DefaultRetries           = 1
	maxRetries               = 5
)

// ModelConfig maps a model name clients use to a provider.
type ModelConfig struct {
	// Provider names an entry of providers (or "extractive").
	Provider string `json:"provider"`
	// Model is the provider's name for the model; default: the model's own name.
	Model string `json:"model"`
	// Fallback is tried when the provider fails before the first token: a provider name (same model
	// name) or {"provider": ..., "model": ...}.
	Fallback *Target `json:"fallback"`
}

// Target is a provider and the provider's model name.
type Target struct {
	Provider string `json:"provider"`
	Model    string `json:"model"`
}

// UnmarshalJSON accepts a provider name or an object.
func (t *Target) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		*t = Target{Provider: s}
		return nil
	}
	type plain Target
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	return dec.Decode((*plain)(t))
}

// Duration reads "1.5s"-style strings or a number of seconds.
type Duration time.Duration

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		var secs float64
		if err := json.Unmarshal(b, &secs); err != nil {
			return fmt.Errorf("want a duration like \"30s\", got %s", b)
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

// ExtractiveModel is the model name of the offline extractive provider. It says what it is: answers
// are sentences extracted from the retrieved chunks, with citations, not generated text.
const ExtractiveModel = "plinth-extractive-v1"

// ExtractiveProvider is the name of the built-in offline provider.
const ExtractiveProvider = "extractive"

var (
	namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$`)
	envPattern  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,127}$`)
)

// ParseConfig reads and validates a tenant's LLM configuration. Empty input (or JSON null) is the empty
// configuration. Errors name the field at fault and never contain a secret.
func ParseConfig(raw []byte) (*Config, error) {
	c := &Config{}
	if t := bytes.TrimSpace(raw); len(t) == 0 || bytes.Equal(t, []byte("null")) {
		return c, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(c); err != nil {
		return nil, fmt.Errorf("llm config: %w", err)
	}
	return c, c.Validate()
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf("llm config: "+format, args...)) }
	for _, name := range sortedKeys(c.Providers) {
		p := c.Providers[name]
		if !namePattern.MatchString(name) {
			bad("provider name %q: want letters, digits and ._:/-", name)
		}
		switch p.Type {
		case "openai":
			if p.BaseURL != "" {
				u, err := url.Parse(p.BaseURL)
				if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
					bad("providers.%s.base_url: want an http or https URL", name)
				} else if u.User != nil {
					bad("providers.%s.base_url: credentials in the URL are not allowed; use api_key_env", name)
				}
			}
			if p.APIKeyEnv != "" {
				if !envPattern.MatchString(p.APIKeyEnv) {
					bad("providers.%s.api_key_env: %q is not an environment variable name", name, p.APIKeyEnv)
				} else if up := strings.ToUpper(p.APIKeyEnv); strings.HasPrefix(up, "PLINTH_") && !strings.HasPrefix(up, "PLINTH_LLM_") {
					bad("providers.%s.api_key_env: %s is one of the server's own settings; use a PLINTH_LLM_* or provider variable", name, p.APIKeyEnv)
				}
			}
		case ExtractiveProvider:
			if p.BaseURL != "" || p.APIKeyEnv != "" {
				bad("providers.%s: the extractive provider takes no base_url or api_key_env", name)
			}
		default:
			bad("providers.%s.type %q: want openai or extractive", name, p.Type)
		}
		if p.Retries != nil && (*p.Retries < 0 || *p.Retries > maxRetries) {
			bad("providers.%s.retries: want 0 to %d", name, maxRetries)
		}
		if p.Timeout.Connect < 0 || p.Timeout.FirstToken < 0 || p.Timeout.Idle < 0 {
			bad("providers.%s.timeout: durations must be positive", name)
		}
	}
	hasProvider := func(n string) bool {
		_, ok := c.Providers[n]
		return ok || n == ExtractiveProvider
	}
	for _, name := range sortedKeys(c.Models) {
		m := c.Models[name]
		if !namePattern.MatchString(name) {
			bad("model name %q: want letters, digits and ._:/-", name)
		}
		if !hasProvider(m.Provider) {
			bad("models.%s.provider: no provider %q", name, m.Provider)
		}
		if m.Fallback != nil && !hasProvider(m.Fallback.Provider) {
			bad("models.%s.fallback: no provider %q", name, m.Fallback.Provider)
		}
	}
	if c.DefaultModel != "" && c.DefaultModel != ExtractiveModel {
		if _, ok := c.Models[c.DefaultModel]; !ok {
			bad("default_model: no model %q", c.DefaultModel)
		}
	}
	return errors.Join(errs...)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
