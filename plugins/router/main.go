// Command router is Plinth's first-party route plugin: a per-tenant route table from the plugin's
// configuration, mapping method and path patterns to built-in endpoints, plugin handlers or fixed
// responses.
//
// Configuration (JSON):
//
//	{
//	  "routes": [
//	    {"method": "GET",  "path": "/v1/hello", "respond": {"status": 200, "body": "hi\n",
//	                                                         "headers": {"content-type": "text/plain"}}},
//	    {"method": "POST", "path": "/v1/tools/{tool}", "plugin": "tools", "tags": {"kind": "tool"}},
//	    {"method": "GET",  "path": "/v1/m", "builtin": "models.list"},
//	    {"path": "/v1/{rest...}", "default": true}
//	  ],
//	  "otherwise": "default"
//	}
//
// Routes are tried in order; the first whose method (empty or "*" matches any) and path match wins.
// In a path, {name} matches one segment and {name...} the rest of the path (at the end only); captured
// segments become the decision's path parameters. A route's target is exactly one of respond, plugin,
// builtin or default (the host's built-in routing). When nothing matches, "otherwise" decides: "default"
// (the default) hands the request to the host's routing, "not_found" answers 404.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/plinth-dev/plinth/sdk"
)

type config struct {
	Routes    []routeConfig `json:"routes"`
	Otherwise string        `json:"otherwise"`
}

type routeConfig struct {
	Method  string            `json:"method"`
	Path    string            `json:"path"`
	Respond *respondConfig    `json:"respond"`
	Plugin  string            `json:"plugin"`
	Builtin string            `json:"builtin"`
	Default bool              `json:"default"`
	Tags    map[string]string `json:"tags"`
}

type respondConfig struct {
	Status  int               `json:"status"`
	Body    string            `json:"body"`
	JSON    json.RawMessage   `json:"json"`
	Headers map[string]string `json:"headers"`
}

// route is a compiled route.
type route struct {
	method   string
	segs     []string
	rest     bool // last segment is {name...}
	decision sdk.Route
}

// The compiled route table, set by configure before any hook call.
var (
	table     []route
	otherwise sdk.Route
)

func configure([]byte) error {
	var c config
	if err := sdk.ConfigJSON(&c); err != nil {
		return err
	}
	var err error
	table, err = compile(c)
	return err
}

func compile(c config) ([]route, error) {
	otherwise = sdk.Route{}
	switch c.Otherwise {
	case "", "default":
		otherwise = sdk.Default()
	case "not_found":
		otherwise = sdk.Respond(404, []byte(`{"error":{"message":"no route","type":"not_found_error","param":null,"code":"not_found"}}`),
			sdk.Pair{Key: "content-type", Value: "application/json"})
	default:
		return nil, fmt.Errorf(`router config: otherwise %q: want "default" or "not_found"`, c.Otherwise)
	}
	var out []route
	for i, rc := range c.Routes {
		r, err := compileRoute(rc)
		if err != nil {
			return nil, fmt.Errorf("router config: routes[%d] (%s %s): %w", i, rc.Method, rc.Path, err)
		}
		out = append(out, r)
	}
	return out, nil
}

func compileRoute(rc routeConfig) (route, error) {
	if !strings.HasPrefix(rc.Path, "/") {
		return route{}, errors.New("path must start with /")
	}
	r := route{method: strings.ToUpper(rc.Method)}
	if r.method == "*" {
		r.method = ""
	}
	r.segs = strings.Split(strings.Trim(rc.Path, "/"), "/")
	for i, s := range r.segs {
		if strings.HasPrefix(s, "{") && strings.HasSuffix(s, "...}") {
			if i != len(r.segs)-1 {
				return route{}, errors.New("{name...} must be the last segment")
			}
			r.rest = true
		}
	}
	targets := 0
	if rc.Respond != nil {
		targets++
		body := []byte(rc.Respond.Body)
		var headers []sdk.Pair
		if len(rc.Respond.JSON) > 0 {
			body = rc.Respond.JSON
			headers = append(headers, sdk.Pair{Key: "content-type", Value: "application/json"})
		}
		for k, v := range rc.Respond.Headers {
			headers = append(headers, sdk.Pair{Key: k, Value: v})
		}
		status := rc.Respond.Status
		if status == 0 {
			status = 200
		}
		r.decision = sdk.Respond(status, body, headers...)
	}
	if rc.Plugin != "" {
		targets++
		r.decision = sdk.ToPlugin(rc.Plugin)
	}
	if rc.Builtin != "" {
		targets++
		r.decision = sdk.Builtin(rc.Builtin)
	}
	if rc.Default {
		targets++
		r.decision = sdk.Default()
	}
	if targets != 1 {
		return route{}, errors.New("set exactly one of respond, plugin, builtin or default")
	}
	for k, v := range rc.Tags {
		r.decision.Tags = append(r.decision.Tags, sdk.Pair{Key: k, Value: v})
	}
	return r, nil
}

// match returns the path parameters if path matches the route's segments.
// match reports whether path matches the route, appending the captured segments to params.
func (r *route) match(path string, params []sdk.Pair) ([]sdk.Pair, bool) {
	path = strings.Trim(path, "/")
	for i, seg := range r.segs {
		if r.rest && i == len(r.segs)-1 {
			params = append(params, sdk.Pair{Key: seg[1 : len(seg)-4], Value: path})
			return params, true
		}
		part, tail, found := strings.Cut(path, "/")
		if part == "" {
			return nil, false
		}
		if strings.HasPrefix(seg, "{") {
			params = append(params, sdk.Pair{Key: seg[1 : len(seg)-1], Value: part})
		} else if part != seg {
			return nil, false
		}
		if !found {
			path = ""
			if i != len(r.segs)-1 {
				return nil, false
			}
		} else {
			path = tail
			if i == len(r.segs)-1 {
				return nil, false
			}
		}
	}
	return params, true
}

// paramBuf holds the captures of the call in progress. The SDK encodes a decision before the handler
// returns to the host, so it can be reused by the next call, which saves an allocation per request
// (allocation is slow in Go on Wasm).
var paramBuf []sdk.Pair

func routeRequest(req *sdk.Request) (sdk.Route, error) {
	for i := range table {
		r := &table[i]
		if r.method != "" && r.method != req.Method {
			continue
		}
		params, ok := r.match(req.Path, paramBuf[:0])
		paramBuf = params[:0]
		if !ok {
			continue
		}
		d := r.decision
		if d.Action != 0 {
			d.Params = append(params, d.Params...)
			paramBuf = d.Params[:0]
		}
		return d, nil
	}
	return otherwise, nil
}

func init() {
	sdk.OnConfigure(configure)
	sdk.OnRoute(routeRequest)
}

func main() {}
