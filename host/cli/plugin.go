package cli

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/plinth-dev/plinth/runtime/wasmbuild"
)

func init() {
	register(command{"plugin", "write, build and deploy plugins: new, build, push, list, versions, activate, rollback, config, delete", runPlugin})
}

const pluginUsage = `plinth plugin <subcommand>

  new NAME [-dir DIR] [-sdk PATH]      scaffold a plugin (main.go, main_test.go) in DIR (default ./NAME)
  build [DIR] [-o FILE]                build the plugin in DIR (default .) to FILE (default NAME.wasm)
  push [DIR|FILE.wasm] [-name N] [-hook H]... [-config FILE] [-no-activate] [-tenant T]
                                       build (for a DIR), upload, configure, bind hooks and activate
  list [-tenant T]                     the tenant's plugins
  versions NAME [-tenant T]            a plugin's versions
  activate NAME VERSION [-tenant T]    make a version the active one
  rollback NAME [-tenant T]            re-activate the previously active version
  config NAME FILE [-tenant T]         set a plugin's configuration (JSON; "-" reads stdin)
  delete NAME [-tenant T]              delete a plugin that no hook is bound to

Admin commands use -url (PLINTH_URL) and -key (PLINTH_ADMIN_KEY, a tenant-admin key).`

func runPlugin(env *Env, args []string) error {
	sub, rest, err := subcommand(args, "plinth plugin new|build|push|list|versions|activate|rollback|config|delete (plinth plugin help)")
	if err != nil {
		return err
	}
	switch sub {
	case "help", "-h", "--help":
		fmt.Fprintln(env.Stdout, pluginUsage)
		return nil
	case "new":
		return pluginNew(env, rest)
	case "build":
		return pluginBuild(env, rest)
	case "push":
		return pluginPush(env, rest)
	case "list", "versions", "activate", "rollback", "config", "delete":
		return pluginAdmin(env, sub, rest)
	}
	return fmt.Errorf("unknown subcommand %q\n\n%s", sub, pluginUsage)
}

var pluginName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// nameOf derives a plugin name from a directory or file name.
func nameOf(path string) string {
	base := strings.TrimSuffix(filepath.Base(path), ".wasm")
	if base == "." || base == "/" {
		if wd, err := os.Getwd(); err == nil {
			base = filepath.Base(wd)
		}
	}
	return strings.ToLower(strings.ReplaceAll(base, " ", "-"))
}

// moduleRoot returns the directory of the Plinth module containing dir, or "" when dir is outside it.
func moduleRoot(dir string) string {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return ""
	}
	for d := abs; ; d = filepath.Dir(d) {
		if b, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil {
			if bytes.HasPrefix(bytes.TrimSpace(b), []byte("module github.com/plinth-dev/plinth\n")) ||
				bytes.Contains(b, []byte("module github.com/plinth-dev/plinth\n")) {
				return d
			}
			return ""
		}
		if filepath.Dir(d) == d {
			return ""
		}
	}
}

func pluginNew(env *Env, args []string) error {
	fs := flag.NewFlagSet("plinth plugin new", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	dir := fs.String("dir", "", "directory to create (default ./NAME)")
	sdk := fs.String("sdk", env.Getenv("PLINTH_SOURCE"), "path to a Plinth source tree, for plugins outside it (env PLINTH_SOURCE)")
	if err := fs.Parse(reorder(args)); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("usage: plinth plugin new NAME [-dir DIR] [-sdk PATH]")
	}
	name := fs.Arg(0)
	if !pluginName.MatchString(name) {
		return fmt.Errorf("plugin name %q: use 1-63 of a-z, 0-9, _ and -, starting with a letter or digit", name)
	}
	if *dir == "" {
		*dir = name
	}
	if _, err := os.Stat(*dir); err == nil {
		return fmt.Errorf("%s already exists", *dir)
	}
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		return err
	}
	files := map[string]string{
		"main.go":      strings.ReplaceAll(scaffoldMain, "NAME", name),
		"main_test.go": strings.ReplaceAll(scaffoldTest, "NAME", name),
	}
	inModule := moduleRoot(*dir) != ""
	if !inModule {
		if *sdk == "" {
			os.RemoveAll(*dir)
			return errors.New("this directory is outside a Plinth source tree: pass -sdk /path/to/plinth " +
				"(or set PLINTH_SOURCE) so the plugin's go.mod can find the SDK")
		}
		abs, err := filepath.Abs(*sdk)
		if err != nil {
			return err
		}
		if moduleRoot(abs) != abs {
			os.RemoveAll(*dir)
			return fmt.Errorf("%s is not the root of a Plinth source tree (no go.mod of github.com/plinth-dev/plinth)", abs)
		}
		files["go.mod"] = fmt.Sprintf("module %s\n\ngo 1.26\n\nrequire github.com/plinth-dev/plinth v0.0.0\n\nreplace github.com/plinth-dev/plinth => %s\n", name, abs)
	}
	for f, content := range files {
		if err := os.WriteFile(filepath.Join(*dir, f), []byte(content), 0o644); err != nil {
			return err
		}
	}
	if !inModule {
		fmt.Fprintln(env.Stderr, "resolving the plugin's dependencies (go mod tidy)...")
		cmd := exec.Command("go", "mod", "tidy")
		cmd.Dir, cmd.Stdout, cmd.Stderr = *dir, env.Stderr, env.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("go mod tidy in %s: %w", *dir, err)
		}
	}
	fmt.Fprintf(env.Stdout, `created plugin %[1]s in %[2]s
next:
  (cd %[2]s && go test ./...)            # run its tests against the in-memory host (sdktest)
  plinth plugin build %[2]s              # compile it to %[1]s.wasm
  plinth plugin push %[2]s -hook route   # upload, bind to the route hook and activate
`, name, *dir)
	return nil
}

