package abi

import (
	"encoding/binary"
	"fmt"
)

// Field numbers are part of the ABI: never renumber or reuse one. Field 15 of every result message is
// reserved for Error, the handler's error text.

// Pair is a name/value pair: a header (names are lower-case), a tag or a path parameter.
type Pair struct {
	Key   string
	Value string
}

// Lookup returns the value of the first pair named key (exact match).
func Lookup(pairs []Pair, key string) (string, bool) {
	for _, p := range pairs {
		if p.Key == key {
			return p.Value, true
		}
	}
	return "", false
}

// Request is the input of the route, ratelimit and handle hooks: the client's HTTP request as the host
// authenticated it.
type Request struct {
	ID       string // 1: request id, also sent to the client as X-Request-Id
	Method   string // 2
	Path     string // 3: decoded path, without the query
	Query    string // 4: raw query string, without '?'
	Headers  []Pair // 5: names lower-cased, in arrival order; Authorization is never included
	ClientIP string // 6
	Tenant   string // 7: id of the authenticated tenant
	KeyID    string // 8: id of the API key used (never the key itself)
	KeyLabel string // 9: the key's label, the conventional rate-limit tier
	Body     []byte // 10: the request body (handle hook only)
	// Route is the decision of the route hook (ratelimit and handle hooks; the host's default routing
	// fills it when the tenant has no route plugin).
	Route RouteDecision // 11
	// Tokens is the host's estimate of the LLM tokens the request will use (prompt + max completion),
	// set for chat requests so the ratelimit hook can apply token budgets; 0 elsewhere.
	Tokens int64 // 12
}

// Header returns the value of the first header with the given lower-case name.
func (r *Request) Header(name string) string {
	v, _ := Lookup(r.Headers, name)
	return v
}

// RouteAction says what the host does with a request after the route hook.
type RouteAction uint8

// Route actions.
const (
	// RouteDefault leaves the request to the host's built-in routing by method and path.
	RouteDefault RouteAction = 0
	// RouteBuiltin sends the request to the built-in endpoint named by Target ("chat.completions"...).
	RouteBuiltin RouteAction = 1
	// RoutePlugin sends the request to the handle hook of the tenant's plugin named by Target.
	RoutePlugin RouteAction = 2
	// RouteRespond answers with Response without reaching any endpoint (after the ratelimit hook).
	RouteRespond RouteAction = 3
)

// RouteDecision is the result of the route hook.
type RouteDecision struct {
	Action   RouteAction // 1
	Target   string      // 2: endpoint name (RouteBuiltin) or plugin name (RoutePlugin)
	Params   []Pair      // 3: path parameters for the target ("id" for /v1/conversations/{id}...)
	Tags     []Pair      // 4: free-form tags passed to later hooks and recorded in metrics
	Response Response    // 5: the direct response (RouteRespond)
	Error    string      // 15
}

// Response is the result of the handle hook, and the direct response of a route decision.
type Response struct {
	Status  int32  // 1: HTTP status; 0 means 200
	Headers []Pair // 2
	Body    []byte // 3
	// Streamed reports that the handler already sent the response with resp_start and resp_write;
	// Status, Headers and Body are then ignored.
	Streamed bool   // 4
	Error    string // 15
}

// RatePolicy describes one limit a ratelimit decision took into account, for the IETF RateLimit and
// RateLimit-Policy response headers.
type RatePolicy struct {
	Name      string // 1: policy name, e.g. "key" or "ip"
	Limit     int64  // 2: quota (q) per window
	WindowMs  int64  // 3: window (w)
	Remaining int64  // 4: remaining quota (r)
	ResetMs   int64  // 5: time until the quota is fully restored (t)
}

// RateLimitDecision is the result of the ratelimit hook. The zero value allows the request.
type RateLimitDecision struct {
	Deny         bool         // 1
	RetryAfterMs int64        // 2: Retry-After for a denial
	Message      string       // 3: error message for the client on denial
	Status       int32        // 4: status on denial; 0 means 429
	Policies     []RatePolicy // 5: for the RateLimit / RateLimit-Policy headers, on any response
	// Reservations are token budgets the host settles when an LLM response ends: the plugin took
	// Reserved tokens at admission; the host takes or returns the difference to real usage.
	Reservations []TokenReservation // 6
	Error        string             // 15
}

