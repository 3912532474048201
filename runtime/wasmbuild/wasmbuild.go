// Package wasmbuild builds Go plugin packages into Wasm modules with the Go toolchain. The CLI's
// `plinth plugin build`, `make plugins` and tests that need real compiled plugins all use it, so there
// is one definition of the flags a plugin is built with.
package wasmbuild

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// Args are the `go build` arguments for a plugin: a WASI reactor (c-shared) so the host can call its
// exports after initialisation, and no VCS stamping, which fails in source trees without .git.
var Args = []string{"build", "-buildmode=c-shared", "-buildvcs=false", "-trimpath"}

// Build compiles the Go package in dir (a directory, or a package path resolved from dir) into out.
// The toolchain's output is returned in the error on failure.
func Build(ctx context.Context, dir, out string) error {
	abs, err := filepath.Abs(out)
	if err != nil {
		return err
	}
	args := append(append([]string{}, Args...), "-o", abs, ".")
	cmd := exec.CommandContext(ctx, goTool(), args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "CGO_ENABLED=0")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.Stdout = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("building plugin in %s: %v\n%s", dir, err, stderr.String())
	}
	return nil
}

// goTool returns the go command of the running toolchain when it can be found, so tests build with
// the same Go that runs them.
func goTool() string {
	if root := os.Getenv("GOROOT"); root != "" {
		if p := filepath.Join(root, "bin", "go"); fileExists(p) {
			return p
		}
	}
	return "go"
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

var (
	cacheMu sync.Mutex
	cache   = map[string]*buildResult{}
)

type buildResult struct {
	once sync.Once
	wasm []byte
	err  error
}

// ForTest builds the plugin in dir once per test process and returns its bytes, failing t on error.
func ForTest(t testing.TB, dir string) []byte {
	t.Helper()
	abs, err := filepath.Abs(dir)
	if err != nil {
		t.Fatal(err)
	}
	cacheMu.Lock()
	r, ok := cache[abs]
	if !ok {
		r = &buildResult{}
		cache[abs] = r
	}
	cacheMu.Unlock()
	r.once.Do(func() {
		tmp, err := os.MkdirTemp("", "plinth-plugin-")
		if err != nil {
			r.err = err
			return
		}
		defer os.RemoveAll(tmp)
		out := filepath.Join(tmp, "plugin.wasm")
		if r.err = Build(context.Background(), abs, out); r.err == nil {
			r.wasm, r.err = os.ReadFile(out)
		}
	})
	if r.err != nil {
		t.Fatal(r.err)
	}
	return r.wasm
}
