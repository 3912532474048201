package ratelimit

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/abi/gcra"
)

type clock struct{ t atomic.Int64 }

func (c *clock) now() time.Time          { return time.Unix(0, c.t.Load()) }
func (c *clock) advance(d time.Duration) { c.t.Add(int64(d)) }

func TestConcurrentTakesNeverExceedBurst(t *testing.T) {
	c := &clock{}
	c.t.Store(1e12)
	l := New(c.now)
	p := gcra.Params{Limit: 100, Period: time.Minute, Burst: 50, Cost: 1}
	var allowed atomic.Int64
	var wg sync.WaitGroup
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 100; i++ {
				if l.Take([]byte("tenant\x00key"), p).Allowed {
					allowed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if allowed.Load() != 50 {
		t.Fatalf("allowed %d takes at one instant, want exactly the burst of 50", allowed.Load())
	}
}

func TestKeysAreIndependentAndSweepForgetsReplenished(t *testing.T) {
	c := &clock{}
	c.t.Store(1e12)
	l := New(c.now)
	p := gcra.Params{Limit: 1, Period: time.Second, Cost: 1}
	if !l.Take([]byte("a"), p).Allowed || !l.Take([]byte("b"), p).Allowed {
		t.Fatal("first take of distinct keys denied")
	}
	if l.Take([]byte("a"), p).Allowed {
		t.Fatal("second take of a allowed")
	}
	c.advance(2 * time.Second)
	if n := l.Sweep(); n != 0 {
		t.Fatalf("%d keys left after they replenished", n)
	}
	if !l.Take([]byte("a"), p).Allowed {
		t.Fatal("take after replenish denied")
	}
}

func TestAdjustSettlesReservations(t *testing.T) {
	c := &clock{}
	c.t.Store(1e12)
	l := New(c.now)
	p := gcra.Params{Limit: 1000, Period: time.Minute, Cost: 800}
	if !l.Take([]byte("tok"), p).Allowed {
		t.Fatal("reservation denied")
	}
	p.Cost = 300
	if l.Take([]byte("tok"), p).Allowed {
		t.Fatal("over-budget take allowed before settling")
	}
	// Real usage was 100 of the 800 reserved: give 700 back.
	l.Adjust([]byte("tok"), p, -700)
	if !l.Take([]byte("tok"), p).Allowed {
		t.Fatal("take denied after the reservation was settled")
	}
}
