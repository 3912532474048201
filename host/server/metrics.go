package server

import (
	"bufio"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/plinth-dev/plinth/runtime"
	"github.com/plinth-dev/plinth/runtime/stats"
)

// metrics holds the server's counters. Hot-path updates are atomic on structs looked up once per
// request (tenant) or held by the pool (plugin); the maps are only locked to find or create them.
type metrics struct {
	mu      sync.Mutex
	tenants map[string]*tenantStats      // guarded by mu
	plugins map[[2]string]*runtime.Stats // (tenant, plugin) → stats shared by the plugin's pools; guarded by mu

	// Requests not attributed to a tenant (health, metrics, unauthenticated).
	anonymous tenantStats
	started   time.Time
}

// tenantStats are one tenant's request metrics.
type tenantStats struct {
	byClass     [6]stats.Counter // responses by status class: index 1 = 1xx ... 5 = 5xx
	rateLimited stats.Counter
	latency     *stats.Histogram

	meterMu    sync.Mutex
	window     int64 // minute (Unix) of the CPU window; guarded by meterMu
	windowUsed int64 // work units in the window; guarded by meterMu
}

func newMetrics() *metrics {
	return &metrics{
		tenants:   map[string]*tenantStats{},
		plugins:   map[[2]string]*runtime.Stats{},
		anonymous: tenantStats{latency: stats.NewHistogram(stats.LatencyBuckets)},
		started:   time.Now(),
	}
}

func (m *metrics) tenant(id string) *tenantStats {
	m.mu.Lock()
	defer m.mu.Unlock()
	t, ok := m.tenants[id]
	if !ok {
		t = &tenantStats{latency: stats.NewHistogram(stats.LatencyBuckets)}
		m.tenants[id] = t
	}
	return t
}

func (m *metrics) plugin(tenant, plugin string) *runtime.Stats {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := [2]string{tenant, plugin}
	s, ok := m.plugins[k]
	if !ok {
		s = runtime.NewStats()
		m.plugins[k] = s
	}
	return s
}

func (t *tenantStats) observe(status int, d time.Duration) {
	c := status / 100
	if c < 1 || c > 5 {
		c = 5
	}
	t.byClass[c].Add(1)
	t.latency.ObserveDuration(d)
}

// cpuMeter returns the runtime.Meter enforcing a per-minute CPU budget for the tenant (nil when the
// budget is 0: no per-minute limit, and the pool then skips metering calls).
func (t *tenantStats) cpuMeter(perMinute int64) runtime.Meter {
	if perMinute <= 0 {
		return nil
	}
	return &cpuMeter{t: t, perMinute: perMinute}
}

type cpuMeter struct {
	t         *tenantStats
	perMinute int64
}

// Charge implements runtime.Meter with a fixed one-minute window.
func (m *cpuMeter) Charge(units int64) error {
	t := m.t
	now := time.Now()
	minute := now.Unix() / 60
	t.meterMu.Lock()
	defer t.meterMu.Unlock()
	if t.window != minute {
		t.window, t.windowUsed = minute, 0
	}
	t.windowUsed += units
	if t.windowUsed > m.perMinute {
		return fmt.Errorf("the tenant's CPU budget of %d work units per minute is spent; it resets in %ds",
			m.perMinute, 60-now.Unix()%60)
	}
	return nil
}

