package search

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Embedder turns texts into vectors.
type Embedder interface {
	// Embed returns one vector per text, in order, all of the same length.
	Embed(ctx context.Context, texts []string) ([][]float32, error)
}

// EmbedderConfig names an OpenAI-compatible embeddings endpoint (OpenAI, Ollama, vLLM, TEI, ...): POST
// {BaseURL}/embeddings with {"model", "input": [...]}. It is stored in a vector store's record, so it never
// holds a secret: the API key is read from the environment variable APIKeyEnv.
type EmbedderConfig struct {
	// BaseURL is the API base, e.g. "https://api.openai.com/v1" or "http://127.0.0.1:11434/v1".
	BaseURL string `json:"base_url"`
	Model   string `json:"model"`
	// APIKeyEnv names the environment variable holding the API key; empty: no key is sent. Names of a
	// vector store's embedder must start with PLINTH_EMBED_KEY_ (see AllowedKeyEnv), so a tenant cannot
	// make the server send another secret of its environment.
	APIKeyEnv string `json:"api_key_env,omitempty"`
	// Dimensions, when set, is sent to the provider (models that can shorten their vectors) and checked
	// against every vector returned.
	Dimensions int `json:"dimensions,omitempty"`
	// BatchSize is the number of texts per request. Zero means 32 (the default client batch limit of TEI).
	BatchSize int `json:"batch_size,omitempty"`
	// Timeout bounds one request, in seconds. Zero means 60.
	Timeout float64 `json:"timeout_seconds,omitempty"`
	// Retries is the number of retries of a request that failed on the network, with 429 or with a 5xx.
	// Zero means 3; -1 none.
	Retries int `json:"retries,omitempty"`
}

// embedParallel bounds the concurrent requests of one Embed call.
const embedParallel = 4

var keyEnvPattern = regexp.MustCompile(`^PLINTH_EMBED_KEY_[A-Z0-9_]+$`)

// AllowedKeyEnv reports whether a vector store's embedder may name the environment variable env for its
// key: only PLINTH_EMBED_KEY_* variables, which an operator sets for that purpose.
func AllowedKeyEnv(env string) bool { return env == "" || keyEnvPattern.MatchString(env) }

// Validate checks the configuration's fields.
func (c *EmbedderConfig) Validate() error {
	if c.BaseURL == "" || c.Model == "" {
		return errors.New("embedder: base_url and model are required")
	}
	if !strings.HasPrefix(c.BaseURL, "http://") && !strings.HasPrefix(c.BaseURL, "https://") {
		return fmt.Errorf("embedder: base_url %q must be an http or https URL", c.BaseURL)
	}
	if c.Dimensions < 0 || c.Dimensions > 1<<14 {
		return fmt.Errorf("embedder: dimensions must be from 1 to %d", 1<<14)
	}
	if c.BatchSize < 0 || c.BatchSize > 2048 {
		return errors.New("embedder: batch_size must be from 1 to 2048")
	}
	if c.Timeout < 0 || c.Timeout > 600 {
		return errors.New("embedder: timeout_seconds must be from 1 to 600")
	}
	if c.Retries < -1 || c.Retries > 10 {
		return errors.New("embedder: retries must be from -1 (none) to 10")
	}
	return nil
}

// EmbedderError is a failure of the embeddings provider (after retries).
type EmbedderError struct {
	Status int // HTTP status of the last attempt; 0 for network errors
	Msg    string
}

func (e *EmbedderError) Error() string { return "embedder: " + e.Msg }

// HTTPEmbedder is the OpenAI-compatible embeddings client.
type HTTPEmbedder struct {
	cfg    EmbedderConfig
	key    string
	client *http.Client
}

// NewHTTPEmbedder returns a client for cfg; client nil means http.DefaultClient. The key is read from the
// environment now.
func NewHTTPEmbedder(cfg EmbedderConfig, client *http.Client) (*HTTPEmbedder, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if client == nil {
		client = http.DefaultClient
	}
	e := &HTTPEmbedder{cfg: cfg, client: client}
	if cfg.APIKeyEnv != "" {
		e.key = os.Getenv(cfg.APIKeyEnv)
	}
	return e, nil
}

// Model returns the model name.
func (e *HTTPEmbedder) Model() string { return e.cfg.Model }

// Embed implements Embedder, in batches of BatchSize texts.
func (e *HTTPEmbedder) Embed(ctx context.Context, texts []string) ([][]float32, error) {
	return e.EmbedModel(ctx, e.cfg.Model, texts)
}

