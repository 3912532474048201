// Command plinth-bench measures a real plinth server end to end on 127.0.0.1 and prints a table. It
// starts the server binary with a generated configuration (a tenant using the first-party router and
// ratelimit plugins with limits high enough never to refuse), then runs each scenario with the same load
// in the same run:
//
//	bare           GET /healthz: fasthttp and nothing else
//	hooks          GET /v1/models: authenticate → route hook → ratelimit hook → a trivial built-in
//	conversations  POST an item to a conversation, then GET it back (one "request" is the pair)
//
// Scenarios run in interleaved rounds (bare, hooks, conversations, bare, hooks, ...) and the table shows
// medians over the rounds, so slow drifts in machine load hit every scenario alike. The last line reads
// `hooks/bare ratio: R`, the median of the per-round ratios. Both sides share the machine's cores:
// compare ratios measured in one run rather than absolute numbers across runs.
//
// The server inherits the environment, so PLINTH_PREEMPTION=none (or close-on-done) measures the same
// path under another loop protection.
package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

func main() {
	bin := flag.String("bin", "bin/plinth", "plinth binary (built with the first-party plugins: make build)")
	duration := flag.Duration("duration", 2*time.Second, "measuring time per scenario and round")
	rounds := flag.Int("rounds", 5, "interleaved rounds of all scenarios")
	warmup := flag.Duration("warmup", time.Second, "unmeasured load before each scenario")
	conns := flag.Int("conns", 32, "concurrent connections for bare and hooks")
	convConns := flag.Int("conv-conns", 64, "concurrent clients for the conversations scenario")
	only := flag.String("only", "", "run only this scenario")
	pprofAddr := flag.String("pprof-addr", "", "have the server serve Go profiles on this address while it runs")
	flag.Parse()
	if err := run(*bin, *duration, *rounds, *warmup, *conns, *convConns, *only, *pprofAddr); err != nil {
		fmt.Fprintln(os.Stderr, "plinth-bench:", err)
		os.Exit(1)
	}
}

const key = "pk-bench-key"

