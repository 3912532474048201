package host_test

import (
	"bytes"
	"os/exec"
	"strings"
	"testing"
)

// TestLayout enforces the import rules of the design's layout table with `go list -deps`:
//   - abi/ reaches only the standard library (and builds for wasip1);
//   - sdk/ and plugins/ reach only abi, sdk and the standard library: never wazero, fasthttp, pebble or bleve;
//   - runtime/ reaches only abi, wazero and the standard library (never host/).
//
// Test-only imports are not counted: a plugin's test may use host/plugintest to run against the real
// runtime.
func TestLayout(t *testing.T) {
	const module = "github.com/plinth-dev/plinth"
	rules := []struct {
		pattern string
		goos    string
		allowed []string // module-internal and third-party prefixes allowed besides the standard library
	}{
		{"./abi/...", "", []string{module + "/abi"}},
		{"./abi/...", "wasip1", []string{module + "/abi"}},
		{"./sdk/", "wasip1", []string{module + "/abi", module + "/sdk"}},
		{"./sdk/...", "", []string{module + "/abi", module + "/sdk"}},
		{"./plugins/...", "wasip1", []string{module + "/abi", module + "/sdk", module + "/plugins"}},
		{"./plugins/...", "", []string{module + "/abi", module + "/sdk", module + "/plugins"}},
		// wazero itself uses golang.org/x/sys.
		{"./runtime/...", "", []string{module + "/abi", module + "/runtime", "github.com/tetratelabs/wazero", "golang.org/x/sys"}},
	}
	for _, r := range rules {
		cmd := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", r.pattern)
		cmd.Dir = ".."
		if r.goos != "" {
			cmd.Env = append(cmd.Environ(), "GOOS="+r.goos, "GOARCH=wasm")
		}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("go list %s (GOOS=%s): %v\n%s", r.pattern, r.goos, err, stderr.String())
		}
		for _, dep := range strings.Fields(string(out)) {
			ok := false
			for _, a := range r.allowed {
				if dep == a || strings.HasPrefix(dep, a+"/") {
					ok = true
				}
			}
			if !ok {
				t.Errorf("%s (GOOS=%s) depends on %s, which the layout forbids", r.pattern, r.goos, dep)
			}
		}
	}
}
