package cli

import (
	"net/http"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestReadmeQuickStart runs the README's first steps as written: make run (on a free port, with a
// scratch data directory and a known demo key, through the variables make run reads), then the README's
// curl block against it. The demo tenant must list its models, answer /v1/hello from the router plugin
// and answer the retrieval-augmented chat completion with a citation of the document just added.
func TestReadmeQuickStart(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts the server")
	}
	for _, tool := range []string{"make", "curl", "jq"} {
		if _, err := osexec.LookPath(tool); err != nil {
			t.Skip("the README uses " + tool)
		}
	}
	var block string
	for _, b := range shellBlocks(t, "../../README.md") {
		if strings.Contains(b, "/v1/models") {
			block = b
			break
		}
	}
	if block == "" {
		t.Fatal("README.md has no shell block calling /v1/models")
	}
	tmp := t.TempDir()
	addr := freeAddr(t)
	const key = "sk-readme-quick-start"

	logPath := filepath.Join(tmp, "make-run.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	run := osexec.Command("make", "run")
	run.Dir = "../.."
	run.Env = append(os.Environ(), "PLINTH_DEMO_KEY="+key, "PLINTH_ADDR="+addr, "PLINTH_DATA_DIR="+filepath.Join(tmp, "data"))
	run.Stdout, run.Stderr = logFile, logFile
	run.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // make, its shell and the server go down together
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		syscall.Kill(-run.Process.Pid, syscall.SIGTERM)
		run.Wait()
	}()
	deadline := time.Now().Add(5 * time.Minute) // make run may have to build first
	for {
		res, err := http.Get("http://" + addr + "/readyz")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logPath)
			t.Fatalf("make run did not get ready:\n%s", log)
		}
		time.Sleep(200 * time.Millisecond)
	}

	script := "set -euo pipefail\nKEY=" + key + "\n" + strings.ReplaceAll(block, "localhost:8080", addr)
	out, err := osexec.Command("bash", "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("the README's commands failed: %v\n%s", err, out)
	}
	for _, want := range []string{
		`"id":"plinth-extractive-v1"`,                // /v1/models
		`Hello from the demo tenant's router plugin`, // /v1/hello
		`"object":"chat.completion"`,                 // the chat completion
		`plinth keys revoke`,                         // answered from the document
		`"citations":[{`,                             // with a citation
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the README's commands did not answer %s:\n%s", want, out)
		}
	}
}
