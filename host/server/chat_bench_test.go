package server

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/abi"
	"github.com/plinth-dev/plinth/host/llm"
	"github.com/plinth-dev/plinth/host/llm/llmtest"
	"github.com/plinth-dev/plinth/host/tenant"
)

// Benchmarks of the chat endpoint against the fake upstream (a real HTTP server on 127.0.0.1 in this
// process). They are not part of `go test`; run them with
//
//	go test -run '^$' -bench BenchmarkChatTTFT -benchtime 2000x ./host/server/
//	go test -run '^$' -bench BenchmarkChatConcurrentStreams -benchtime 1x -timeout 10m ./host/server/
//
// Client, server and upstream share the machine's cores, so the numbers include their contention.

// chatBenchServer starts a server whose tenants use the fake upstream: "bare" binds no plugin, "full" binds
// the first-party ratelimit (with a token budget) and prompt plugins.
func chatBenchServer(b *testing.B, up *llmtest.Upstream, withPlugins bool) *testServer {
	b.Helper()
	svc := llm.New(llm.Options{Logger: quiet()})
	ts := startServer(b, Options{LLM: svc})
	cfg := []byte(fmt.Sprintf(`{"providers": {"up": {"type": "openai", "base_url": %q, "retries": 0,
		"timeout": {"first_token": "60s", "idle": "60s"}}}, "models": {"fake": {"provider": "up"}}, "default_model": "fake"}`, up.URL))
	tenants := []*tenant.Tenant{{ID: "bare", LLM: cfg}}
	keys := []*tenant.Key{{ID: "kbare", Tenant: "bare", Hash: tenant.HashKey([]byte("pk-bare"))}}
	if withPlugins {
		tenants = append(tenants, &tenant.Tenant{ID: "full", LLM: cfg, Plugins: map[string]*tenant.Plugin{
			"ratelimit": plugin(b, ts, "ratelimit", "../../plugins/ratelimit",
				`{"tiers": {"default": {"requests": {"limit": 100000000, "period": "1m"}, "tokens": {"limit": 1000000000, "period": "1m"}}}}`),
			"prompt": plugin(b, ts, "prompt", "../../plugins/prompt", ""),
		}, Bindings: map[abi.Hook]string{abi.HookRateLimit: "ratelimit", abi.HookPrompt: "prompt"}})
		keys = append(keys, &tenant.Key{ID: "kfull", Tenant: "full", Hash: tenant.HashKey([]byte("pk-full"))})
	}
	snap, err := tenant.NewSnapshot(tenants, keys)
	if err != nil {
		b.Fatal(err)
	}
	if err := ts.Apply(context.Background(), snap); err != nil {
		b.Fatal(err)
	}
	return ts
}

// firstToken posts a streaming chat request and returns the time to the first content delta, reading
// the stream to its end so the connection is reused.
func firstToken(client *http.Client, url, key, body string) (time.Duration, error) {
	req, _ := http.NewRequest("POST", url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	start := time.Now()
	res, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer res.Body.Close()
	if res.StatusCode != 200 {
		b, _ := io.ReadAll(res.Body)
		return 0, fmt.Errorf("status %d: %s", res.StatusCode, b)
	}
	br := bufio.NewReader(res.Body)
	var ttft time.Duration
	for {
		line, err := br.ReadSlice('\n')
		if ttft == 0 && bytes.Contains(line, []byte(`"content":"`)) && !bytes.Contains(line, []byte(`"content":""`)) {
			ttft = time.Since(start)
		}
		if err != nil {
			if err == io.EOF && ttft > 0 {
				return ttft, nil
			}
			return 0, fmt.Errorf("stream ended without content: %v", err)
		}
	}
}

func percentile(d []time.Duration, p float64) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[int(p*float64(len(s)-1))]
}

