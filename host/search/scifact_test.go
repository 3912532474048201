package search

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/blevesearch/bleve/v2"

	"github.com/plinth-dev/plinth/abi"
	"github.com/plinth-dev/plinth/host/search/beir"
	"github.com/plinth-dev/plinth/host/store"
)

// TestSciFactLexical measures lexical nDCG@10 and Recall@100 on a BEIR dataset in-process (the real
// evaluation, through the HTTP API, is `make eval`). It runs only with PLINTH_EVAL_DIR set, e.g.
// PLINTH_EVAL_DIR=../../../shared/eval/scifact go test -run SciFact -v ./host/search/
func TestSciFactLexical(t *testing.T) {
	dir := os.Getenv("PLINTH_EVAL_DIR")
	if dir == "" {
		t.Skip("PLINTH_EVAL_DIR not set")
	}
	svc := newTestService(t, Options{})
	spec := StoreSpec{Embedder: []byte("null")}
	if os.Getenv("PLINTH_EVAL_CHUNK") != "" {
		spec.Chunking = &Chunking{MaxTokens: 4096}
	}
	vs, err := svc.CreateStore("t", spec, store.Quota{})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	var batch []DocumentInput
	n := 0
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		_, err := svc.PutDocuments(context.Background(), "t", vs.ID, batch, store.Quota{})
		n += len(batch)
		batch = batch[:0]
		return err
	}
	err = beir.ReadCorpus(dir, func(d beir.Doc) error {
		batch = append(batch, DocumentInput{ID: d.ID, Text: d.Title + "\n\n" + d.Text})
		if len(batch) == 200 {
			return flush()
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("ingested %d documents in %v", n, time.Since(start))
	queries, err := beir.ReadQueries(dir)
	if err != nil {
		t.Fatal(err)
	}
	qrels, err := beir.ReadQrels(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	var ndcg, recall float64
	nq := 0
	for _, q := range queries {
		rel := qrels[q.ID]
		if len(rel) == 0 {
			continue
		}
		var ranking []string
		seen := map[string]bool{}
		for off := 0; off < MaxDepth && len(ranking) < 100; off += MaxResults {
			res, more, err := svc.SearchPage(context.Background(), "t", &abi.SearchRequest{StoreIDs: []string{vs.ID},
				Query: q.Text, MaxResults: MaxResults, Mode: ModeLexical}, off)
			if err != nil {
				t.Fatal(err)
			}
			for _, h := range res.Hits {
				if !seen[h.DocumentID] {
					seen[h.DocumentID] = true
					ranking = append(ranking, h.DocumentID)
				}
			}
			if !more {
				break
			}
		}
		ndcg += beir.NDCG(ranking, rel, 10)
		recall += beir.Recall(ranking, rel, 100)
		nq++
	}
	t.Logf("%s, Plinth's BM25 (k1 %.1f, b %.2f): %d queries, nDCG@10 %.4f, Recall@100 %.4f", filepath.Base(dir),
		bm25K1, bm25B, nq, ndcg/float64(nq), recall/float64(nq))
	// bleve's own BM25 scorer, for comparison.
	si, release, err := svc.acquire("t", vs.ID)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	ndcg, recall, nq = 0, 0, 0
	for _, q := range queries {
		rel := qrels[q.ID]
		if len(rel) == 0 {
			continue
		}
		mq := bleve.NewMatchQuery(q.Text)
		mq.SetField(textField)
		req := bleve.NewSearchRequestOptions(mq, 200, 0, false)
		res, err := si.lex.idx.Search(req)
		if err != nil {
			t.Fatal(err)
		}
		var ranking []string
		seen := map[string]bool{}
		for _, h := range res.Hits {
			id, _, _ := splitChunkID(h.ID)
			if !seen[id] {
				seen[id] = true
				ranking = append(ranking, id)
			}
		}
		ndcg += beir.NDCG(ranking, rel, 10)
		recall += beir.Recall(ranking, rel, 100)
		nq++
	}
	t.Logf("bleve's own BM25 (match query): nDCG@10 %.4f, Recall@100 %.4f", ndcg/float64(nq), recall/float64(nq))
}