func run(bin string, duration time.Duration, rounds int, warmup time.Duration, conns, convConns int, only, pprofAddr string) error {
	dir, err := os.MkdirTemp("", "plinth-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	sum := sha256.Sum256([]byte(key))
	cfg := map[string]any{"tenants": []any{map[string]any{
		"id":   "bench",
		"keys": []any{map[string]any{"id": "k1", "sha256": hex.EncodeToString(sum[:]), "label": "default"}},
		"plugins": []any{
			map[string]any{"name": "router", "wasm": "embedded:router", "hooks": []string{"route"},
				"config": map[string]any{"routes": []any{map[string]any{"path": "/v1/{rest...}", "default": true}}}},
			map[string]any{"name": "ratelimit", "wasm": "embedded:ratelimit", "hooks": []string{"ratelimit"},
				"config": map[string]any{"tiers": map[string]any{"default": map[string]any{
					"requests": map[string]any{"limit": 1_000_000_000, "period": "1m"}}}}},
		},
		"limits": map[string]any{"plugin_instances": 4},
	}}}
	cfgPath := filepath.Join(dir, "plinth.json")
	b, _ := json.Marshal(cfg)
	if err := os.WriteFile(cfgPath, b, 0o644); err != nil {
		return err
	}
	addr, err := freeAddr()
	if err != nil {
		return err
	}
	var logs bytes.Buffer
	cmd := exec.Command(bin, "serve", "-config", cfgPath, "-data-dir", filepath.Join(dir, "data"), "-addr", addr,
		"-log-level", "error", "-pprof-addr", pprofAddr)
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { cmd.Process.Signal(os.Interrupt); cmd.Wait() }()
	if err := waitReady(addr, 60*time.Second); err != nil {
		return fmt.Errorf("%v\n%s", err, logs.String())
	}
	// One request through the hooks proves the plugins load before anything is measured.
	if status, body := get(addr, "/v1/models"); status != 200 {
		return fmt.Errorf("GET /v1/models: %d %s\n%s", status, body, logs.String())
	}

	scenarios := []struct {
		name  string
		conns int
		do    func(c *fasthttp.HostClient, req *fasthttp.Request, res *fasthttp.Response, state *clientState) error
	}{
		{"bare", conns, simpleGet("/healthz", false)},
		{"hooks", conns, simpleGet("/v1/models", true)},
		{"conversations", convConns, conversationRoundTrip},
	}
	results := map[string][]result{}
	var ratios []float64
	for round := 0; round < rounds; round++ {
		rps := map[string]float64{}
		for _, sc := range scenarios {
			if only != "" && sc.name != only {
				continue
			}
			c := &fasthttp.HostClient{Addr: addr, MaxConns: sc.conns, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second}
			if round == 0 {
				load(c, sc.conns, warmup, sc.do)
			}
			res := load(c, sc.conns, duration, sc.do)
			if res.errors > 0 {
				return fmt.Errorf("%s: %d of %d requests failed (first: %v)", sc.name, res.errors, res.count, res.firstErr)
			}
			results[sc.name] = append(results[sc.name], res)
			rps[sc.name] = res.rps
		}
		if rps["bare"] > 0 && rps["hooks"] > 0 {
			ratios = append(ratios, rps["hooks"]/rps["bare"])
		}
	}
	fmt.Printf("%-14s %6s %12s %10s %10s   (medians of %d rounds of %v)\n", "scenario", "conns", "requests/s", "p50", "p99", rounds, duration)
	for _, sc := range scenarios {
		rs := results[sc.name]
		if len(rs) == 0 {
			continue
		}
		fmt.Printf("%-14s %6d %12.0f %10s %10s\n", sc.name, sc.conns,
			median(rs, func(r result) float64 { return r.rps }),
			time.Duration(median(rs, func(r result) float64 { return float64(r.p50) })).Round(time.Microsecond),
			time.Duration(median(rs, func(r result) float64 { return float64(r.p99) })).Round(time.Microsecond))
	}
	if len(ratios) > 0 {
		slices.Sort(ratios)
		fmt.Printf("hooks/bare ratio: %.2f\n", ratios[len(ratios)/2])
	}
	return nil
}

func median(rs []result, f func(result) float64) float64 {
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	slices.Sort(v)
	return v[len(v)/2]
}

type clientState struct {
	conv string
	n    int
}

type result struct {
	conns    int
	count    int
	errors   int
	firstErr error
	rps      float64
	p50, p99 time.Duration
}

func simpleGet(path string, auth bool) func(*fasthttp.HostClient, *fasthttp.Request, *fasthttp.Response, *clientState) error {
	return func(c *fasthttp.HostClient, req *fasthttp.Request, res *fasthttp.Response, _ *clientState) error {
		req.Reset()
		req.SetRequestURI("http://bench" + path)
		if auth {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		if err := c.Do(req, res); err != nil {
			return err
		}
		if res.StatusCode() != 200 {
			return fmt.Errorf("%s: status %d: %s", path, res.StatusCode(), res.Body())
		}
		return nil
	}
}

// conversationRoundTrip appends an item to the client's conversation and reads the newest item back.
func conversationRoundTrip(c *fasthttp.HostClient, req *fasthttp.Request, res *fasthttp.Response, st *clientState) error {
	do := func(method, path, body string) error {
		req.Reset()
		req.Header.SetMethod(method)
		req.SetRequestURI("http://bench" + path)
		req.Header.Set("Authorization", "Bearer "+key)
		if body != "" {
			req.Header.SetContentType("application/json")
			req.SetBodyString(body)
		}
		if err := c.Do(req, res); err != nil {
			return err
		}
		if res.StatusCode() != 200 {
			return fmt.Errorf("%s %s: status %d: %s", method, path, res.StatusCode(), res.Body())
		}
		return nil
	}
	if st.conv == "" {
		if err := do("POST", "/v1/conversations", "{}"); err != nil {
			return err
		}
		var conv struct{ ID string }
		json.Unmarshal(res.Body(), &conv)
		st.conv = conv.ID
	}
	st.n++
	text := fmt.Sprintf("message %d", st.n)
	if err := do("POST", "/v1/conversations/"+st.conv+"/items", `{"items":[{"role":"user","content":"`+text+`"}]}`); err != nil {
		return err
	}
	if err := do("GET", "/v1/conversations/"+st.conv+"/items?limit=1", ""); err != nil {
		return err
	}
	if !bytes.Contains(res.Body(), []byte(text)) {
		return fmt.Errorf("read back %q: got %s", text, res.Body())
	}
	return nil
}

// load runs do on n goroutines for d and returns the throughput and latency percentiles.
func load(c *fasthttp.HostClient, n int, d time.Duration, do func(*fasthttp.HostClient, *fasthttp.Request, *fasthttp.Response, *clientState) error) result {
	var stop atomic.Bool
	var mu sync.Mutex
	var all []time.Duration
	res := result{conns: n}
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			defer fasthttp.ReleaseRequest(req)
			defer fasthttp.ReleaseResponse(resp)
			var st clientState
			lat := make([]time.Duration, 0, 1<<16)
			errs := 0
			var first error
			for !stop.Load() {
				t0 := time.Now()
				if err := do(c, req, resp, &st); err != nil {
					errs++
					if first == nil {
						first = err
					}
					continue
				}
				lat = append(lat, time.Since(t0))
			}
			mu.Lock()
			all = append(all, lat...)
			res.errors += errs
			if res.firstErr == nil {
				res.firstErr = first
			}
			mu.Unlock()
		}()
	}
	time.Sleep(d)
	stop.Store(true)
	wg.Wait()
	elapsed := time.Since(start)
	slices.Sort(all)
	res.count = len(all) + res.errors
	res.rps = float64(len(all)) / elapsed.Seconds()
	if len(all) > 0 {
		res.p50 = all[len(all)/2]
		res.p99 = all[len(all)*99/100]
	}
	return res
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func waitReady(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if status, _ := get(addr, "/readyz"); status == 200 {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("server at %s not ready after %v", addr, timeout)
}

func get(addr, path string) (int, string) {
	req, res := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(res)
	req.SetRequestURI("http://" + addr + path)
	req.Header.Set("Authorization", "Bearer "+key)
	if err := fasthttp.DoTimeout(req, res, 10*time.Second); err != nil {
		return 0, err.Error()
	}
	return res.StatusCode(), string(res.Body())
}