// write renders every metric in the Prometheus text exposition format.
func (m *metrics) write(w io.Writer, s *Server) {
	bw := bufio.NewWriter(w)
	defer bw.Flush()
	m.mu.Lock()
	tenants := make([]string, 0, len(m.tenants))
	for id := range m.tenants {
		tenants = append(tenants, id)
	}
	plugins := make([][2]string, 0, len(m.plugins))
	for k := range m.plugins {
		plugins = append(plugins, k)
	}
	m.mu.Unlock()
	slices.Sort(tenants)
	slices.SortFunc(plugins, func(a, b [2]string) int { return strings.Compare(a[0]+"\x00"+a[1], b[0]+"\x00"+b[1]) })

	header(bw, "plinth_http_requests_total", "counter", "HTTP responses by tenant and status class.")
	classes := []string{"", "1xx", "2xx", "3xx", "4xx", "5xx"}
	emitClasses := func(tenant string, t *tenantStats) {
		for c := 1; c <= 5; c++ {
			if v := t.byClass[c].Load(); v > 0 {
				fmt.Fprintf(bw, "plinth_http_requests_total{tenant=%q,code=%q} %d\n", tenant, classes[c], v)
			}
		}
	}
	emitClasses("", &m.anonymous)
	for _, id := range tenants {
		emitClasses(id, m.tenant(id))
	}
	header(bw, "plinth_http_rate_limited_total", "counter", "Requests refused by a tenant's ratelimit hook.")
	for _, id := range tenants {
		fmt.Fprintf(bw, "plinth_http_rate_limited_total{tenant=%q} %d\n", id, m.tenant(id).rateLimited.Load())
	}
	header(bw, "plinth_http_request_duration_seconds", "histogram", "Time from request to response, by tenant.")
	histogram(bw, "plinth_http_request_duration_seconds", `tenant=""`, m.anonymous.latency.Snapshot())
	for _, id := range tenants {
		histogram(bw, "plinth_http_request_duration_seconds", fmt.Sprintf("tenant=%q", id), m.tenant(id).latency.Snapshot())
	}

	counters := []struct {
		name, help string
		get        func(*runtime.Stats) int64
	}{
		{"plinth_plugin_calls_total", "Hook calls into a plugin.", func(s *runtime.Stats) int64 { return s.Calls.Load() }},
		{"plinth_plugin_errors_total", "Failed hook calls (traps, timeouts, budgets, overload, handler errors).", func(s *runtime.Stats) int64 { return s.Errors.Load() }},
		{"plinth_plugin_traps_total", "Calls that trapped, crashed or broke the ABI.", func(s *runtime.Stats) int64 { return s.Traps.Load() }},
		{"plinth_plugin_timeouts_total", "Calls stopped at their deadline or cancelled.", func(s *runtime.Stats) int64 { return s.Timeouts.Load() }},
		{"plinth_plugin_cpu_budget_exceeded_total", "Calls stopped by a CPU budget.", func(s *runtime.Stats) int64 { return s.Budget.Load() }},
		{"plinth_plugin_overload_total", "Calls that found no instance in time.", func(s *runtime.Stats) int64 { return s.Overload.Load() }},
		{"plinth_plugin_instances_created_total", "Instances created.", func(s *runtime.Stats) int64 { return s.Created.Load() }},
		{"plinth_plugin_instances_discarded_total", "Instances closed (after failures, eviction or reload).", func(s *runtime.Stats) int64 { return s.Discarded.Load() }},
		{"plinth_plugin_cpu_work_units_total", "Instrumented work units (loop iterations and calls) run: the CPU metering unit.", func(s *runtime.Stats) int64 { return s.WorkUnits.Load() }},
	}
	snap := func(k [2]string) *runtime.Stats { return m.plugin(k[0], k[1]) }
	for _, c := range counters {
		header(bw, c.name, "counter", c.help)
		for _, k := range plugins {
			fmt.Fprintf(bw, "%s{tenant=%q,plugin=%q} %d\n", c.name, k[0], k[1], c.get(snap(k)))
		}
	}
	header(bw, "plinth_tenant_cpu_work_units_total", "counter", "Instrumented work units run by all of a tenant's plugins.")
	perTenant := map[string]int64{}
	for _, k := range plugins {
		perTenant[k[0]] += snap(k).WorkUnits.Load()
	}
	for _, id := range tenants {
		fmt.Fprintf(bw, "plinth_tenant_cpu_work_units_total{tenant=%q} %d\n", id, perTenant[id])
	}
	header(bw, "plinth_plugin_instances", "gauge", "Live plugin instances.")
	for _, k := range plugins {
		fmt.Fprintf(bw, "plinth_plugin_instances{tenant=%q,plugin=%q} %d\n", k[0], k[1], snap(k).Instances.Load())
	}
	header(bw, "plinth_plugin_call_duration_seconds", "histogram", "Hook call latency, including waiting for an instance.")
	for _, k := range plugins {
		histogram(bw, "plinth_plugin_call_duration_seconds", fmt.Sprintf("tenant=%q,plugin=%q", k[0], k[1]), snap(k).Latency.Snapshot())
	}
	header(bw, "plinth_plugin_instance_init_seconds", "histogram", "Time to create and initialise an instance.")
	for _, k := range plugins {
		histogram(bw, "plinth_plugin_instance_init_seconds", fmt.Sprintf("tenant=%q,plugin=%q", k[0], k[1]), snap(k).InitTime.Snapshot())
	}
	header(bw, "plinth_plugin_memory_bytes", "gauge", "Linear memory of all plugin instances.")
	fmt.Fprintf(bw, "plinth_plugin_memory_bytes %d\n", s.engine.MemoryUsed())
	header(bw, "plinth_plugin_memory_budget_bytes", "gauge", "Configured budget for plugin instance memory.")
	fmt.Fprintf(bw, "plinth_plugin_memory_budget_bytes %d\n", s.engine.MemoryBudget())
	header(bw, "plinth_uptime_seconds", "gauge", "Seconds since the server started.")
	fmt.Fprintf(bw, "plinth_uptime_seconds %.0f\n", time.Since(m.started).Seconds())
	for _, extra := range s.extraMetrics {
		extra(bw)
	}
}

func header(w io.Writer, name, typ, help string) {
	fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
}

func histogram(w io.Writer, name, labels string, s stats.Snapshot) {
	sep := ""
	if labels != "" {
		sep = ","
	}
	for i, b := range s.Bounds {
		fmt.Fprintf(w, "%s_bucket{%s%sle=%q} %d\n", name, labels, sep, strconv.FormatFloat(b, 'g', -1, 64), s.Cumulative[i])
	}
	fmt.Fprintf(w, "%s_bucket{%s%sle=\"+Inf\"} %d\n", name, labels, sep, s.Cumulative[len(s.Bounds)])
	fmt.Fprintf(w, "%s_sum{%s} %g\n", name, labels, s.Sum)
	fmt.Fprintf(w, "%s_count{%s} %d\n", name, labels, s.Count)
}
