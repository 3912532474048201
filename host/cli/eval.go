package cli

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/plinth-dev/plinth/host/app"
	"github.com/plinth-dev/plinth/host/config"
	"github.com/plinth-dev/plinth/host/search/beir"
	"github.com/plinth-dev/plinth/host/search/hashembed"
)

func init() {
	register(command{"eval", "measure retrieval quality on a BEIR dataset through the API (nDCG@10, Recall@100)", runEval})
}

func runEval(env *Env, args []string) error {
	fs := flag.NewFlagSet("plinth eval", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	dir := fs.String("dir", envOr(env, "EVAL_DIR", "../shared/eval/scifact"), "dataset in BEIR layout: corpus.jsonl.gz, queries.jsonl, qrels/*.tsv (env EVAL_DIR)")
	split := fs.String("split", "", "qrels split to use (default: every qrels/*.tsv)")
	url := fs.String("url", "", "evaluate against this running server (default: start one in-process on a temporary data directory)")
	key := fs.String("key", env.Getenv("PLINTH_API_KEY"), "tenant API key for -url (env PLINTH_API_KEY)")
	embedURL := fs.String("embed-url", env.Getenv("EVAL_EMBED_URL"), "OpenAI-compatible embeddings base URL for the vector and hybrid modes (env EVAL_EMBED_URL)")
	embedModel := fs.String("embed-model", env.Getenv("EVAL_EMBED_MODEL"), "embedding model (env EVAL_EMBED_MODEL)")
	embedKeyEnv := fs.String("embed-key-env", "", "variable holding the embedder's API key (must be PLINTH_EMBED_KEY_*)")
	hashEmb := fs.Bool("hash-embedder", false, "use the built-in hashed bag-of-words embedder (measures the machinery, not semantics)")
	chunk := fs.Int("chunk-tokens", 0, "max_chunk_size_tokens of the store (default: the server's 800)")
	queriesMax := fs.Int("queries", 0, "evaluate at most this many queries (0: all)")
	workers := fs.Int("concurrency", 2, "concurrent ingest requests")
	if err := fs.Parse(args); err != nil {
		return err
	}
	qrels, err := beir.ReadQrels(*dir, *split)
	if err != nil {
		return err
	}
	queries, err := beir.ReadQueries(*dir)
	if err != nil {
		return err
	}
	queries = slices.DeleteFunc(queries, func(q beir.Query) bool { return len(qrels[q.ID]) == 0 })
	if *queriesMax > 0 && len(queries) > *queriesMax {
		queries = queries[:*queriesMax]
	}

	ctx, cancel := context.WithCancel(env.Context)
	defer cancel()
	base, apiKey := *url, *key
	if base == "" {
		var stop func()
		base, apiKey, stop, err = startEvalServer(ctx, env.Stderr)
		if err != nil {
			return err
		}
		defer stop()
	} else if apiKey == "" {
		return errors.New("-url needs -key (or PLINTH_API_KEY)")
	}
	embLabel := ""
	var embedder map[string]any
	switch {
	case *hashEmb:
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		srv := &http.Server{Handler: &hashembed.Handler{Dims: 256}}
		go srv.Serve(ln)
		defer srv.Close()
		embedder = map[string]any{"base_url": "http://" + ln.Addr().String() + "/v1", "model": "hash-256", "batch_size": 256}
		embLabel = "hash-256 (hashed bag of words: no semantics, a test double)"
	case *embedURL != "":
		if *embedModel == "" {
			return errors.New("-embed-url needs -embed-model")
		}
		embedder = map[string]any{"base_url": *embedURL, "model": *embedModel}
		if *embedKeyEnv != "" {
			embedder["api_key_env"] = *embedKeyEnv
		}
		embLabel = *embedModel
	}

	c := &client{base: base, key: apiKey, http: &http.Client{Timeout: 10 * time.Minute}}
	spec := map[string]any{"name": "eval " + filepath.Base(*dir), "embedder": embedder}
	if *chunk > 0 {
		spec["chunking_strategy"] = map[string]any{"type": "static", "static": map[string]int{"max_chunk_size_tokens": *chunk, "chunk_overlap_tokens": *chunk / 4}}
	}
	var vs struct{ ID string }
	if err := c.call("POST", "/v1/vector_stores", spec, &vs); err != nil {
		return fmt.Errorf("creating the vector store: %w", err)
	}
	defer c.call("DELETE", "/v1/vector_stores/"+vs.ID, nil, nil)

	// Ingest the corpus through the API.
	docs := make(chan ingestDoc, 1000)
	readErr := make(chan error, 1)
	go func() {
		readErr <- func() error {
			defer close(docs)
			return beir.ReadCorpus(*dir, func(d beir.Doc) error {
				select {
				case docs <- ingestDoc{ID: d.ID, Text: d.Title + "\n\n" + d.Text}:
					return nil
				case <-ctx.Done():
					return ctx.Err()
				}
			})
		}()
	}()
	start := time.Now()
	st, err := ingest(c, vs.ID, docs, 100, *workers, progressLine(env.Stderr))
	fmt.Fprintln(env.Stderr)
	if err != nil {
		cancel()
		return fmt.Errorf("ingest: %w", err)
	}
	if err := <-readErr; err != nil {
		return err
	}
	took := time.Since(start)
	fmt.Fprintf(env.Stdout, "dataset %s: %d documents, %d chunks ingested in %.1fs (%.0f chunks/s); %d queries with judgments\n",
		*dir, st.docs.Load(), st.chunks.Load(), took.Seconds(), float64(st.chunks.Load())/took.Seconds(), len(queries))
	if embLabel != "" {
		fmt.Fprintf(env.Stdout, "embedder: %s\n", embLabel)
	}

	type run struct {
		label   string
		options map[string]any
	}
	runs := []run{{"lexical (BM25)", map[string]any{"mode": "lexical"}}}
	if embedder != nil {
		runs = append(runs,
			run{"vector", map[string]any{"mode": "vector"}},
			run{"hybrid rrf k=60", map[string]any{"mode": "hybrid", "fusion": "rrf"}},
			run{"hybrid convex alpha=0.5", map[string]any{"mode": "hybrid", "fusion": "convex", "alpha": 0.5}},
			run{"hybrid convex alpha=0.3", map[string]any{"mode": "hybrid", "fusion": "convex", "alpha": 0.3}})
	}
	fmt.Fprintf(env.Stdout, "\n%-26s %8s %11s %9s %9s\n", "mode", "nDCG@10", "Recall@100", "p50 ms", "p99 ms")
	for _, r := range runs {
		ndcg, recall, lat, err := evalRun(c, vs.ID, queries, qrels, r.options)
		if err != nil {
			return fmt.Errorf("%s: %w", r.label, err)
		}
		p50, p99 := lat[len(lat)/2], lat[len(lat)*99/100]
		fmt.Fprintf(env.Stdout, "%-26s %8.4f %11.4f %9.2f %9.2f\n", r.label, ndcg, recall,
			float64(p50.Microseconds())/1000, float64(p99.Microseconds())/1000)
	}
	if embedder == nil {
		fmt.Fprintln(env.Stdout, "vector, hybrid            need an embedder: set EVAL_EMBED_URL and EVAL_EMBED_MODEL (or -hash-embedder for the machinery only)")
	}
	return nil
}

// evalRun runs every query in one mode and returns mean nDCG@10 and Recall@100 over documents (chunks
// of one document count once, at their best rank) and the latency of each query's first page, sorted.
func evalRun(c *client, store string, queries []beir.Query, qrels beir.Qrels, options map[string]any) (float64, float64, []time.Duration, error) {
	type result struct {
		ndcg, recall float64
		lat          time.Duration
		err          error
	}
	results := make([]result, len(queries))
	var wg sync.WaitGroup
	next := make(chan int)
	for w := 0; w < 2; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				q := queries[i]
				var ranking []string
				seen := map[string]bool{}
				page := ""
				for len(ranking) < 100 {
					body := map[string]any{"query": q.Text, "max_num_results": 50, "ranking_options": options}
					if page != "" {
						body["page"] = page
					}
					var res struct {
						Data []struct {
							FileID string `json:"file_id"`
						}
						HasMore  bool    `json:"has_more"`
						NextPage *string `json:"next_page"`
					}
					t := time.Now()
					err := c.call("POST", "/v1/vector_stores/"+store+"/search", body, &res)
					if page == "" {
						results[i].lat = time.Since(t)
					}
					if err != nil {
						results[i].err = err
						break
					}
					for _, d := range res.Data {
						if !seen[d.FileID] {
							seen[d.FileID] = true
							ranking = append(ranking, d.FileID)
						}
					}
					if !res.HasMore || res.NextPage == nil {
						break
					}
					page = *res.NextPage
				}
				results[i].ndcg = beir.NDCG(ranking, qrels[q.ID], 10)
				results[i].recall = beir.Recall(ranking, qrels[q.ID], 100)
			}
		}()
	}
	for i := range queries {
		next <- i
	}
	close(next)
	wg.Wait()
	var ndcg, recall float64
	lat := make([]time.Duration, len(results))
	for i, r := range results {
		if r.err != nil {
			return 0, 0, nil, r.err
		}
		ndcg += r.ndcg
		recall += r.recall
		lat[i] = r.lat
	}
	slices.Sort(lat)
	n := float64(len(results))
	return ndcg / n, recall / n, lat, nil
}

