package abi

import (
	"bytes"
	"errors"
	"math"
	"reflect"
	"testing"
)

func sampleRequest() Request {
	return Request{
		ID: "req_1", Method: "POST", Path: "/v1/chat/completions", Query: "a=1&b=%20",
		Headers:  []Pair{{"content-type", "application/json"}, {"x-empty", ""}, {"", "odd"}},
		ClientIP: "203.0.113.9", Tenant: "acme", KeyID: "k1", KeyLabel: "pro",
		Body: []byte(`{"model":"x"}`),
		Route: RouteDecision{Action: RouteBuiltin, Target: "chat.completions",
			Params: []Pair{{"id", "conv_1"}}, Tags: []Pair{{"tier", "gold"}}},
		Tokens: -42,
	}
}

func TestRequestRoundTrip(t *testing.T) {
	in := sampleRequest()
	var out Request
	if err := out.Decode(in.AppendTo(nil)); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(in, out) {
		t.Fatalf("round trip changed the request:\n in  %+v\n out %+v", in, out)
	}
}

func TestDecisionsRoundTrip(t *testing.T) {
	rd := RouteDecision{Action: RouteRespond, Response: Response{Status: 418, Headers: []Pair{{"a", "b"}},
		Body: bytes.Repeat([]byte("z"), 300)}, Error: "e"}
	var rd2 RouteDecision
	if err := rd2.Decode(rd.AppendTo(nil)); err != nil || !reflect.DeepEqual(rd, rd2) {
		t.Fatalf("route decision: %v\n%+v\n%+v", err, rd, rd2)
	}
	rl := RateLimitDecision{Deny: true, RetryAfterMs: 1500, Message: "slow", Status: 503,
		Policies:     []RatePolicy{{Name: "key", Limit: 60, WindowMs: 60000, Remaining: 0, ResetMs: 999}, {}},
		Reservations: []TokenReservation{{Key: "tok:k1", Limit: 1000, PeriodMs: 60000, Burst: 10, Reserved: 300}}}
	var rl2 RateLimitDecision
	if err := rl2.Decode(rl.AppendTo(nil)); err != nil || !reflect.DeepEqual(rl, rl2) {
		t.Fatalf("ratelimit decision: %v\n%+v\n%+v", err, rl, rl2)
	}
	sr := KVScanResult{Entries: []KVEntry{{Key: []byte("a"), Value: []byte("1")}, {Key: []byte("b")}}, More: true}
	var sr2 KVScanResult
	if err := sr2.Decode(sr.AppendTo(nil)); err != nil || len(sr2.Entries) != 2 || !sr2.More ||
		string(sr2.Entries[1].Key) != "b" || len(sr2.Entries[1].Value) != 0 {
		t.Fatalf("scan result: %v %+v", err, sr2)
	}
}

func TestEncoderNestedLengths(t *testing.T) {
	// Nested messages of every varint length class survive Begin/End's back-patching.
	for _, n := range []int{0, 1, 127, 128, 16383, 16384, 1 << 21} {
		e := Encoder{}
		m := e.Begin(3)
		e.Bytes(1, bytes.Repeat([]byte{7}, n))
		e.End(m)
		e.Uint(4, 99)
		d := Decoder{B: e.B}
		if !d.Next() || d.Field() != 3 {
			t.Fatalf("n=%d: no nested field", n)
		}
		sub := d.Message()
		if n > 0 && (!sub.Next() || len(sub.Bytes()) != n) {
			t.Fatalf("n=%d: nested payload lost", n)
		}
		if !d.Next() || d.Field() != 4 || d.Uint() != 99 {
			t.Fatalf("n=%d: field after the nested message misread", n)
		}
	}
}

func TestScalarsAndMalformed(t *testing.T) {
	e := Encoder{}
	e.Int(1, math.MinInt64)
	e.Int(2, math.MaxInt64)
	e.Float(3, -2.5)
	e.Uint(4, math.MaxUint64)
	d := Decoder{B: e.B}
	got := map[int]any{}
	for d.Next() {
		switch d.Field() {
		case 1, 2:
			got[d.Field()] = d.Int()
		case 3:
			got[3] = d.Float()
		case 4:
			got[4] = d.Uint()
		}
	}
	if d.Err() != nil || got[1] != int64(math.MinInt64) || got[2] != int64(math.MaxInt64) || got[3] != -2.5 ||
		got[4] != uint64(math.MaxUint64) {
		t.Fatalf("scalars: %v %v", got, d.Err())
	}
	for _, bad := range [][]byte{
		{0x0a, 0x05, 'a'}, // length beyond the input
		{0x0b},            // wire type 3 (groups) is not part of the ABI
		{0x08},            // varint missing
		{0x00, 0x00},      // field number 0
		{0x09, 1, 2, 3},   // fixed64 truncated
		{0x08, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01}, // varint overflow
	} {
		var r Request
		if err := r.Decode(bad); !errors.Is(err, ErrMalformed) {
			t.Errorf("%x: err = %v, want ErrMalformed", bad, err)
		}
	}
	// A field read with the wrong accessor is an error, not a silent zero.
	var r Request
	if err := r.Decode([]byte{0x10, 0x01}); !errors.Is(err, ErrMalformed) { // field 2 (method) as a varint
		t.Errorf("wrong wire type accepted: %v", err)
	}
	// Unknown fields are skipped.
	e = Encoder{}
	e.String(99, "future")
	e.String(2, "GET")
	if err := r.Decode(e.B); err != nil || r.Method != "GET" {
		t.Errorf("unknown field: %v %+v", err, r)
	}
}