// BenchmarkChatTTFT measures time to first token through Plinth against calling the fake upstream
// directly, interleaved in one run: each iteration is one direct request and one through each tenant.
func BenchmarkChatTTFT(b *testing.B) {
	up := llmtest.New(b, nil)
	ts := chatBenchServer(b, up, true)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8}}
	body := `{"model": "fake", "stream": true, "messages": [{"role": "user", "content": "Say hello."}]}`
	targets := []struct{ name, url, key string }{
		{"direct", up.URL + "/chat/completions", ""},
		{"plinth", ts.url + "/v1/chat/completions", "pk-bare"},
		{"plinth+plugins", ts.url + "/v1/chat/completions", "pk-full"},
	}
	for _, t := range targets { // warm up connections and plugin instances
		for i := 0; i < 20; i++ {
			if _, err := firstToken(client, t.url, t.key, body); err != nil {
				b.Fatalf("%s: %v", t.name, err)
			}
		}
	}
	samples := make([][]time.Duration, len(targets))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for j, t := range targets {
			d, err := firstToken(client, t.url, t.key, body)
			if err != nil {
				b.Fatalf("%s: %v", t.name, err)
			}
			samples[j] = append(samples[j], d)
		}
	}
	b.StopTimer()
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	d50, d99 := percentile(samples[0], 0.5), percentile(samples[0], 0.99)
	for j, t := range targets {
		p50, p99 := percentile(samples[j], 0.5), percentile(samples[j], 0.99)
		b.Logf("%-15s TTFT p50 %7.0fµs  p99 %7.0fµs   overhead vs direct: p50 %+6.0fµs  p99 %+6.0fµs  (%d samples)",
			t.name, us(p50), us(p99), us(p50-d50), us(p99-d99), len(samples[j]))
		b.ReportMetric(us(p50), t.name+"-p50-µs")
		b.ReportMetric(us(p99), t.name+"-p99-µs")
	}
}

