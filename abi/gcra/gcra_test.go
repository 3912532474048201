package gcra

import (
	"testing"
	"time"
)

func TestTakeBurstThenSteadyRate(t *testing.T) {
	p := Params{Limit: 10, Period: time.Second, Burst: 5, Cost: 1}
	var tat int64
	now := int64(1e12)
	for i := 0; i < 5; i++ {
		var r Result
		tat, r = Take(tat, now, p)
		if !r.Allowed {
			t.Fatalf("take %d of the burst was denied", i)
		}
		if r.Remaining != int64(4-i) {
			t.Fatalf("take %d: remaining %d, want %d", i, r.Remaining, 4-i)
		}
	}
	tat2, r := Take(tat, now, p)
	if r.Allowed || tat2 != tat {
		t.Fatalf("6th take at the same instant: allowed=%v tat changed=%v", r.Allowed, tat2 != tat)
	}
	if r.RetryAfter != 100*time.Millisecond {
		t.Fatalf("retry after %v, want one emission interval (100ms)", r.RetryAfter)
	}
	if r.Reset != 500*time.Millisecond {
		t.Fatalf("reset %v, want 500ms", r.Reset)
	}
	// One interval later exactly one more unit is admitted.
	now += int64(100 * time.Millisecond)
	tat, r = Take(tat, now, p)
	if !r.Allowed || r.Remaining != 0 {
		t.Fatalf("after one interval: allowed=%v remaining=%d", r.Allowed, r.Remaining)
	}
	if _, r = Take(tat, now, p); r.Allowed {
		t.Fatal("second take in the same interval was allowed")
	}
}

func TestTakeCostAboveBurstNeverSucceeds(t *testing.T) {
	_, r := Take(0, 1e12, Params{Limit: 10, Period: time.Second, Burst: 3, Cost: 4})
	if r.Allowed || r.RetryAfter != -1 {
		t.Fatalf("got %+v, want denied with RetryAfter -1", r)
	}
}

func TestTakeZeroCostInspects(t *testing.T) {
	p := Params{Limit: 2, Period: time.Second, Cost: 1}
	tat, _ := Take(0, 1e12, p)
	p.Cost = 0
	tat2, r := Take(tat, 1e12, p)
	if tat2 != tat || !r.Allowed || r.Remaining != 1 {
		t.Fatalf("inspect changed state or reported wrongly: %+v", r)
	}
}

func TestParamsValid(t *testing.T) {
	for _, p := range []Params{{Limit: 0, Period: time.Second}, {Limit: 1}, {Limit: 1, Period: time.Second, Cost: -1}} {
		if p.Valid() {
			t.Errorf("%+v should be invalid", p)
		}
	}
	if !(Params{Limit: 1, Period: time.Second}).Valid() {
		t.Error("minimal params should be valid")
	}
}
