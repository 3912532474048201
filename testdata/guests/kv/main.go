// Command kv is a fixture plugin that exposes the KV host calls over HTTP, for crash-safety and
// isolation tests: its route hook sends /v1/kv to its handle hook, which runs one JSON command.
//
//	{"op": "get|put|delete|incr|cas|scan", "key": "<hex>", "value": "<hex>", "old": "<hex>" | null,
//	 "prefix": "<hex>", "after": "<hex>", "limit": n, "ttl_ms": n, "delta": n}
//
// Keys and values are hex so tests can send any bytes (invalid UTF-8, separators).
package main

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/plinth-dev/plinth/sdk"
)

type command struct {
	Op     string  `json:"op"`
	Key    string  `json:"key"`
	Value  string  `json:"value"`
	Old    *string `json:"old"`
	New    *string `json:"new"`
	Prefix string  `json:"prefix"`
	After  string  `json:"after"`
	Limit  int     `json:"limit"`
	TTLMs  int64   `json:"ttl_ms"`
	Delta  int64   `json:"delta"`
}

type result struct {
	OK      bool       `json:"ok"`
	Error   string     `json:"error,omitempty"`
	Value   string     `json:"value,omitempty"`
	N       int64      `json:"n,omitempty"`
	Swapped bool       `json:"swapped,omitempty"`
	Entries [][]string `json:"entries,omitempty"`
	More    bool       `json:"more,omitempty"`
}

func unhex(s string) []byte {
	b, _ := hex.DecodeString(s)
	return b
}

func run(c command) result {
	key := string(unhex(c.Key))
	ttl := time.Duration(c.TTLMs) * time.Millisecond
	var r result
	var err error
	switch c.Op {
	case "get":
		var v []byte
		v, err = sdk.KV.Get(key)
		r.Value = hex.EncodeToString(v)
	case "put":
		err = sdk.KV.Put(key, unhex(c.Value), ttl)
	case "delete":
		err = sdk.KV.Delete(key)
	case "incr":
		r.N, err = sdk.KV.Incr(key, c.Delta, ttl)
	case "cas":
		var old, nw []byte
		if c.Old != nil {
			old = unhex(*c.Old)
			if old == nil {
				old = []byte{}
			}
		}
		if c.New != nil {
			nw = unhex(*c.New)
			if nw == nil {
				nw = []byte{}
			}
		}
		r.Swapped, err = sdk.KV.CompareAndSwap(key, old, nw, ttl)
	case "scan":
		var page []sdk.Entry
		page, r.More, err = sdk.KV.Scan(string(unhex(c.Prefix)), string(unhex(c.After)), c.Limit)
		for _, e := range page {
			r.Entries = append(r.Entries, []string{hex.EncodeToString([]byte(e.Key)), hex.EncodeToString(e.Value)})
		}
	default:
		err = errors.New("unknown op " + c.Op)
	}
	if err != nil {
		r.Error = err.Error()
	} else {
		r.OK = true
	}
	return r
}

func init() {
	sdk.OnRoute(func(req *sdk.Request) (sdk.Route, error) {
		if strings.HasPrefix(req.Path, "/v1/kv") {
			return sdk.ToPlugin("kv"), nil
		}
		return sdk.Default(), nil
	})
	sdk.OnHandle(func(req *sdk.Request) (sdk.Response, error) {
		var c command
		if err := json.Unmarshal(req.Body, &c); err != nil {
			return sdk.Response{Status: 400, Body: []byte(err.Error())}, nil
		}
		r := run(c)
		// Failures are reported in the body ("ok": false) with status 200: the command ran, the KV call
		// did not succeed, and tests assert on the error text.
		body, _ := json.Marshal(r)
		return sdk.Response{Status: 200, Body: body, Headers: []sdk.Pair{{Key: "content-type", Value: "application/json"}}}, nil
	})
}

func main() {}