// TokenReservation is a token budget taken at admission and reconciled with real usage by the host.
type TokenReservation struct {
	Key      string // 1: the rate-limit key the tokens were taken from (the plugin's key space)
	Limit    int64  // 2: the GCRA parameters used for the take
	PeriodMs int64  // 3
	Burst    int64  // 4
	Reserved int64  // 5: tokens taken at admission
}

// RLResult is the decoded result of rl_take.
type RLResult struct {
	Allowed      bool
	Remaining    int64
	RetryAfterMs int64
	ResetMs      int64
	Limit        int64
}

// PutRLResult writes r into out (RLResultSize bytes).
func PutRLResult(out []byte, r RLResult) {
	var a uint64
	if r.Allowed {
		a = 1
	}
	binary.LittleEndian.PutUint64(out[0:], a)
	binary.LittleEndian.PutUint64(out[8:], uint64(r.Remaining))
	binary.LittleEndian.PutUint64(out[16:], uint64(r.RetryAfterMs))
	binary.LittleEndian.PutUint64(out[24:], uint64(r.ResetMs))
	binary.LittleEndian.PutUint64(out[32:], uint64(r.Limit))
}

// ReadRLResult decodes an rl_take result.
func ReadRLResult(b []byte) RLResult {
	return RLResult{
		Allowed:      binary.LittleEndian.Uint64(b[0:]) == 1,
		Remaining:    int64(binary.LittleEndian.Uint64(b[8:])),
		RetryAfterMs: int64(binary.LittleEndian.Uint64(b[16:])),
		ResetMs:      int64(binary.LittleEndian.Uint64(b[24:])),
		Limit:        int64(binary.LittleEndian.Uint64(b[32:])),
	}
}

func malformed(what string, d *Decoder) error {
	if d.err == nil {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrMalformed, what)
}

// AppendTo appends the encoding of r to b.
func (r *Request) AppendTo(b []byte) []byte {
	e := Encoder{B: b}
	e.String(1, r.ID)
	e.String(2, r.Method)
	e.String(3, r.Path)
	e.String(4, r.Query)
	for _, h := range r.Headers {
		e.Pair(5, h.Key, h.Value)
	}
	e.String(6, r.ClientIP)
	e.String(7, r.Tenant)
	e.String(8, r.KeyID)
	e.String(9, r.KeyLabel)
	e.Bytes(10, r.Body)
	if !r.Route.isZero() {
		m := e.Begin(11)
		e.B = r.Route.AppendTo(e.B)
		e.End(m)
	}
	e.Int(12, r.Tokens)
	return e.B
}

// Decode replaces r with the decoding of b. Byte slices alias b.
func (r *Request) Decode(b []byte) error {
	d := Decoder{B: b}
	return r.decode(&d)
}

// DecodeString replaces r with the decoding of s. Strings are substrings of s and byte slices views of
// it (do not modify them), so decoding allocates almost nothing; r's slices keep their capacity.
func (r *Request) DecodeString(s string) error {
	d := NewStringDecoder(s)
	return r.decode(&d)
}

func (r *Request) decode(d *Decoder) error {
	headers := r.Headers[:0]
	*r = Request{}
	for {
		// Inline fast path for a length-delimited field with a one-byte tag and a one-byte length,
		// which is nearly every field of a request. Guest code decodes requests on every hook call, and
		// in Go on Wasm a function call costs more than the whole fast path.
		if b := d.B; len(b) >= 2 && b[0] < 0x80 && b[0]&7 == wireBytes && b[0]>>3 != 0 && b[1] < 0x80 && int(b[1])+2 <= len(b) {
			l := int(b[1]) + 2
			d.field, d.wire, d.data, d.B = int(b[0]>>3), wireBytes, b[2:l], b[l:]
			if d.mirror {
				d.sdata, d.s = d.s[2:l], d.s[l:]
			}
		} else if !d.Next() {
			break
		}
		switch d.Field() {
		case 1:
			r.ID = d.String()
		case 2:
			r.Method = d.String()
		case 3:
			r.Path = d.String()
		case 4:
			r.Query = d.String()
		case 5:
			k, v := d.Pair()
			headers = append(headers, Pair{k, v})
		case 6:
			r.ClientIP = d.String()
		case 7:
			r.Tenant = d.String()
		case 8:
			r.KeyID = d.String()
		case 9:
			r.KeyLabel = d.String()
		case 10:
			r.Body = d.Bytes()
		case 11:
			sub := d.Message()
			if err := r.Route.decode(&sub); err != nil {
				return err
			}
		case 12:
			r.Tokens = d.Int()
		}
	}
	if len(headers) > 0 {
		r.Headers = headers
	}
	return malformed("request", d)
}