// EmbedModel is Embed with another model of the same provider. Up to embedParallel requests run at once.
func (e *HTTPEmbedder) EmbedModel(ctx context.Context, model string, texts []string) ([][]float32, error) {
	bs := e.cfg.BatchSize
	if bs <= 0 {
		bs = 32
	}
	out := make([][]float32, len(texts))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	var firstErr error
	var once sync.Once
	sem := make(chan struct{}, embedParallel)
	for start := 0; start < len(texts); start += bs {
		end := min(start+bs, len(texts))
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			vecs, err := e.batch(ctx, model, texts[start:end])
			if err != nil {
				once.Do(func() { firstErr = err; cancel() })
				return
			}
			copy(out[start:end], vecs)
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	dims := 0
	for i, v := range out {
		if i == 0 {
			dims = len(v)
		}
		if len(v) == 0 || len(v) != dims || (e.cfg.Dimensions > 0 && len(v) != e.cfg.Dimensions) {
			return nil, &EmbedderError{Msg: fmt.Sprintf("model %s returned vectors of inconsistent length (%d, %d; want %d)", model, dims, len(v), e.cfg.Dimensions)}
		}
		for _, f := range v {
			if math.IsNaN(float64(f)) || math.IsInf(float64(f), 0) {
				return nil, &EmbedderError{Msg: "model " + model + " returned a vector with NaN or Inf"}
			}
		}
	}
	return out, nil
}

type embedRequest struct {
	Model          string   `json:"model"`
	Input          []string `json:"input"`
	Dimensions     int      `json:"dimensions,omitempty"`
	EncodingFormat string   `json:"encoding_format"`
}

type embedResponse struct {
	Data []struct {
		Index     int       `json:"index"`
		Embedding []float32 `json:"embedding"`
	} `json:"data"`
}

// batch embeds one request's worth of texts, retrying transient failures with exponential backoff
// (honouring Retry-After up to 10 s).
func (e *HTTPEmbedder) batch(ctx context.Context, model string, texts []string) ([][]float32, error) {
	body, _ := json.Marshal(embedRequest{Model: model, Input: texts, Dimensions: e.cfg.Dimensions, EncodingFormat: "float"})
	retries := e.cfg.Retries
	switch {
	case retries == 0:
		retries = 3
	case retries < 0:
		retries = 0
	}
	timeout := time.Duration(e.cfg.Timeout * float64(time.Second))
	if timeout <= 0 {
		timeout = 60 * time.Second
	}
	backoff := 250 * time.Millisecond
	var last *EmbedderError
	for attempt := 0; ; attempt++ {
		vecs, wait, err := e.try(ctx, model, body, len(texts), timeout)
		if err == nil {
			return vecs, nil
		}
		if ctx.Err() != nil {
			return nil, &EmbedderError{Msg: "cancelled: " + ctx.Err().Error()}
		}
		var ee *EmbedderError
		if !errors.As(err, &ee) {
			ee = &EmbedderError{Msg: err.Error()}
		}
		last = ee
		transient := ee.Status == 0 || ee.Status == http.StatusTooManyRequests || ee.Status >= 500
		if !transient || attempt >= retries {
			break
		}
		if wait <= 0 {
			wait = backoff
			backoff *= 2
		}
		select {
		case <-ctx.Done():
			return nil, &EmbedderError{Msg: "cancelled: " + ctx.Err().Error()}
		case <-time.After(wait):
		}
	}
	return nil, last
}

// try makes one request. wait is the provider's Retry-After, if any.
func (e *HTTPEmbedder) try(ctx context.Context, model string, body []byte, n int, timeout time.Duration) ([][]float32, time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(e.cfg.BaseURL, "/")+"/embeddings", bytes.NewReader(body))
	if err != nil {
		return nil, 0, &EmbedderError{Msg: err.Error(), Status: 400}
	}
	req.Header.Set("Content-Type", "application/json")
	if e.key != "" {
		req.Header.Set("Authorization", "Bearer "+e.key)
	}
	res, err := e.client.Do(req)
	if err != nil {
		// The URL is the operator's or the tenant's own; the error never includes the key.
		return nil, 0, &EmbedderError{Msg: fmt.Sprintf("model %s at %s: %v", model, e.cfg.BaseURL, errors.Unwrap(err))}
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(res.Body, 256<<20))
	if err != nil {
		return nil, 0, &EmbedderError{Msg: fmt.Sprintf("model %s at %s: reading the response: %v", model, e.cfg.BaseURL, err)}
	}
	if res.StatusCode != http.StatusOK {
		var wait time.Duration
		if s, err := strconv.Atoi(res.Header.Get("Retry-After")); err == nil && s > 0 {
			wait = min(time.Duration(s)*time.Second, 10*time.Second)
		}
		msg := strings.TrimSpace(string(raw))
		if len(msg) > 300 {
			msg = msg[:300] + "..."
		}
		return nil, wait, &EmbedderError{Status: res.StatusCode,
			Msg: fmt.Sprintf("model %s at %s answered %d: %s", model, e.cfg.BaseURL, res.StatusCode, msg)}
	}
	var er embedResponse
	if err := json.Unmarshal(raw, &er); err != nil {
		return nil, 0, &EmbedderError{Status: 502, Msg: fmt.Sprintf("model %s at %s: malformed response: %v", model, e.cfg.BaseURL, err)}
	}
	if len(er.Data) != n {
		return nil, 0, &EmbedderError{Status: 502, Msg: fmt.Sprintf("model %s at %s returned %d vectors for %d inputs", model, e.cfg.BaseURL, len(er.Data), n)}
	}
	out := make([][]float32, n)
	for i, d := range er.Data {
		idx := d.Index
		if idx < 0 || idx >= n || out[idx] != nil {
			// Providers that omit the index return data in input order.
			idx = i
		}
		out[idx] = d.Embedding
	}
	return out, 0, nil
}
