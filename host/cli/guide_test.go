package cli

import (
	"net"
	"os"
	osexec "os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestPluginGuideRunsAsWritten runs every shell block of docs/plugins.md, in order, as one bash script
// from the root of the checkout: build the tools, scaffold a plugin, test it, build it, start a server,
// create a tenant and keys, push the plugin and call it. The only changes are mechanical: the guide's
// scratch paths move into a temporary directory, the server listens on a free port (PLINTH_ADDR and
// PLINTH_URL, which the guide's commands read), the server runs in the background instead of "another
// terminal", and "<the secret printed above>" is the last line the previous plinth command printed.
// The guide's promised answer must come back.
func TestPluginGuideRunsAsWritten(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the tools and a plugin")
	}
	if _, err := osexec.LookPath("curl"); err != nil {
		t.Skip("the guide uses curl")
	}
	blocks := shellBlocks(t, "../../docs/plugins.md")
	if len(blocks) < 6 {
		t.Fatalf("found %d shell blocks in docs/plugins.md", len(blocks))
	}
	tmp := t.TempDir()
	addr := freeAddr(t)
	paths := strings.NewReplacer("/tmp/hello", tmp+"/hello", "/tmp/plinth-guide", tmp+"/data",
		"localhost:8080", addr)

	var script strings.Builder
	script.WriteString("set -euo pipefail\n")
	script.WriteString("export PLINTH_ADDR=" + addr + " PLINTH_URL=http://" + addr + "\n")
	script.WriteString("trap 'kill $SERVER 2>/dev/null || true' EXIT\nSERVER=\nLAST=\n")
	for _, b := range blocks {
		for _, line := range strings.Split(strings.TrimSpace(b), "\n") {
			line = paths.Replace(line)
			line = strings.ReplaceAll(line, "<the secret printed above>", `"$(printf '%s\n' "$LAST" | tail -n 1)"`)
			switch {
			case strings.Contains(line, "plinth serve"):
				script.WriteString(line + " >" + tmp + "/server.log 2>&1 &\nSERVER=$!\n")
				script.WriteString("for i in $(seq 300); do curl -sf http://" + addr + "/readyz >/dev/null && break; sleep 0.1; done\n")
			case strings.HasPrefix(line, "plinth "):
				script.WriteString("LAST=$(" + line + ")\nprintf '%s\\n' \"$LAST\"\n")
			default:
				script.WriteString(line + "\n")
			}
		}
	}

	cmd := osexec.Command("bash", "-c", script.String())
	cmd.Dir = "../.."
	done := make(chan struct{})
	defer close(done)
	go func() { // a stuck step must not hang the test run
		select {
		case <-done:
		case <-time.After(8 * time.Minute):
			cmd.Process.Kill()
		}
	}()
	out, err := cmd.CombinedOutput()
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(tmp, "server.log"))
		t.Fatalf("the guide failed: %v\nscript:\n%s\noutput:\n%s\nserver log:\n%s", err, script.String(), out, log)
	}
	if !strings.Contains(string(out), "hello from hello, request 1") {
		t.Fatalf("the guide's plugin did not answer as documented:\n%s", out)
	}
}

// shellBlocks returns the contents of the ```sh blocks of a Markdown file, in order.
func shellBlocks(t *testing.T, path string) []string {
	t.Helper()
	doc, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range regexp.MustCompile("(?s)```sh\n(.*?)```").FindAllStringSubmatch(string(doc), -1) {
		out = append(out, m[1])
	}
	return out
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
