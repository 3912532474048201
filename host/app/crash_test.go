package app

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/host/tenant"
	"github.com/plinth-dev/plinth/runtime/wasmbuild"
)

// buildBinary builds the plinth binary once per test process.
var buildBinary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "plinth-bin-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "plinth")
	cmd := exec.Command("go", "build", "-o", bin, "./host/cmd/plinth")
	cmd.Dir = "../.."
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

// process is a plinth server running as a child process.
type process struct {
	cmd  *exec.Cmd
	url  string
	logs *bytes.Buffer
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func startProcess(t *testing.T, bin string, args ...string) *process {
	t.Helper()
	addr := freeAddr(t)
	p := &process{logs: &bytes.Buffer{}, url: "http://" + addr}
	p.cmd = exec.Command(bin, append([]string{"serve", "-addr", addr, "-log-level", "warn"}, args...)...)
	p.cmd.Stdout, p.cmd.Stderr = io.Discard, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		res, err := http.Get(p.url + "/readyz")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == 200 {
				return p
			}
		}
		if time.Now().After(deadline) || p.cmd.ProcessState != nil {
			p.cmd.Process.Kill()
			t.Fatalf("server did not become ready: %v\n%s", err, p.logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (p *process) kill() {
	p.cmd.Process.Kill() // SIGKILL: no shutdown path runs
	p.cmd.Wait()
}

var client = &http.Client{Timeout: 10 * time.Second}

func call(url, key, method, body string) (int, []byte, error) {
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+key)
	res, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	return res.StatusCode, b, err
}

func kvCommand(url string, cmd map[string]any) (int, map[string]any, error) {
	b, _ := json.Marshal(cmd)
	code, body, err := call(url+"/v1/kv", "pk-crash", "POST", string(b))
	var r map[string]any
	if err == nil {
		json.Unmarshal(body, &r)
	}
	return code, r, err
}

// TestCrashSafety writes through the real binary with many concurrent clients (plugin KV through the
// kv fixture plugin, and conversation items), SIGKILLs it at random moments, restarts it, and checks
// that every acknowledged write is there and the store opens clean.
func TestCrashSafety(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the server binary 21 times")
	}
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	wasm := filepath.Join(t.TempDir(), "kv.wasm")
	os.WriteFile(wasm, wasmbuild.ForTest(t, "../../testdata/guests/kv"), 0o644)
	h := tenant.HashKey([]byte("pk-crash"))
	cfg, _ := json.Marshal(map[string]any{"tenants": []any{map[string]any{
		"id":      "crash",
		"keys":    []any{map[string]any{"id": "k1", "sha256": hex.EncodeToString(h[:])}},
		"plugins": []any{map[string]any{"name": "kv", "wasm": wasm, "hooks": []string{"route"}}},
	}}})
	cfgPath := filepath.Join(t.TempDir(), "plinth.json")
	os.WriteFile(cfgPath, cfg, 0o644)
	data := t.TempDir()

	var mu sync.Mutex
	ackedKV := map[string]string{}      // hex key → hex value
	ackedItems := map[string][]string{} // conversation id → texts
	rounds := 20
	for round := 0; round <= rounds; round++ {
		p := startProcess(t, bin, "-config", cfgPath, "-data-dir", data)
		verifyAcked(t, p, round, ackedKV, ackedItems)
		if round == rounds {
			p.kill()
			break
		}
		code, body, err := call(p.url+"/v1/conversations", "pk-crash", "POST", "{}")
		var conv struct{ ID string }
		if err != nil || code != 200 || json.Unmarshal(body, &conv) != nil {
			t.Fatalf("round %d: create conversation: %d %s %v", round, code, body, err)
		}
		mu.Lock()
		ackedItems[conv.ID] = nil
		mu.Unlock()

		stop := make(chan struct{})
		var wg sync.WaitGroup
		for g := 0; g < 16; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					if g%4 == 0 {
						text := fmt.Sprintf("r%d-g%d-i%d", round, g, i)
						code, _, err := call(p.url+"/v1/conversations/"+conv.ID+"/items", "pk-crash", "POST",
							`{"items":[{"role":"user","content":"`+text+`"}]}`)
						if err == nil && code == 200 {
							mu.Lock()
							ackedItems[conv.ID] = append(ackedItems[conv.ID], text)
							mu.Unlock()
						}
						continue
					}
					key := hex.EncodeToString(fmt.Appendf(nil, "k-%d-%d-%d", round, g, i))
					val := hex.EncodeToString(fmt.Appendf(nil, "v-%d", rand.Int64()))
					code, r, err := kvCommand(p.url, map[string]any{"op": "put", "key": key, "value": val})
					if err == nil && code == 200 && r["ok"] == true {
						mu.Lock()
						ackedKV[key] = val
						mu.Unlock()
					}
				}
			}()
		}
		time.Sleep(time.Duration(50+rand.IntN(400)) * time.Millisecond)
		p.kill()
		close(stop)
		wg.Wait()
	}
	if len(ackedKV) < 100 || len(ackedItems) != rounds {
		t.Fatalf("too few acknowledged writes to mean anything: %d KV, %d conversations", len(ackedKV), len(ackedItems))
	}
	t.Logf("%d rounds: %d KV writes and %d conversation items acknowledged, all present after SIGKILL",
		rounds, len(ackedKV), countItems(ackedItems))
}

func countItems(m map[string][]string) int {
	n := 0
	for _, v := range m {
		n += len(v)
	}
	return n
}

// verifyAcked checks that every acknowledged write is readable after a restart.
func verifyAcked(t *testing.T, p *process, round int, ackedKV map[string]string, ackedItems map[string][]string) {
	t.Helper()
	found := map[string]string{}
	after := ""
	for {
		code, r, err := kvCommand(p.url, map[string]any{"op": "scan", "prefix": hex.EncodeToString([]byte("k-")),
			"after": after, "limit": 1000})
		if err != nil || code != 200 {
			p.kill()
			t.Fatalf("round %d: scan: %d %v %v\n%s", round, code, r, err, p.logs)
		}
		entries, _ := r["entries"].([]any)
		for _, e := range entries {
			kv := e.([]any)
			found[kv[0].(string)] = kv[1].(string)
			after = kv[0].(string)
		}
		if r["more"] != true {
			break
		}
	}
	for k, v := range ackedKV {
		if found[k] != v {
			p.kill()
			t.Fatalf("round %d: acknowledged KV write %s = %s is %q after restart", round, k, v, found[k])
		}
	}
	for conv, texts := range ackedItems {
		have := map[string]bool{}
		after := ""
		for {
			u := p.url + "/v1/conversations/" + conv + "/items?order=asc&limit=100"
			if after != "" {
				u += "&after=" + after
			}
			code, body, err := call(u, "pk-crash", "GET", "")
			var page struct {
				Data []struct {
					ID      string
					Content []struct{ Text string }
				}
				HasMore bool `json:"has_more"`
			}
			if err != nil || code != 200 || json.Unmarshal(body, &page) != nil {
				p.kill()
				t.Fatalf("round %d: list items of %s: %d %s %v", round, conv, code, body, err)
			}
			for _, it := range page.Data {
				have[it.Content[0].Text] = true
				after = it.ID
			}
			if !page.HasMore {
				break
			}
		}
		for _, text := range texts {
			if !have[text] {
				p.kill()
				t.Fatalf("round %d: acknowledged item %q of %s missing after restart", round, text, conv)
			}
		}
	}
}
