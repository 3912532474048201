package cli

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func init() {
	register(command{"ingest", "bulk-ingest JSONL files or directories of text into a vector store", runIngest})
}

// ingestDoc is a document of the ingest input: Plinth's shape ({id, text, filename, attributes}) or
// BEIR's ({_id, title, text}; the title is prepended to the text).
type ingestDoc struct {
	ID         string          `json:"id"`
	BEIRID     string          `json:"_id,omitempty"`
	Title      string          `json:"title,omitempty"`
	Text       string          `json:"text"`
	Filename   string          `json:"filename,omitempty"`
	Attributes json.RawMessage `json:"attributes,omitempty"`
}

func (d *ingestDoc) normalise() {
	if d.ID == "" {
		d.ID = d.BEIRID
	}
	d.BEIRID = ""
	if d.Title != "" {
		d.Text = d.Title + "\n\n" + d.Text
		d.Title = ""
	}
}

// readDocs sends the documents of paths (JSONL, JSONL.gz, text and markdown files, directories of them)
// to out.
func readDocs(paths []string, out chan<- ingestDoc) error {
	defer close(out)
	for _, p := range paths {
		info, err := os.Stat(p)
		if err != nil {
			return err
		}
		if !info.IsDir() {
			if err := readFile(p, filepath.Base(p), out); err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
			continue
		}
		err = filepath.WalkDir(p, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			rel, _ := filepath.Rel(p, path)
			return readFile(path, rel, out)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

func readFile(path, rel string, out chan<- ingestDoc) error {
	name := strings.ToLower(path)
	switch {
	case strings.HasSuffix(name, ".jsonl"), strings.HasSuffix(name, ".jsonl.gz"), strings.HasSuffix(name, ".ndjson"):
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		var r io.Reader = f
		if strings.HasSuffix(name, ".gz") {
			gz, err := gzip.NewReader(f)
			if err != nil {
				return err
			}
			r = gz
		}
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 1<<20), 64<<20)
		for n := 1; sc.Scan(); n++ {
			if len(bytes.TrimSpace(sc.Bytes())) == 0 {
				continue
			}
			var d ingestDoc
			if err := json.Unmarshal(sc.Bytes(), &d); err != nil {
				return fmt.Errorf("line %d: %w", n, err)
			}
			d.normalise()
			out <- d
		}
		return sc.Err()
	case strings.HasSuffix(name, ".txt"), strings.HasSuffix(name, ".md"), strings.HasSuffix(name, ".markdown"), strings.HasSuffix(name, ".text"):
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if len(bytes.TrimSpace(b)) == 0 {
			return nil
		}
		out <- ingestDoc{ID: docIDFromPath(rel), Text: string(b), Filename: filepath.Base(path)}
	}
	return nil
}

// docIDFromPath makes a document id of a relative path: characters ids cannot hold become '-'.
func docIDFromPath(rel string) string {
	b := []byte(filepath.ToSlash(rel))
	for i, c := range b {
		ok := ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || ('0' <= c && c <= '9') || strings.IndexByte("._:@-", c) >= 0
		if !ok {
			b[i] = '-'
		}
	}
	s := strings.TrimLeft(string(b), "._:@-")
	if len(s) > 256 {
		s = s[len(s)-256:]
	}
	return s
}

// ingestStats count what an ingest did.
type ingestStats struct {
	docs, chunks atomic.Int64
}

// ingest sends the documents of in to a vector store in batches, with workers concurrent requests,
// calling progress every half second and when done.
func ingest(c *client, store string, in <-chan ingestDoc, batch, workers int, progress func(docs, chunks int64, elapsed time.Duration)) (*ingestStats, error) {
	st := &ingestStats{}
	batches := make(chan []ingestDoc)
	var wg sync.WaitGroup
	var firstErr atomic.Pointer[error]
	start := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := range batches {
				var out struct {
					ChunkCount int64 `json:"chunk_count"`
				}
				err := c.call("POST", "/v1/vector_stores/"+store+"/documents", map[string]any{"documents": b}, &out)
				if err != nil {
					firstErr.CompareAndSwap(nil, &err)
					continue
				}
				st.docs.Add(int64(len(b)))
				st.chunks.Add(out.ChunkCount)
			}
		}()
	}
	done := make(chan struct{})
	if progress != nil {
		go func() {
			t := time.NewTicker(500 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-done:
					return
				case <-t.C:
					progress(st.docs.Load(), st.chunks.Load(), time.Since(start))
				}
			}
		}()
	}
	var cur []ingestDoc
	for d := range in {
		if firstErr.Load() != nil {
			continue // drain
		}
		cur = append(cur, d)
		if len(cur) == batch {
			batches <- cur
			cur = nil
		}
	}
	if len(cur) > 0 && firstErr.Load() == nil {
		batches <- cur
	}
	close(batches)
	wg.Wait()
	close(done)
	if progress != nil {
		progress(st.docs.Load(), st.chunks.Load(), time.Since(start))
	}
	if e := firstErr.Load(); e != nil {
		return st, *e
	}
	return st, nil
}

