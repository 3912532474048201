package cli

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/plinth-dev/plinth/host/app"
	"github.com/plinth-dev/plinth/host/config"
)

// runCLI runs one command line in-process and returns its exit code, stdout and stderr.
func runCLI(t *testing.T, env map[string]string, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := Run(&Env{Stdout: &out, Stderr: &errOut, Getenv: func(k string) string { return env[k] }, Context: context.Background()}, args)
	return code, out.String(), errOut.String()
}

// startApp runs a server with an operator key and no tenants.
func startApp(t *testing.T) string {
	t.Helper()
	cfg := config.Defaults()
	cfg.Addr, cfg.DataDir, cfg.LogLevel, cfg.OperatorKey = "127.0.0.1:0", t.TempDir(), "error", "pk-op"
	cfg.ConfigFile = "none" // an empty config: no demo tenant
	ctx, cancel := context.WithCancel(context.Background())
	a, err := app.New(ctx, cfg, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	addr, err := a.Listen()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { a.Serve(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return "http://" + addr.String()
}

// TestAdminCommands walks the operator and plugin-author workflow through the CLI: create a tenant
// and keys, push a plugin from its source directory, call it, roll back, read the audit log.
func TestAdminCommands(t *testing.T) {
	url := startApp(t)
	op := map[string]string{"PLINTH_URL": url, "PLINTH_OPERATOR_KEY": "pk-op"}
	mustRun := func(env map[string]string, args ...string) string {
		t.Helper()
		code, out, errOut := runCLI(t, env, args...)
		if code != 0 {
			t.Fatalf("plinth %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
		}
		return out
	}
	mustRun(op, "tenants", "create", "acme", "-name", "Acme Inc")
	if out := mustRun(op, "tenants", "list"); !strings.Contains(out, "acme") || !strings.Contains(out, "Acme Inc") {
		t.Fatalf("tenants list:\n%s", out)
	}
	out := mustRun(op, "keys", "create", "-tenant", "acme", "-id", "admin", "-admin")
	adminKey := lastLine(out)
	author := map[string]string{"PLINTH_URL": url, "PLINTH_ADMIN_KEY": adminKey}
	if out := mustRun(author, "whoami"); !strings.Contains(out, "tenant-admin of acme") {
		t.Fatalf("whoami: %s", out)
	}
	apiKey := lastLine(mustRun(author, "keys", "create", "-id", "app", "-label", "gold"))

	// Push the echo fixture from source, bound to the route hook, with a configuration.
	cfgFile := filepath.Join(t.TempDir(), "echo.json")
	os.WriteFile(cfgFile, []byte(`{"hello":"world"}`), 0o644)
	code, out, errOut := runCLI(t, author, "plugin", "push", "../../testdata/guests/echo", "-name", "echo", "-hook", "route", "-config", cfgFile)
	if code != 0 || !strings.Contains(out, "echo v1 of tenant acme is active") || !strings.Contains(errOut, "uploading echo") ||
		!strings.Contains(errOut, "building") {
		t.Fatalf("push: %d\n%s\n%s", code, out, errOut)
	}
	if body := get(t, url+"/v1/echo", apiKey); body != "GET /v1/echo key=app tier=gold" {
		t.Fatalf("request through the pushed plugin: %q", body)
	}
	if body := get(t, url+"/v1/config", apiKey); body != `{"hello":"world"}` {
		t.Fatalf("configuration: %q", body)
	}
	mustRun(author, "plugin", "push", "../../testdata/guests/echo", "-name", "echo")
	if out := mustRun(author, "plugin", "rollback", "echo"); !strings.Contains(out, "active v1") {
		t.Fatalf("rollback: %s", out)
	}
	if out := mustRun(author, "plugin", "versions", "echo"); strings.Count(out, "\nv") != 2 {
		t.Fatalf("versions:\n%s", out)
	}
	if out := mustRun(author, "audit"); !strings.Contains(out, "plugin.rollback") || !strings.Contains(out, "key:admin") {
		t.Fatalf("audit:\n%s", out)
	}
	// Errors a newcomer can act on.
	if code, _, errOut := runCLI(t, map[string]string{"PLINTH_URL": url}, "plugin", "list"); code == 0 || !strings.Contains(errOut, "no admin key") {
		t.Fatalf("without a key: %d %s", code, errOut)
	}
	if code, _, errOut := runCLI(t, author, "tenants", "list"); code == 0 || !strings.Contains(errOut, "operator key") {
		t.Fatalf("tenant admin listing tenants: %d %s", code, errOut)
	}
	if code, _, errOut := runCLI(t, author, "plugin", "frobnicate"); code == 0 || !strings.Contains(errOut, "unknown subcommand") {
		t.Fatalf("unknown subcommand: %d %s", code, errOut)
	}
}

func TestPluginNewScaffoldTestsPass(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "greeter")
	code, out, errOut := runCLI(t, nil, "plugin", "new", "greeter", "-dir", dir, "-sdk", "../..")
	if code != 0 {
		t.Fatalf("plugin new: %d\n%s%s", code, out, errOut)
	}
	cmd := runCmd(t, dir, "go", "test", "./...")
	if !strings.Contains(cmd, "ok") {
		t.Fatalf("the scaffold's tests: %s", cmd)
	}
	code, _, errOut = runCLI(t, nil, "plugin", "build", dir, "-o", filepath.Join(dir, "greeter.wasm"))
	if code != 0 {
		t.Fatalf("plugin build: %s", errOut)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "greeter.wasm")); err != nil || !bytes.HasPrefix(b, []byte("\x00asm")) {
		t.Fatalf("built module: %v", err)
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

func get(t *testing.T, url, key string) string {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Authorization", "Bearer "+key)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return string(b)
}

func runCmd(t *testing.T, dir string, name string, args ...string) string {
	t.Helper()
	cmd := osexec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}
