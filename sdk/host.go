package sdk

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/plinth-dev/plinth/abi"
)

// configCache holds the plugin's configuration after the first Config call. The host never changes the
// configuration of a live instance (a new configuration gets new instances), so caching is safe.
var configCache []byte
var configLoaded bool

// Config returns the plugin's configuration bytes as set by the tenant (JSON by convention; nil when
// none). The slice is shared: do not modify it.
func Config() []byte {
	if configLoaded {
		return configCache
	}
	buf := make([]byte, 4096)
	for {
		n := hostConfig(buf)
		if n < 0 {
			return nil
		}
		if int(n) <= len(buf) {
			configCache, configLoaded = buf[:n], true
			return configCache
		}
		buf = make([]byte, n)
	}
}

// ConfigJSON decodes the plugin's configuration into v. An empty configuration leaves v unchanged.
func ConfigJSON(v any) error {
	c := Config()
	if len(c) == 0 {
		return nil
	}
	if err := json.Unmarshal(c, v); err != nil {
		return fmt.Errorf("plugin config: %w", err)
	}
	return nil
}

// Log writes a log line attributed to this plugin (and the request in progress) to the host's log.
// Levels are those of log/slog.
func Log(level slog.Level, msg string) { hostLog(int32(level), []byte(msg)) }

// Logf formats and logs at info level.
func Logf(format string, args ...any) { Log(slog.LevelInfo, fmt.Sprintf(format, args...)) }

// Logger returns a slog.Logger whose records go to the host's log, attributes included as text.
func Logger() *slog.Logger { return slog.New(logHandler{}) }

type logHandler struct{ attrs []slog.Attr }

func (logHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h logHandler) Handle(_ context.Context, r slog.Record) error {
	b := []byte(r.Message)
	add := func(a slog.Attr) bool {
		b = fmt.Appendf(b, " %s=%v", a.Key, a.Value)
		return true
	}
	for _, a := range h.attrs {
		add(a)
	}
	r.Attrs(add)
	hostLog(int32(r.Level), b)
	return nil
}

func (h logHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return logHandler{attrs: append(h.attrs[:len(h.attrs):len(h.attrs)], as...)}
}

func (h logHandler) WithGroup(string) slog.Handler { return h }

// Limit is a rate limit: Limit units per Period, with bursts of up to Burst (zero means Limit).
type Limit struct {
	Limit  int64
	Period time.Duration
	Burst  int64
}

// RateResult is the outcome of RateLimitTake.
type RateResult struct {
	Allowed    bool
	Remaining  int64         // units that can still be taken now
	RetryAfter time.Duration // when refused: how long until the same take succeeds; -1 never
	Reset      time.Duration // until the key is fully replenished
	Limit      int64         // the effective burst, the quota a client sees
}

// Policy reports the result as a RateLimit header policy with the given name: the quota is the limit
// per period (q and w of RateLimit-Policy), the remaining units and reset time those of this take.
func (r RateResult) Policy(name string, l Limit) RatePolicy {
	return RatePolicy{Name: name, Limit: l.Limit, WindowMs: l.Period.Milliseconds(), Remaining: r.Remaining,
		ResetMs: r.Reset.Milliseconds()}
}

// RateLimitTake atomically takes cost units from the rate-limit key under limit l (GCRA; see
// abi/gcra). Keys live in this plugin's own space within the tenant, in host memory: they survive
// instances but not a host restart. A cost of 0 inspects without taking.
func RateLimitTake(key string, l Limit, cost int64) (RateResult, error) {
	var out [abi.RLResultSize]byte
	st := hostRLTake(view(key), l.Limit, l.Period.Milliseconds(), l.Burst, cost, out[:])
	if st < 0 {
		return RateResult{}, fmt.Errorf("rate limit %s: %w", strconv.Quote(key), abi.Status(st))
	}
	r := abi.ReadRLResult(out[:])
	res := RateResult{Allowed: r.Allowed, Remaining: r.Remaining, Reset: time.Duration(r.ResetMs) * time.Millisecond,
		Limit: r.Limit, RetryAfter: time.Duration(r.RetryAfterMs) * time.Millisecond}
	if r.RetryAfterMs < 0 {
		res.RetryAfter = -1
	}
	return res, nil
}