func pluginBuild(env *Env, args []string) error {
	fs := flag.NewFlagSet("plinth plugin build", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	out := fs.String("o", "", "output file (default NAME.wasm in the current directory)")
	if err := fs.Parse(reorder(args)); err != nil {
		return err
	}
	dir := "."
	if fs.NArg() > 0 {
		dir = fs.Arg(0)
	}
	if *out == "" {
		*out = nameOf(dir) + ".wasm"
	}
	_, err := build(env, dir, *out)
	return err
}

// build compiles the plugin in dir to out, telling the user what it does and how long it took.
func build(env *Env, dir, out string) ([]byte, error) {
	fmt.Fprintf(env.Stderr, "building %s (GOOS=wasip1 GOARCH=wasm go %s)...", dir, strings.Join(wasmbuild.Args, " "))
	start := time.Now()
	ctx := env.Context
	if ctx == nil {
		ctx = context.Background()
	}
	if err := wasmbuild.Build(ctx, dir, out); err != nil {
		fmt.Fprintln(env.Stderr)
		return nil, err
	}
	b, err := os.ReadFile(out)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(env.Stderr, " %s, %.1f MB in %.1fs\n", out, float64(len(b))/1e6, time.Since(start).Seconds())
	return b, nil
}

func pluginPush(env *Env, args []string) error {
	fs := flag.NewFlagSet("plinth plugin push", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	client := adminFlags(fs, env)
	tenantFlag := fs.String("tenant", "", "tenant (default: the admin key's tenant)")
	name := fs.String("name", "", "plugin name (default: the directory or file name)")
	var hooks stringList
	fs.Var(&hooks, "hook", "bind the plugin to this hook: route, ratelimit or prompt (repeatable)")
	configFile := fs.String("config", "", "JSON configuration file to set")
	noActivate := fs.Bool("no-activate", false, "upload without activating")
	if err := fs.Parse(reorder(args)); err != nil {
		return err
	}
	src := "."
	if fs.NArg() > 0 {
		src = fs.Arg(0)
	}
	if *name == "" {
		*name = nameOf(src)
	}
	if !pluginName.MatchString(*name) {
		return fmt.Errorf("plugin name %q: use 1-63 of a-z, 0-9, _ and -; pass -name", *name)
	}
	var config []byte
	if *configFile != "" {
		var err error
		if config, err = os.ReadFile(*configFile); err != nil {
			return err
		}
	}
	c := client()
	tenantID, err := c.tenantOf(*tenantFlag)
	if err != nil {
		return err
	}
	var wasm []byte
	if strings.HasSuffix(src, ".wasm") {
		if wasm, err = os.ReadFile(src); err != nil {
			return err
		}
	} else {
		tmp, err := os.MkdirTemp("", "plinth-push-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		if wasm, err = build(env, src, filepath.Join(tmp, *name+".wasm")); err != nil {
			return err
		}
	}
	base := "/tenants/" + tenantID + "/plugins/" + *name
	var up struct {
		Version struct {
			Version int
			SHA256  string
			Hooks   []string
		}
	}
	body := &progressReader{r: bytes.NewReader(wasm), total: len(wasm), w: env.Stderr, label: "uploading " + *name}
	q := "?activate=true"
	if *noActivate {
		q = ""
	}
	if err := c.send("PUT", base+"/versions"+q, "application/wasm", body, &up); err != nil {
		fmt.Fprintln(env.Stderr)
		return err
	}
	fmt.Fprintf(env.Stderr, " validated and compiled\n")
	if config != nil {
		if err := c.send("PUT", base+"/config", "application/json", bytes.NewReader(config), nil); err != nil {
			return fmt.Errorf("setting the configuration: %w", err)
		}
	}
	for _, h := range hooks {
		if err := c.call("PUT", "/tenants/"+tenantID+"/hooks/"+h, map[string]string{"plugin": *name}, nil); err != nil {
			return fmt.Errorf("binding the %s hook: %w", h, err)
		}
	}
	if !c.json {
		state := "active"
		if *noActivate {
			state = "not active (plinth plugin activate " + *name + " " + strconv.Itoa(up.Version.Version) + ")"
		}
		fmt.Fprintf(c.out, "%s v%d of tenant %s is %s (sha256 %.12s, exports %s)\n", *name, up.Version.Version, tenantID, state,
			up.Version.SHA256, strings.Join(up.Version.Hooks, ", "))
		if len(hooks) > 0 {
			fmt.Fprintf(c.out, "bound to: %s\n", strings.Join(hooks, ", "))
		}
	}
	return nil
}

func pluginAdmin(env *Env, sub string, args []string) error {
	fs := flag.NewFlagSet("plinth plugin "+sub, flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	client := adminFlags(fs, env)
	tenantFlag := fs.String("tenant", "", "tenant (default: the admin key's tenant)")
	if err := fs.Parse(reorder(args)); err != nil {
		return err
	}
	c := client()
	tenantID, err := c.tenantOf(*tenantFlag)
	if err != nil {
		return err
	}
	base := "/tenants/" + tenantID + "/plugins"
	arg := func(i int, what string) (string, error) {
		if fs.NArg() <= i {
			return "", fmt.Errorf("missing %s; see plinth plugin help", what)
		}
		return fs.Arg(i), nil
	}
	type plugin struct {
		Name     string
		Active   int      `json:"active_version"`
		Latest   int      `json:"latest_version"`
		Rollback *int     `json:"rollback_version"`
		Hooks    []string `json:"bound_hooks"`
	}
	show := func(p plugin) {
		if c.json {
			return
		}
		rb := "-"
		if p.Rollback != nil {
			rb = "v" + strconv.Itoa(*p.Rollback)
		}
		fmt.Fprintf(c.out, "%s: active v%d, latest v%d, rollback to %s, hooks [%s]\n", p.Name, p.Active, p.Latest, rb, strings.Join(p.Hooks, " "))
	}
	switch sub {
	case "list":
		var list struct{ Data []plugin }
		if err := c.call("GET", base, nil, &list); err != nil {
			return err
		}
		var rows [][]string
		for _, p := range list.Data {
			rows = append(rows, []string{p.Name, "v" + strconv.Itoa(p.Active), "v" + strconv.Itoa(p.Latest), strings.Join(p.Hooks, ",")})
		}
		c.table("NAME\tACTIVE\tLATEST\tHOOKS", rows)
	case "versions":
		name, err := arg(0, "plugin name")
		if err != nil {
			return err
		}
		var list struct {
			Data []struct {
				Version   int
				SHA256    string
				Size      int
				Hooks     []string
				CreatedAt int64 `json:"created_at"`
			}
		}
		if err := c.call("GET", base+"/"+name+"/versions", nil, &list); err != nil {
			return err
		}
		var rows [][]string
		for _, v := range list.Data {
			rows = append(rows, []string{"v" + strconv.Itoa(v.Version), v.SHA256[:12], strconv.Itoa(v.Size),
				strings.Join(v.Hooks, ","), time.Unix(v.CreatedAt, 0).UTC().Format(time.RFC3339)})
		}
		c.table("VERSION\tSHA256\tBYTES\tEXPORTS\tCREATED", rows)
	case "activate":
		name, err := arg(0, "plugin name")
		if err != nil {
			return err
		}
		vs, err := arg(1, "version")
		if err != nil {
			return err
		}
		v, err := strconv.Atoi(strings.TrimPrefix(vs, "v"))
		if err != nil {
			return fmt.Errorf("version %q: want a number", vs)
		}
		var p plugin
		if err := c.call("POST", base+"/"+name+"/activate", map[string]int{"version": v}, &p); err != nil {
			return err
		}
		show(p)
	case "rollback":
		name, err := arg(0, "plugin name")
		if err != nil {
			return err
		}
		var p plugin
		if err := c.call("POST", base+"/"+name+"/rollback", nil, &p); err != nil {
			return err
		}
		show(p)
	case "config":
		name, err := arg(0, "plugin name")
		if err != nil {
			return err
		}
		file, err := arg(1, "configuration file (or - for stdin)")
		if err != nil {
			return err
		}
		var b []byte
		if file == "-" {
			b, err = io.ReadAll(bufio.NewReader(os.Stdin))
		} else {
			b, err = os.ReadFile(file)
		}
		if err != nil {
			return err
		}
		var p plugin
		if err := c.send("PUT", base+"/"+name+"/config", "application/json", bytes.NewReader(b), &p); err != nil {
			return err
		}
		show(p)
	case "delete":
		name, err := arg(0, "plugin name")
		if err != nil {
			return err
		}
		if err := c.call("DELETE", base+"/"+name, nil, nil); err != nil {
			return err
		}
		if !c.json {
			fmt.Fprintf(c.out, "deleted plugin %s of tenant %s\n", name, tenantID)
		}
	}
	return nil
}

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// progressReader reports upload progress on w.
type progressReader struct {
	r     io.Reader
	total int
	done  int
	w     io.Writer
	label string
	last  time.Time
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.done += n
	if time.Since(p.last) > 100*time.Millisecond || err == io.EOF {
		p.last = time.Now()
		fmt.Fprintf(p.w, "\r%s: %.1f of %.1f MB (%d%%)", p.label, float64(p.done)/1e6, float64(p.total)/1e6, 100*p.done/max(p.total, 1))
	}
	return n, err
}

const scaffoldMain = `// Command NAME is a Plinth plugin.
//
// Build it with "plinth plugin build", test it with "go test", and deploy it with
// "plinth plugin push -hook route". See docs/plugins.md in the Plinth source tree.
package main

import (
	"strconv"

	"github.com/plinth-dev/plinth/sdk"
)

func init() {
	sdk.OnRoute(route)
	sdk.OnHandle(handle)
}

// route sends GET /v1/NAME to this plugin's handle hook and leaves every other request to the
// host's built-in routing.
func route(req *sdk.Request) (sdk.Route, error) {
	if req.Method == "GET" && req.Path == "/v1/NAME" {
		return sdk.ToPlugin("NAME"), nil
	}
	return sdk.Default(), nil
}

// handle answers with a greeting and counts the requests it served in the plugin's KV store.
func handle(req *sdk.Request) (sdk.Response, error) {
	n, err := sdk.KV.Incr("hits", 1, 0)
	if err != nil {
		return sdk.Response{}, err
	}
	body := "hello from NAME, request " + strconv.FormatInt(n, 10) + "\n"
	return sdk.Response{Status: 200, Body: []byte(body),
		Headers: []sdk.Pair{{Key: "content-type", Value: "text/plain; charset=utf-8"}}}, nil
}

func main() {}
`

const scaffoldTest = `package main

import (
	"testing"

	"github.com/plinth-dev/plinth/sdk"
	"github.com/plinth-dev/plinth/sdk/sdktest"
)

func TestRoute(t *testing.T) {
	h := sdktest.New()
	d, err := h.Route(&sdk.Request{Method: "GET", Path: "/v1/NAME"})
	if err != nil || d.Action != sdk.RoutePlugin || d.Target != "NAME" {
		t.Fatalf("GET /v1/NAME: %+v, %v", d, err)
	}
	d, err = h.Route(&sdk.Request{Method: "GET", Path: "/v1/models"})
	if err != nil || d.Action != sdk.RouteDefault {
		t.Fatalf("other paths: %+v, %v", d, err)
	}
}

func TestHandleCounts(t *testing.T) {
	h := sdktest.New()
	for _, want := range []string{"hello from NAME, request 1\n", "hello from NAME, request 2\n"} {
		r, err := h.Handle(&sdk.Request{Method: "GET", Path: "/v1/NAME"})
		if err != nil || r.Status != 200 || string(r.Body) != want {
			t.Fatalf("handle: %d %q %v, want %q", r.Status, r.Body, err, want)
		}
	}
}
`
