// Package ratelimit is the host side of the rl_take host call: GCRA state in memory, sharded for
// concurrency. The algorithm itself is abi/gcra, shared with sdk/sdktest.
//
// State is per process and lost on restart, which only ever makes limits more lenient for one period;
// scaling out shares nothing (each node enforces its own share).
package ratelimit

import (
	"hash/maphash"
	"sync"
	"time"

	"github.com/plinth-dev/plinth/abi/gcra"
)

const shardCount = 64

// Limiter holds the theoretical arrival time of every active key. It is safe for concurrent use.
type Limiter struct {
	seed   maphash.Seed
	now    func() time.Time
	shards [shardCount]shard
}

type shard struct {
	mu   sync.Mutex
	tats map[string]int64 // key → TAT in Unix ns; guarded by mu
	_    [40]byte         // keep shards on separate cache lines
}

// New returns an empty Limiter. now may be nil: the system clock, read through the monotonic clock
// (half the cost of time.Now; a take reads it once).
func New(now func() time.Time) *Limiter {
	if now == nil {
		base := time.Now()
		now = func() time.Time { return base.Add(time.Since(base)) }
	}
	l := &Limiter{seed: maphash.MakeSeed(), now: now}
	for i := range l.shards {
		l.shards[i].tats = map[string]int64{}
	}
	return l
}

// Take applies one GCRA take to key. The caller scopes keys (tenant and plugin prefixes) so that no two
// tenants share a key; the key bytes are not retained.
func (l *Limiter) Take(key []byte, p gcra.Params) gcra.Result {
	s := &l.shards[maphash.Bytes(l.seed, key)%shardCount]
	now := l.now().UnixNano()
	s.mu.Lock()
	tat, ok := s.tats[string(key)]
	newTat, r := gcra.Take(tat, now, p)
	if newTat != tat || !ok {
		s.tats[string(key)] = newTat
	}
	s.mu.Unlock()
	return r
}

// Adjust applies a correction of delta units (positive takes more, negative returns units) without a
// limit check: the host uses it to settle token reservations with real usage.
func (l *Limiter) Adjust(key []byte, p gcra.Params, delta int64) {
	if delta == 0 || p.Limit <= 0 || p.Period <= 0 {
		return
	}
	s := &l.shards[maphash.Bytes(l.seed, key)%shardCount]
	now := l.now().UnixNano()
	interval := int64(p.Period) / p.Limit
	s.mu.Lock()
	defer s.mu.Unlock()
	tat := max(s.tats[string(key)], now)
	tat += delta * interval
	if tat <= now {
		delete(s.tats, string(key))
		return
	}
	s.tats[string(key)] = tat
}

// Sweep forgets keys whose TAT has passed: they are fully replenished, exactly like a key never seen.
// It returns the number of keys left.
func (l *Limiter) Sweep() int {
	now := l.now().UnixNano()
	left := 0
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		for k, tat := range s.tats {
			if tat <= now {
				delete(s.tats, k)
			}
		}
		left += len(s.tats)
		s.mu.Unlock()
	}
	return left
}

// Len returns the number of keys held.
func (l *Limiter) Len() int {
	n := 0
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		n += len(s.tats)
		s.mu.Unlock()
	}
	return n
}
