// Command echo is a fixture plugin (paths with or without a /v1 prefix): its route hook answers /echo directly
// (and /config with its configuration, /search with the number of hits of a search for the query string) with a summary of the request,
// its handle hook echoes the body, and its ratelimit hook allows 3 requests per minute per API key.
package main

import (
	"strconv"
	"strings"
	"time"

	"github.com/plinth-dev/plinth/sdk"
)

func init() {
	sdk.OnRoute(func(req *sdk.Request) (sdk.Route, error) {
		switch strings.TrimPrefix(req.Path, "/v1") {
		case "/echo":
			body := req.Method + " " + req.Path + " key=" + req.KeyID + " tier=" + req.KeyLabel
			return sdk.Respond(200, []byte(body), sdk.Pair{Key: "content-type", Value: "text/plain"}), nil
		case "/handled":
			return sdk.ToPlugin("echo"), nil
		case "/config":
			return sdk.Respond(200, sdk.Config()), nil
		case "/search":
			hits, err := sdk.Search(sdk.SearchRequest{StoreIDs: []string{"vs"}, Query: req.Query})
			if err != nil {
				return sdk.Route{}, err
			}
			return sdk.Respond(200, []byte(strconv.Itoa(len(hits)))), nil
		}
		return sdk.Default(), nil
	})
	sdk.OnRateLimit(func(req *sdk.Request) (sdk.RateLimit, error) {
		l := sdk.Limit{Limit: 3, Period: time.Minute}
		r, err := sdk.RateLimitTake("key:"+req.KeyID, l, 1)
		if err != nil {
			return sdk.RateLimit{}, err
		}
		p := r.Policy("key", l)
		if !r.Allowed {
			return sdk.Deny(r.RetryAfter.Milliseconds(), "slow down", p), nil
		}
		return sdk.Allow(p), nil
	})
	sdk.OnHandle(func(req *sdk.Request) (sdk.Response, error) {
		n, err := sdk.KV.Incr("calls", 1, 0)
		if err != nil {
			return sdk.Response{}, err
		}
		return sdk.Response{Status: 200, Body: req.Body,
			Headers: []sdk.Pair{{Key: "x-calls", Value: strconv.FormatInt(n, 10)}}}, nil
	})
}

func main() {}
