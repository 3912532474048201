package search

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/host/search/hashembed"
)

// TestCrashRecovery runs the real binary, ingests through the API with concurrent clients (replacing and
// deleting documents, in a store with an embedder so both indexes are exercised), kills the process with
// SIGKILL at a random moment, restarts it, and checks that every acknowledged write is what both the
// lexical and the vector index return and that deleted documents are gone. Several rounds, on one data
// directory.
func TestCrashRecovery(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and kills the binary")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "plinth")
	build := exec.Command("go", "build", "-o", bin, "../cmd/plinth")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the binary: %v\n%s", err, out)
	}
	const key = "pk-crash-test"
	sum := sha256.Sum256([]byte(key))
	cfg := fmt.Sprintf(`{"tenants":[{"id":"crash","keys":[{"id":"k","sha256":"%s"}]}]}`, hex.EncodeToString(sum[:]))
	cfgPath := filepath.Join(dir, "config.json")
	os.WriteFile(cfgPath, []byte(cfg), 0o644)
	emb := httptest.NewServer(&hashembed.Handler{Dims: 32})
	defer emb.Close()

	var base string
	var cmd *exec.Cmd
	var logs bytes.Buffer
	start := func() {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		base = "http://" + addr
		cmd = exec.Command(bin, "serve", "-addr", addr, "-data-dir", filepath.Join(dir, "data"), "-config", cfgPath, "-log-level", "info")
		logs.Reset()
		cmd.Stdout, cmd.Stderr = &logs, &logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		for i := 0; ; i++ {
			if res, err := http.Get(base + "/readyz"); err == nil {
				res.Body.Close()
				if res.StatusCode == 200 {
					return
				}
			}
			if i > 300 {
				cmd.Process.Kill()
				t.Fatalf("server did not start:\n%s", logs.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	client := &http.Client{Timeout: 10 * time.Second}
	call := func(method, path string, body any) (int, []byte, error) {
		var rd io.Reader
		if body != nil {
			b, _ := json.Marshal(body)
			rd = bytes.NewReader(b)
		}
		req, _ := http.NewRequest(method, base+path, rd)
		req.Header.Set("Authorization", "Bearer "+key)
		res, err := client.Do(req)
		if err != nil {
			return 0, nil, err
		}
		defer res.Body.Close()
		b, err := io.ReadAll(res.Body)
		return res.StatusCode, b, err
	}

	start()
	status, body, err := call("POST", "/v1/vector_stores", map[string]any{"name": "crash",
		"embedder":          map[string]any{"base_url": emb.URL, "model": "hash"},
		"chunking_strategy": map[string]any{"type": "static", "static": map[string]int{"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 20}}})
	if err != nil || status != 200 {
		t.Fatalf("create store: %d %s %v", status, body, err)
	}
	var vs struct{ ID string }
	json.Unmarshal(body, &vs)

	// state of each document: version -1 is absent. Each client owns the ids ≡ c (mod clients), so each
	// document's writes are sequential and its acknowledged state is known exactly; a write in flight when
	// the process dies may or may not have happened.
	const clients, docsPerClient = 4, 40
	type docState struct{ acked, pending int }
	var mu sync.Mutex
	state := map[int]*docState{}
	for i := 0; i < clients*docsPerClient; i++ {
		state[i] = &docState{acked: -1, pending: -2}
	}
	text := func(id, version int) string {
		words := strings.Repeat(fmt.Sprintf("filler%d ", version%7), 20*(id%4)) // 1 to 3 chunks
		return fmt.Sprintf("zq%dv%d %s tail%d", id, version, words, id)
	}
	version := 0
	rounds := 4
	for round := 0; round < rounds; round++ {
		var wg sync.WaitGroup
		stop := make(chan struct{})
		acked := 0
		for c := 0; c < clients; c++ {
			wg.Add(1)
			go func(c int) {
				defer wg.Done()
				r := rand.New(rand.NewSource(int64(round*100 + c)))
				for {
					select {
					case <-stop:
						return
					default:
					}
					id := c + clients*r.Intn(docsPerClient)
					mu.Lock()
					version++
					v := version
					st := state[id]
					del := r.Intn(5) == 0 && st.acked >= 0
					if del {
						st.pending = -1
					} else {
						st.pending = v
					}
					mu.Unlock()
					var status int
					var err error
					if del {
						status, _, err = call("DELETE", fmt.Sprintf("/v1/vector_stores/%s/documents/d%d", vs.ID, id), nil)
					} else {
						doc := map[string]any{"id": fmt.Sprintf("d%d", id), "text": text(id, v), "attributes": map[string]any{"doc": id, "version": v}}
						status, _, err = call("POST", "/v1/vector_stores/"+vs.ID+"/documents", map[string]any{"documents": []any{doc}})
					}
					if err != nil {
						return // the server died; the write stays pending
					}
					mu.Lock()
					if status == 200 {
						st.acked, st.pending = st.pending, -2
						acked++
					} else {
						st.pending = -2
					}
					mu.Unlock()
					if status != 200 {
						t.Errorf("write answered %d", status)
						return
					}
				}
			}(c)
		}
		time.Sleep(time.Duration(300+rand.Intn(700)) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		close(stop)
		wg.Wait()
		t.Logf("round %d: %d writes acknowledged before SIGKILL", round, acked)
		start()
		for id, st := range state {
			for _, mode := range []string{"lexical", "vector"} {
				status, body, err := call("POST", "/v1/vector_stores/"+vs.ID+"/search", map[string]any{
					"query": fmt.Sprintf("zq%dv tail%d", id, id), "max_num_results": 10,
					"filters":         map[string]any{"type": "eq", "key": "doc", "value": id},
					"ranking_options": map[string]any{"mode": mode}})
				if err != nil || status != 200 {
					t.Fatalf("search: %d %s %v", status, body, err)
				}
				var page struct {
					Data []struct {
						Attributes struct{ Version int }
					}
				}
				json.Unmarshal(body, &page)
				got := -1
				for i, h := range page.Data {
					if i > 0 && h.Attributes.Version != got {
						t.Errorf("round %d %s d%d: chunks of versions %d and %d", round, mode, id, got, h.Attributes.Version)
					}
					got = h.Attributes.Version
				}
				if got != st.acked && got != st.pending {
					t.Errorf("round %d %s d%d: found version %d, acknowledged %d (pending %d)", round, mode, id, got, st.acked, st.pending)
				}
			}
		}
		if i := strings.Index(logs.String(), "search index recovered"); i >= 0 {
			line, _, _ := strings.Cut(logs.String()[i:], "\n")
			t.Logf("round %d restart: %s", round, line)
		}
		// Settle pending writes to what the server has (the lexical answer), so the next round starts exact.
		for id, st := range state {
			if st.pending == -2 {
				continue
			}
			status, body, _ := call("GET", fmt.Sprintf("/v1/vector_stores/%s/documents/d%d", vs.ID, id), nil)
			if status == 404 {
				st.acked = -1
			} else {
				var d struct{ Attributes struct{ Version int } }
				json.Unmarshal(body, &d)
				st.acked = d.Attributes.Version
			}
			st.pending = -2
		}
		if t.Failed() {
			t.Logf("server log:\n%s", logs.String())
			break
		}
	}
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		t.Error("the server did not stop on SIGTERM")
	}
}