// startEvalServer starts a Plinth server in-process on a free loopback port with a temporary data
// directory and one tenant, and returns its URL, the tenant's key and the function that stops it.
func startEvalServer(ctx context.Context, logOut io.Writer) (string, string, func(), error) {
	dir, err := os.MkdirTemp("", "plinth-eval-")
	if err != nil {
		return "", "", nil, err
	}
	key := app.NewKey()
	sum := sha256.Sum256([]byte(key))
	cfg := config.Defaults()
	cfg.Addr, cfg.DataDir, cfg.LogLevel = "127.0.0.1:0", dir, "warn"
	cfg.MaxBodyBytes = 64 << 20
	cfg.Tenants = []config.Tenant{{ID: "eval", Keys: []config.Key{{ID: "eval", SHA256: hex.EncodeToString(sum[:])}},
		Limits: config.Limits{StorageBytes: 64 << 30, StorageKeys: 1 << 30}}}
	a, err := app.New(ctx, cfg, logOut)
	if err != nil {
		os.RemoveAll(dir)
		return "", "", nil, err
	}
	addr, err := a.Listen()
	if err != nil {
		os.RemoveAll(dir)
		return "", "", nil, err
	}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		a.Serve(sctx)
		close(done)
	}()
	return "http://" + addr.String(), key, func() {
		cancel()
		<-done
		os.RemoveAll(dir)
	}, nil
}