// BenchmarkChatConcurrentStreams opens 1,000 (PLINTH_BENCH_STREAMS) concurrent streams against a slow upstream (a token every
// 100ms), holds them until all have received tokens, then disconnects every client at a random moment
// within half a second. It reports peak memory, the goroutines before, at the peak and after, and how
// long each upstream request outlived its client.
func BenchmarkChatConcurrentStreams(b *testing.B) {
	streams := 1000
	if n, err := strconv.Atoi(os.Getenv("PLINTH_BENCH_STREAMS")); err == nil && n > 0 {
		streams = n
	}
	if os.Getenv("PLINTH_BENCH_HEARTBEATS_ONLY") != "" {
		setPeek(false) // measure the heartbeat fallback alone
		defer setPeek(true)
	}
	slow := make([]string, 600)
	for i := range slow {
		slow[i] = " tok"
	}
	up := llmtest.New(b, func(_ int, r *llmtest.Request) llmtest.Behavior {
		if r.Key == "warm" {
			return llmtest.Behavior{}
		}
		return llmtest.Behavior{Tokens: slow, Delay: 100 * time.Millisecond}
	})
	ts := chatBenchServer(b, up, false)
	warm := `{"stream": true, "messages": [{"role": "user", "content": "warm"}]}`
	if _, err := firstToken(http.DefaultClient, ts.url+"/v1/chat/completions", "pk-bare", warm); err != nil {
		b.Fatal(err)
	}
	http.DefaultClient.CloseIdleConnections()
	time.Sleep(200 * time.Millisecond)
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	baseGoroutines, baseHeap := runtime.NumGoroutine(), ms.HeapInuse

	// Sample memory until the end.
	var peakHeap, peakSys atomic.Uint64
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			if m.HeapInuse > peakHeap.Load() {
				peakHeap.Store(m.HeapInuse)
			}
			if m.Sys > peakSys.Load() {
				peakSys.Store(m.Sys)
			}
			select {
			case <-stopSampling:
				return
			case <-t.C:
			}
		}
	}()

	b.ResetTimer()
	addr := strings.TrimPrefix(ts.url, "http://")
	var ready sync.WaitGroup
	ready.Add(streams)
	release := make(chan struct{})
	disconnected := make([]time.Time, streams)
	var errs atomic.Int64
	var done sync.WaitGroup
	for i := 0; i < streams; i++ {
		done.Add(1)
		go func(i int) {
			defer done.Done()
			readyOnce := sync.OnceFunc(ready.Done)
			defer readyOnce()
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				errs.Add(1)
				return
			}
			defer conn.Close()
			body := fmt.Sprintf(`{"stream": true, "messages": [{"role": "user", "content": "stream %d"}]}`, i)
			fmt.Fprintf(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer pk-bare\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
			br := bufio.NewReader(conn)
			tokens := 0
			for tokens < 2 {
				line, err := br.ReadString('\n')
				if err != nil {
					errs.Add(1)
					return
				}
				if strings.Contains(line, `"content":" tok"`) {
					tokens++
				}
			}
			readyOnce()
			<-release
			time.Sleep(time.Duration(i%500) * time.Millisecond) // disconnect at staggered moments
			disconnected[i] = time.Now()
			conn.Close()
		}(i)
		if i%100 == 99 {
			time.Sleep(10 * time.Millisecond) // do not overflow the listen backlog
		}
	}
	ready.Wait()
	peakGoroutines := runtime.NumGoroutine()
	streamingActive := up.Active.Load()
	close(release)
	done.Wait()
	// Every upstream request ends.
	deadline := time.Now().Add(30 * time.Second)
	for up.Active.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	b.StopTimer()
	close(stopSampling)
	<-sampled

	var delays []time.Duration
	missing := 0
	for i := 0; i < streams; i++ {
		at, ok := up.CancelledAt("stream " + strconv.Itoa(i))
		if !ok || disconnected[i].IsZero() {
			missing++
			continue
		}
		delays = append(delays, at.Sub(disconnected[i]))
	}
	late := 0
	for _, d := range delays {
		if d > time.Second {
			late++
		}
	}
	// Goroutines back to baseline: fasthttp keeps idle workers for up to 10s, so allow for that.
	var after int
	backAfter := time.Now()
	for {
		runtime.GC()
		after = runtime.NumGoroutine()
		if after <= baseGoroutines+2 || time.Since(backAfter) > 30*time.Second {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	rss := peakRSS()
	mib := func(v uint64) float64 { return float64(v) / (1 << 20) }
	b.Logf("%d streams (%d upstream requests streaming at the peak, %d client errors)", streams, streamingActive, errs.Load())
	b.Logf("memory: heap in use %.1f MiB → peak %.1f MiB (%.1f KiB per stream, whole process: clients, server, upstream); Go Sys peak %.1f MiB; process peak RSS %s",
		mib(baseHeap), mib(peakHeap.Load()), float64(peakHeap.Load()-baseHeap)/1024/float64(streams), mib(peakSys.Load()), rss)
	b.Logf("goroutines: baseline %d, at the peak %d, after %d (%.1fs after the last stream ended)",
		baseGoroutines, peakGoroutines, after, time.Since(backAfter).Seconds())
	if len(delays) > 0 {
		b.Logf("upstream cancelled after the client disconnected: p50 %v, p99 %v, max %v; %d over 1s, %d never cancelled",
			percentile(delays, 0.5).Round(time.Millisecond), percentile(delays, 0.99).Round(time.Millisecond),
			percentile(delays, 1).Round(time.Millisecond), late, missing)
		b.ReportMetric(float64(percentile(delays, 1))/float64(time.Millisecond), "max-cancel-ms")
	}
	b.ReportMetric(mib(peakHeap.Load()), "peak-heap-MiB")
	b.ReportMetric(float64(after-baseGoroutines), "goroutines-left")
	if late > 0 || missing > 0 || errs.Load() > 0 || after > baseGoroutines+2 {
		b.Errorf("%d late cancellations, %d never cancelled, %d client errors, %d goroutines over baseline", late, missing, errs.Load(), after-baseGoroutines)
	}
}

// peakRSS returns the process's peak resident set (VmHWM), or "?" where /proc is not available.
func peakRSS() string {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return "?"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "?"
}

// setPeek turns the socket watcher on or off (PLINTH_BENCH_HEARTBEATS_ONLY measures without it).
func setPeek(on bool) { peekDisconnects = on }