func (r *RouteDecision) isZero() bool {
	return r.Action == 0 && r.Target == "" && len(r.Params) == 0 && len(r.Tags) == 0 &&
		r.Response.isZero() && r.Error == ""
}

// AppendTo appends the encoding of r to b.
func (r *RouteDecision) AppendTo(b []byte) []byte {
	e := Encoder{B: b}
	e.Uint(1, uint64(r.Action))
	e.String(2, r.Target)
	for _, p := range r.Params {
		e.Pair(3, p.Key, p.Value)
	}
	for _, p := range r.Tags {
		e.Pair(4, p.Key, p.Value)
	}
	if !r.Response.isZero() {
		m := e.Begin(5)
		e.B = r.Response.AppendTo(e.B)
		e.End(m)
	}
	e.String(15, r.Error)
	return e.B
}

// Decode replaces r with the decoding of b. Byte slices alias b.
func (r *RouteDecision) Decode(b []byte) error {
	d := Decoder{B: b}
	return r.decode(&d)
}

func (r *RouteDecision) decode(d *Decoder) error {
	*r = RouteDecision{}
	for d.Next() {
		switch d.Field() {
		case 1:
			v := d.Uint()
			if v > uint64(RouteRespond) {
				return fmt.Errorf("%w: unknown route action %d", ErrMalformed, v)
			}
			r.Action = RouteAction(v)
		case 2:
			r.Target = d.String()
		case 3:
			k, v := d.Pair()
			r.Params = append(r.Params, Pair{k, v})
		case 4:
			k, v := d.Pair()
			r.Tags = append(r.Tags, Pair{k, v})
		case 5:
			sub := d.Message()
			if err := r.Response.decode(&sub); err != nil {
				return err
			}
		case 15:
			r.Error = d.String()
		}
	}
	return malformed("route decision", d)
}

func (r *Response) isZero() bool {
	return r.Status == 0 && len(r.Headers) == 0 && len(r.Body) == 0 && !r.Streamed && r.Error == ""
}

// AppendTo appends the encoding of r to b.
func (r *Response) AppendTo(b []byte) []byte {
	e := Encoder{B: b}
	e.Int(1, int64(r.Status))
	for _, h := range r.Headers {
		e.Pair(2, h.Key, h.Value)
	}
	e.Bytes(3, r.Body)
	e.Bool(4, r.Streamed)
	e.String(15, r.Error)
	return e.B
}

// Decode replaces r with the decoding of b. Byte slices alias b.
func (r *Response) Decode(b []byte) error {
	d := Decoder{B: b}
	return r.decode(&d)
}

func (r *Response) decode(d *Decoder) error {
	*r = Response{}
	for d.Next() {
		switch d.Field() {
		case 1:
			v := d.Int()
			if v < 0 || v > 999 {
				return fmt.Errorf("%w: status %d out of range", ErrMalformed, v)
			}
			r.Status = int32(v)
		case 2:
			k, v := d.Pair()
			r.Headers = append(r.Headers, Pair{k, v})
		case 3:
			r.Body = d.Bytes()
		case 4:
			r.Streamed = d.Bool()
		case 15:
			r.Error = d.String()
		}
	}
	return malformed("response", d)
}

// AppendTo appends the encoding of r to b.
func (r *RateLimitDecision) AppendTo(b []byte) []byte {
	e := Encoder{B: b}
	e.Bool(1, r.Deny)
	e.Int(2, r.RetryAfterMs)
	e.String(3, r.Message)
	e.Int(4, int64(r.Status))
	for i := range r.Policies {
		p := &r.Policies[i]
		m := e.Begin(5)
		e.String(1, p.Name)
		e.Int(2, p.Limit)
		e.Int(3, p.WindowMs)
		e.Int(4, p.Remaining)
		e.Int(5, p.ResetMs)
		e.End(m)
	}
	for i := range r.Reservations {
		t := &r.Reservations[i]
		m := e.Begin(6)
		e.String(1, t.Key)
		e.Int(2, t.Limit)
		e.Int(3, t.PeriodMs)
		e.Int(4, t.Burst)
		e.Int(5, t.Reserved)
		e.End(m)
	}
	e.String(15, r.Error)
	return e.B
}

