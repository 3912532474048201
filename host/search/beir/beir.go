// Package beir reads retrieval datasets in the layout of the BEIR benchmark (Thakur et al., 2021) and
// computes its metrics: nDCG@k (with graded relevance and the standard log2 discount, as pytrec_eval) and
// Recall@k.
//
//	corpus.jsonl.gz (or corpus.jsonl)   {"_id", "title", "text", "metadata"} per line
//	queries.jsonl                       {"_id", "text"} per line
//	qrels/<split>.tsv                   query-id, corpus-id, score; a header line first
package beir

import (
	"bufio"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Doc is a corpus document.
type Doc struct {
	ID    string `json:"_id"`
	Title string `json:"title"`
	Text  string `json:"text"`
}

// Query is a query.
type Query struct {
	ID   string `json:"_id"`
	Text string `json:"text"`
}

// Qrels are relevance judgments: query id → document id → grade (> 0 relevant).
type Qrels map[string]map[string]int

// ReadCorpus calls fn for each document of dir's corpus.
func ReadCorpus(dir string, fn func(Doc) error) error {
	path := filepath.Join(dir, "corpus.jsonl.gz")
	f, err := os.Open(path)
	var r io.Reader
	if os.IsNotExist(err) {
		if f, err = os.Open(filepath.Join(dir, "corpus.jsonl")); err != nil {
			return err
		}
		r = f
	} else if err != nil {
		return err
	} else {
		gz, err := gzip.NewReader(f)
		if err != nil {
			f.Close()
			return fmt.Errorf("%s: %w", path, err)
		}
		r = gz
	}
	defer f.Close()
	return readJSONL(r, func(line []byte) error {
		var d Doc
		if err := json.Unmarshal(line, &d); err != nil {
			return err
		}
		return fn(d)
	})
}

// ReadQueries returns dir's queries.
func ReadQueries(dir string) ([]Query, error) {
	f, err := os.Open(filepath.Join(dir, "queries.jsonl"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Query
	err = readJSONL(f, func(line []byte) error {
		var q Query
		if err := json.Unmarshal(line, &q); err != nil {
			return err
		}
		out = append(out, q)
		return nil
	})
	return out, err
}

func readJSONL(r io.Reader, fn func([]byte) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	n := 0
	for sc.Scan() {
		n++
		line := sc.Bytes()
		if len(strings.TrimSpace(string(line))) == 0 {
			continue
		}
		if err := fn(line); err != nil {
			return fmt.Errorf("line %d: %w", n, err)
		}
	}
	return sc.Err()
}

// ReadQrels reads every qrels/*.tsv of dir (or the one split named, e.g. "test").
func ReadQrels(dir, split string) (Qrels, error) {
	pattern := "*.tsv"
	if split != "" {
		pattern = split + ".tsv"
	}
	files, err := filepath.Glob(filepath.Join(dir, "qrels", pattern))
	if err != nil || len(files) == 0 {
		return nil, fmt.Errorf("no qrels/%s in %s", pattern, dir)
	}
	q := Qrels{}
	for _, path := range files {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		for i, line := range strings.Split(string(b), "\n") {
			f := strings.Split(strings.TrimSpace(line), "\t")
			if len(f) < 3 {
				continue
			}
			grade, err := strconv.Atoi(f[2])
			if err != nil {
				if i == 0 {
					continue // header
				}
				return nil, fmt.Errorf("%s line %d: score %q", path, i+1, f[2])
			}
			if q[f[0]] == nil {
				q[f[0]] = map[string]int{}
			}
			q[f[0]][f[1]] = grade
		}
	}
	return q, nil
}

// NDCG returns nDCG@k of a ranking (document ids, best first, without duplicates) against the grades.
func NDCG(ranking []string, rel map[string]int, k int) float64 {
	dcg := 0.0
	for i, id := range ranking {
		if i == k {
			break
		}
		if g := rel[id]; g > 0 {
			dcg += float64(g) / math.Log2(float64(i+2))
		}
	}
	var grades []int
	for _, g := range rel {
		if g > 0 {
			grades = append(grades, g)
		}
	}
	sort.Sort(sort.Reverse(sort.IntSlice(grades)))
	idcg := 0.0
	for i, g := range grades {
		if i == k {
			break
		}
		idcg += float64(g) / math.Log2(float64(i+2))
	}
	if idcg == 0 {
		return 0
	}
	return dcg / idcg
}

// Recall returns Recall@k: the fraction of the relevant documents in the first k of the ranking.
func Recall(ranking []string, rel map[string]int, k int) float64 {
	total, found := 0, 0
	for _, g := range rel {
		if g > 0 {
			total++
		}
	}
	if total == 0 {
		return 0
	}
	for i, id := range ranking {
		if i == k {
			break
		}
		if rel[id] > 0 {
			found++
		}
	}
	return float64(found) / float64(total)
}