func progressLine(w io.Writer) func(docs, chunks int64, elapsed time.Duration) {
	return func(docs, chunks int64, elapsed time.Duration) {
		s := elapsed.Seconds()
		if s == 0 {
			s = 1e-9
		}
		fmt.Fprintf(w, "\r%d documents, %d chunks in %.1fs (%.0f documents/s, %.0f chunks/s)   ", docs, chunks, s,
			float64(docs)/s, float64(chunks)/s)
	}
}

func runIngest(env *Env, args []string) error {
	fs := flag.NewFlagSet("plinth ingest", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	url := fs.String("url", envOr(env, "PLINTH_URL", "http://127.0.0.1:8080"), "server base URL (env PLINTH_URL)")
	key := fs.String("key", env.Getenv("PLINTH_API_KEY"), "tenant API key (env PLINTH_API_KEY)")
	store := fs.String("store", "", "vector store id (vs_...)")
	create := fs.String("create", "", "create a vector store with this name instead of -store")
	batch := fs.Int("batch", 100, "documents per request")
	workers := fs.Int("concurrency", 2, "concurrent requests")
	fs.Usage = func() {
		fmt.Fprintln(env.Stderr, "Usage: plinth ingest [-url URL] [-key KEY] (-store vs_... | -create NAME) PATH...")
		fmt.Fprintln(env.Stderr, "\nPATHs are JSONL files (.jsonl, .jsonl.gz: {id, text, filename, attributes} or BEIR's {_id, title, text}),")
		fmt.Fprintln(env.Stderr, "text and markdown files, or directories of them.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 || (*store == "") == (*create == "") || *key == "" || *batch < 1 || *workers < 1 {
		fs.Usage()
		return errors.New("need PATHs, an API key, and one of -store or -create")
	}
	c := &client{base: *url, key: *key, http: &http.Client{Timeout: 10 * time.Minute}}
	if *create != "" {
		var vs struct{ ID string }
		if err := c.call("POST", "/v1/vector_stores", map[string]any{"name": *create}, &vs); err != nil {
			return fmt.Errorf("creating the vector store: %w", err)
		}
		*store = vs.ID
		fmt.Fprintln(env.Stdout, "created vector store", vs.ID)
	}
	docs := make(chan ingestDoc, 4**batch)
	readErr := make(chan error, 1)
	go func() { readErr <- readDocs(fs.Args(), docs) }()
	st, err := ingest(c, *store, docs, *batch, *workers, progressLine(env.Stderr))
	fmt.Fprintln(env.Stderr)
	if err != nil {
		return err
	}
	if err := <-readErr; err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "ingested %d documents (%d chunks) into %s\n", st.docs.Load(), st.chunks.Load(), *store)
	return nil
}