// Decode replaces r with the decoding of b.
func (r *RateLimitDecision) Decode(b []byte) error {
	*r = RateLimitDecision{}
	d := Decoder{B: b}
	for d.Next() {
		switch d.Field() {
		case 1:
			r.Deny = d.Bool()
		case 2:
			r.RetryAfterMs = d.Int()
		case 3:
			r.Message = d.String()
		case 4:
			v := d.Int()
			if v < 0 || v > 999 {
				return fmt.Errorf("%w: status %d out of range", ErrMalformed, v)
			}
			r.Status = int32(v)
		case 5:
			var p RatePolicy
			s := d.Message()
			for s.Next() {
				switch s.Field() {
				case 1:
					p.Name = s.String()
				case 2:
					p.Limit = s.Int()
				case 3:
					p.WindowMs = s.Int()
				case 4:
					p.Remaining = s.Int()
				case 5:
					p.ResetMs = s.Int()
				}
			}
			d.Merge(&s)
			r.Policies = append(r.Policies, p)
		case 6:
			var t TokenReservation
			s := d.Message()
			for s.Next() {
				switch s.Field() {
				case 1:
					t.Key = s.String()
				case 2:
					t.Limit = s.Int()
				case 3:
					t.PeriodMs = s.Int()
				case 4:
					t.Burst = s.Int()
				case 5:
					t.Reserved = s.Int()
				}
			}
			d.Merge(&s)
			r.Reservations = append(r.Reservations, t)
		case 15:
			r.Error = d.String()
		}
	}
	return malformed("ratelimit decision", &d)
}

// KVScanRequest is the request of kv_scan.
type KVScanRequest struct {
	Prefix   []byte // 1: only keys with this prefix
	After    []byte // 2: exclusive start: only keys greater than this (the last key of the previous page)
	Limit    uint32 // 3: maximum entries; 0 means 100, values above MaxScanEntries are clamped
	KeysOnly bool   // 4: leave values out
}

// KVEntry is one key/value pair of a scan page.
type KVEntry struct {
	Key   []byte // 1
	Value []byte // 2
}

// KVScanResult is the result of kv_scan: entries in ascending byte order of their keys.
type KVScanResult struct {
	Entries []KVEntry // 1
	More    bool      // 2: more keys with the prefix follow the last entry
}

// AppendTo appends the encoding of r to b.
func (r *KVScanRequest) AppendTo(b []byte) []byte {
	e := Encoder{B: b}
	e.Bytes(1, r.Prefix)
	e.Bytes(2, r.After)
	e.Uint(3, uint64(r.Limit))
	e.Bool(4, r.KeysOnly)
	return e.B
}

// Decode replaces r with the decoding of b. Byte slices alias b.
func (r *KVScanRequest) Decode(b []byte) error {
	*r = KVScanRequest{}
	d := Decoder{B: b}
	for d.Next() {
		switch d.Field() {
		case 1:
			r.Prefix = d.Bytes()
		case 2:
			r.After = d.Bytes()
		case 3:
			v := d.Uint()
			if v > MaxScanEntries {
				v = MaxScanEntries
			}
			r.Limit = uint32(v)
		case 4:
			r.KeysOnly = d.Bool()
		}
	}
	return malformed("kv scan request", &d)
}

// AppendTo appends the encoding of r to b.
func (r *KVScanResult) AppendTo(b []byte) []byte {
	e := Encoder{B: b}
	for i := range r.Entries {
		m := e.Begin(1)
		// Keys are never empty, so field 1 is always present and an entry is never a zero message.
		e.Bytes(1, r.Entries[i].Key)
		e.Bytes(2, r.Entries[i].Value)
		e.End(m)
	}
	e.Bool(2, r.More)
	return e.B
}

// Decode replaces r with the decoding of b. Byte slices alias b.
func (r *KVScanResult) Decode(b []byte) error {
	*r = KVScanResult{}
	d := Decoder{B: b}
	for d.Next() {
		switch d.Field() {
		case 1:
			var en KVEntry
			s := d.Message()
			for s.Next() {
				switch s.Field() {
				case 1:
					en.Key = s.Bytes()
				case 2:
					en.Value = s.Bytes()
				}
			}
			d.Merge(&s)
			r.Entries = append(r.Entries, en)
		case 2:
			r.More = d.Bool()
		}
	}
	return malformed("kv scan result", &d)
}
