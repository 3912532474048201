// Command ratelimit is Plinth's first-party rate-limit plugin: request limits per API key by tier (the
// key's label), a limit per client IP, and LLM token budgets per key, all from the plugin's
// configuration and enforced with the host's atomic GCRA (rl_take).
//
// Configuration (JSON):
//
//	{
//	  "tiers": {
//	    "default": {"requests": {"limit": 60, "period": "1m", "burst": 20},
//	                "tokens":   {"limit": 200000, "period": "1m"}},
//	    "pro":     {"requests": {"limit": 600, "period": "1m"}}
//	  },
//	  "per_ip": {"limit": 1200, "period": "1m"},
//	  "exempt": ["models.list"]
//	}
//
// A key whose label names no tier gets "default"; a tier without "requests" is unlimited. "exempt" lists
// built-in endpoint names that are never limited. Token budgets apply to requests for which the host
// estimates LLM tokens (chat completions): the estimate is reserved at admission and the host settles
// the reservation with real usage when the response ends. They apply as well to requests routed to a
// plugin's handle hook: admitted while the budget is not overdrawn, they are charged the tokens of the
// LLM streams the plugin opens (llm_open) when the call ends.
package main

import (
	"fmt"
	"time"

	"github.com/plinth-dev/plinth/sdk"
)

type limitConfig struct {
	Limit  int64  `json:"limit"`
	Period string `json:"period"`
	Burst  int64  `json:"burst"`
}

type tierConfig struct {
	Requests *limitConfig `json:"requests"`
	Tokens   *limitConfig `json:"tokens"`
}

type config struct {
	Tiers  map[string]tierConfig `json:"tiers"`
	PerIP  *limitConfig          `json:"per_ip"`
	Exempt []string              `json:"exempt"`
}

type tier struct {
	requests, tokens *sdk.Limit
}

// The compiled configuration, set by configure before any hook call.
var (
	tiers  map[string]tier
	perIP  *sdk.Limit
	exempt map[string]bool
)

func toLimit(where string, c *limitConfig) (*sdk.Limit, error) {
	if c == nil {
		return nil, nil
	}
	p, err := time.ParseDuration(c.Period)
	if err != nil || p <= 0 || c.Limit <= 0 {
		return nil, fmt.Errorf("ratelimit config: %s: want a positive limit and a period like \"1m\"", where)
	}
	return &sdk.Limit{Limit: c.Limit, Period: p, Burst: c.Burst}, nil
}

func configure([]byte) error {
	var c config
	if err := sdk.ConfigJSON(&c); err != nil {
		return err
	}
	var err error
	tiers = map[string]tier{}
	for name, tc := range c.Tiers {
		var t tier
		if t.requests, err = toLimit("tiers."+name+".requests", tc.Requests); err != nil {
			return err
		}
		if t.tokens, err = toLimit("tiers."+name+".tokens", tc.Tokens); err != nil {
			return err
		}
		tiers[name] = t
	}
	if perIP, err = toLimit("per_ip", c.PerIP); err != nil {
		return err
	}
	exempt = map[string]bool{}
	for _, e := range c.Exempt {
		exempt[e] = true
	}
	return nil
}

// policies backs each decision's Policies: the host copies a decision out before the next call, and
// reusing it saves an allocation per request (allocation is slow in Go on Wasm).
var policies [3]sdk.RatePolicy

func rateLimit(req *sdk.Request) (sdk.RateLimit, error) {
	if req.Route.Action == sdk.RouteBuiltin && exempt[req.Route.Target] {
		return sdk.Allow(), nil
	}
	t, ok := tiers[req.KeyLabel]
	if !ok {
		t = tiers["default"]
	}
	d := sdk.RateLimit{Policies: policies[:0]}
	// The IP limit is checked first so that a flood from one address does not spend its keys' quota.
	if perIP != nil && req.ClientIP != "" {
		if denied, err := take(&d, "ip", "ip:"+req.ClientIP, *perIP, 1); err != nil || denied {
			return d, err
		}
	}
	if t.requests != nil {
		if denied, err := take(&d, "key", "key:"+req.KeyID, *t.requests, 1); err != nil || denied {
			return d, err
		}
	}
	// A request for a plugin's handle hook has no estimate (its LLM calls are the plugin's to make): it
	// is admitted while the budget is not overdrawn, and charged what its LLM streams used.
	if t.tokens != nil && (req.Tokens > 0 || req.Route.Action == sdk.RoutePlugin) {
		key := "tokens:" + req.KeyID
		denied, err := take(&d, "tokens", key, *t.tokens, req.Tokens)
		if err != nil || denied {
			return d, err
		}
		d.Reservations = append(d.Reservations, sdk.TokenReservation{Key: key, Limit: t.tokens.Limit,
			PeriodMs: t.tokens.Period.Milliseconds(), Burst: t.tokens.Burst, Reserved: req.Tokens})
	}
	return d, nil
}

// take takes cost from one limit, records its policy in d, and turns d into a denial when refused.
func take(d *sdk.RateLimit, name, key string, l sdk.Limit, cost int64) (bool, error) {
	r, err := sdk.RateLimitTake(key, l, cost)
	if err != nil {
		return false, err
	}
	d.Policies = append(d.Policies, r.Policy(name, l))
	if r.Allowed {
		return false, nil
	}
	d.Deny = true
	d.RetryAfterMs = r.RetryAfter.Milliseconds()
	if r.RetryAfter < 0 {
		d.Message = fmt.Sprintf("the request needs %d %s but the %s limit allows at most %d at once", cost,
			unit(name), name, r.Limit)
		d.RetryAfterMs = 0
	} else {
		d.Message = fmt.Sprintf("%s rate limit reached (%d per %v)", name, l.Limit, l.Period)
	}
	return true, nil
}

func unit(name string) string {
	if name == "tokens" {
		return "tokens"
	}
	return "requests"
}

func init() {
	sdk.OnConfigure(configure)
	sdk.OnRateLimit(rateLimit)
}

func main() {}
