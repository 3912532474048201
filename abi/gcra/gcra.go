// Package gcra is the normative definition of the rl_take host call: the Generic Cell Rate Algorithm as a
// pure function of the stored state and the clock. The host's rate limiter and sdk/sdktest both call it,
// so a plugin sees the same decisions in its tests as in production.
//
// A limit admits Limit units per Period, spread evenly (one unit every Period/Limit, the emission
// interval), and tolerates bursts of up to Burst units at once. The only state per key is the
// theoretical arrival time (TAT): the instant by which every unit taken so far is paid back at the steady
// rate. A take is admitted when the new TAT lies at most Burst intervals ahead of now. GCRA needs no
// timers and no background refill.
package gcra

import (
	"time"

	"github.com/plinth-dev/plinth/abi"
)

// Params are the parameters of one rl_take call.
type Params struct {
	Limit  int64         // units per Period; must be > 0
	Period time.Duration // must be > 0
	Burst  int64         // units admitted at once; <= 0 means Limit
	Cost   int64         // units taken by this call; < 0 is invalid, 0 only inspects
}

// Valid reports whether p can be used for a take.
func (p Params) Valid() bool {
	return p.Limit > 0 && p.Period > 0 && p.Cost >= 0 && p.Limit <= int64(p.Period)
}

// Result is the outcome of a take.
type Result struct {
	Allowed    bool
	Remaining  int64         // units that could still be taken now
	RetryAfter time.Duration // when denied: wait this long before the same take can succeed; -1 never
	Reset      time.Duration // time until the key is fully replenished
	Limit      int64         // the effective burst size (the quota a client can see)
}

// Take applies one take at now to a key whose stored TAT is tat (the zero time for an unknown key). It
// returns the new TAT to store (unchanged when denied) and the result. Times are Unix nanoseconds.
func Take(tat, now int64, p Params) (int64, Result) {
	burst := p.Burst
	if burst <= 0 {
		burst = p.Limit
	}
	interval := int64(p.Period) / p.Limit
	if tat < now {
		tat = now
	}
	burstOffset := interval * burst
	newTat := tat + interval*p.Cost
	allowAt := newTat - burstOffset
	res := Result{Limit: burst}
	if diff := now - allowAt; diff < 0 {
		if p.Cost > burst {
			res.RetryAfter = -1
		} else {
			res.RetryAfter = time.Duration(-diff)
		}
		res.Remaining = remaining(now, tat, burstOffset, interval)
		res.Reset = time.Duration(tat - now)
		return tat, res
	}
	res.Allowed = true
	res.Remaining = remaining(now, newTat, burstOffset, interval)
	res.Reset = time.Duration(newTat - now)
	return newTat, res
}

// remaining is how many whole units fit between now and the instant the stored TAT stops admitting.
func remaining(now, tat, burstOffset, interval int64) int64 {
	r := (now - (tat - burstOffset)) / interval
	if r < 0 {
		return 0
	}
	return r
}

// ABI converts r to the result rl_take writes: milliseconds, rounded up so that a client that waits
// RetryAfter is never early.
func (r Result) ABI() abi.RLResult {
	res := abi.RLResult{Allowed: r.Allowed, Remaining: r.Remaining, Limit: r.Limit,
		ResetMs: ceilMs(r.Reset), RetryAfterMs: ceilMs(r.RetryAfter)}
	if r.RetryAfter < 0 {
		res.RetryAfterMs = -1
	}
	return res
}

func ceilMs(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + time.Millisecond - 1) / time.Millisecond)
}