func TestPairBytesLowerInPlace(t *testing.T) {
	e := Encoder{}
	at := e.PairBytes(5, []byte("X-Trace"), []byte("v"))
	copy(e.B[at:], "x-trace")
	var r Request
	if err := r.Decode(e.B); err != nil || r.Headers[0] != (Pair{"x-trace", "v"}) {
		t.Fatalf("%v %+v", err, r.Headers)
	}
	e = Encoder{}
	e.PairBytes(5, nil, nil)
	if err := r.Decode(e.B); err != nil || len(r.Headers) != 1 || r.Headers[0] != (Pair{}) {
		t.Fatalf("empty pair: %v %+v", err, r.Headers)
	}
}

func TestHooksAndStatus(t *testing.T) {
	for _, h := range Hooks {
		got, ok := ParseHook(h.String())
		if !ok || got != h || !h.Valid() {
			t.Errorf("hook %d does not round-trip through its name %q", h, h)
		}
	}
	if HookRoute.Export() != "plinth_on_route" {
		t.Errorf("export name %q", HookRoute.Export())
	}
	var s HookSet
	if s.With(HookHandle).Has(HookRoute) || !s.With(HookHandle).Has(HookHandle) {
		t.Error("hook set")
	}
	p, n := UnpackResult(PackResult(0xdeadbeef, 0x12345678))
	if p != 0xdeadbeef || n != 0x12345678 {
		t.Errorf("pack/unpack: %x %x", p, n)
	}
	if StatusConflict.Error() != "conflict" || Status(-99).Error() != "status -99" {
		t.Error("status names")
	}
	var out [RLResultSize]byte
	in := RLResult{Allowed: true, Remaining: 5, RetryAfterMs: -1, ResetMs: 7, Limit: 9}
	PutRLResult(out[:], in)
	if ReadRLResult(out[:]) != in {
		t.Error("rl result round trip")
	}
}

// Fuzz targets: each decoder must never panic, and whatever it accepts must re-encode to bytes that
// decode to the same value (the canonical encoding is stable).

func FuzzRequest(f *testing.F) {
	r := sampleRequest()
	f.Add(r.AppendTo(nil))
	f.Add([]byte{})
	f.Add([]byte{0x5a, 0x02, 0x08, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		var a, c Request
		if a.Decode(b) != nil {
			return
		}
		if err := c.Decode(a.AppendTo(nil)); err != nil {
			t.Fatalf("re-encoding of an accepted request does not decode: %v", err)
		}
		if !reflect.DeepEqual(normRequest(a), normRequest(c)) {
			t.Fatalf("unstable:\n%+v\n%+v", a, c)
		}
		// The string decoder sees exactly what the byte decoder sees.
		var s Request
		if err := s.DecodeString(string(b)); err != nil || !reflect.DeepEqual(normRequest(a), normRequest(s)) {
			t.Fatalf("string decoding differs: %v\n%+v\n%+v", err, a, s)
		}
	})
}

// normRequest maps nil and empty slices together: the encoding does not distinguish them.
func normRequest(r Request) Request {
	if len(r.Body) == 0 {
		r.Body = nil
	}
	r.Route.Response.Body = nil
	if len(r.Headers) == 0 {
		r.Headers = nil
	}
	if len(r.Route.Params) == 0 {
		r.Route.Params = nil
	}
	if len(r.Route.Tags) == 0 {
		r.Route.Tags = nil
	}
	if len(r.Route.Response.Headers) == 0 {
		r.Route.Response.Headers = nil
	}
	return r
}

func FuzzRouteDecision(f *testing.F) {
	d := RouteDecision{Action: RouteRespond, Target: "x", Response: Response{Status: 200, Body: []byte("b")}}
	f.Add(d.AppendTo(nil))
	f.Add([]byte{0x08, 0x09})
	f.Fuzz(func(t *testing.T, b []byte) {
		var a, c RouteDecision
		if a.Decode(b) != nil {
			return
		}
		if err := c.Decode(a.AppendTo(nil)); err != nil {
			t.Fatalf("re-encoding does not decode: %v", err)
		}
		if a.Action != c.Action || a.Target != c.Target || a.Error != c.Error || len(a.Params) != len(c.Params) ||
			a.Response.Status != c.Response.Status || !bytes.Equal(a.Response.Body, c.Response.Body) {
			t.Fatalf("unstable:\n%+v\n%+v", a, c)
		}
	})
}

func FuzzRateLimitDecision(f *testing.F) {
	d := RateLimitDecision{Deny: true, Policies: []RatePolicy{{Name: "k", Limit: 1}},
		Reservations: []TokenReservation{{Key: "t", Reserved: 5}}}
	f.Add(d.AppendTo(nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		var a, c RateLimitDecision
		if a.Decode(b) != nil {
			return
		}
		if err := c.Decode(a.AppendTo(nil)); err != nil {
			t.Fatalf("re-encoding does not decode: %v", err)
		}
		if !reflect.DeepEqual(a, c) {
			t.Fatalf("unstable:\n%+v\n%+v", a, c)
		}
	})
}

func FuzzKVScan(f *testing.F) {
	q := KVScanRequest{Prefix: []byte("p"), After: []byte("pa"), Limit: 10, KeysOnly: true}
	f.Add(q.AppendTo(nil))
	r := KVScanResult{Entries: []KVEntry{{Key: []byte("k"), Value: []byte("v")}}, More: true}
	f.Add(r.AppendTo(nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		var q KVScanRequest
		if q.Decode(b) == nil && q.Limit > MaxScanEntries {
			t.Fatalf("limit %d not clamped", q.Limit)
		}
		var a, c KVScanResult
		if a.Decode(b) != nil {
			return
		}
		if err := c.Decode(a.AppendTo(nil)); err != nil || len(a.Entries) != len(c.Entries) || a.More != c.More {
			t.Fatalf("unstable: %v\n%+v\n%+v", err, a, c)
		}
	})
}
