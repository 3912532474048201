package search

import (
	"context"
	"fmt"
	"math/rand"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/abi"
	"github.com/plinth-dev/plinth/host/search/hashembed"
	"github.com/plinth-dev/plinth/host/store"
)

// Benchmarks of the numbers docs/search.md reports. Corpora are synthetic: documents of ~150 words drawn
// from a Zipf-distributed vocabulary of 30000 words (one chunk each), queries of 4 to 12 of those words.
// The embedder is hashembed on 127.0.0.1 (384 dimensions), so vector numbers include an HTTP round trip
// per query but no model inference.
//
//	go test -run=^$ -bench=Ingest -benchtime=1x ./host/search/
//	PLINTH_BENCH_CHUNKS=100000 go test -run=^$ -bench=SearchLatency -benchtime=1x -timeout=60m ./host/search/

type synth struct {
	r     *rand.Rand
	zipf  *rand.Zipf
	vocab []string
}

func newSynth(seed int64) *synth {
	r := rand.New(rand.NewSource(seed))
	s := &synth{r: r, zipf: rand.NewZipf(r, 1.1, 2, 29999)}
	for i := 0; i < 30000; i++ {
		s.vocab = append(s.vocab, "w"+strconv.FormatInt(int64(i)*7919%1000003, 36))
	}
	return s
}

func (s *synth) text(words int) string {
	var b strings.Builder
	for i := 0; i < words; i++ {
		b.WriteString(s.vocab[s.zipf.Uint64()])
		b.WriteByte(' ')
	}
	return b.String()
}

// fill ingests n one-chunk documents with workers concurrent batches of 100 and returns chunks/s.
func fill(b testing.TB, svc *Service, vs string, n, workers int) float64 {
	var wg sync.WaitGroup
	start := time.Now()
	per := n / workers
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			s := newSynth(int64(w))
			for i := 0; i < per; i += 100 {
				var docs []DocumentInput
				for j := i; j < min(i+100, per); j++ {
					docs = append(docs, DocumentInput{ID: fmt.Sprintf("w%dd%d", w, j), Text: s.text(150),
						Attributes: []byte(fmt.Sprintf(`{"bucket":%d}`, j%10))})
				}
				if _, err := svc.PutDocuments(context.Background(), "t", vs, docs, store.Quota{}); err != nil {
					b.Error(err)
					return
				}
			}
		}(w)
	}
	wg.Wait()
	return float64(per*workers) / time.Since(start).Seconds()
}

func hashStore(b testing.TB, svc *Service, dims int) string {
	srv := httptest.NewServer(&hashembed.Handler{Dims: dims})
	b.Cleanup(srv.Close)
	vs, err := svc.CreateStore("t", StoreSpec{Embedder: []byte(`{"base_url":"` + srv.URL + `","model":"hash","batch_size":100}`)}, store.Quota{})
	if err != nil {
		b.Fatal(err)
	}
	return vs.ID
}

func BenchmarkIngest(b *testing.B) {
	n := 20000
	if v := os.Getenv("PLINTH_BENCH_CHUNKS"); v != "" {
		n, _ = strconv.Atoi(v)
	}
	b.Run("lexical", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			svc := newTestService(b, Options{})
			vs, _ := svc.CreateStore("t", StoreSpec{Embedder: []byte("null")}, store.Quota{})
			b.ReportMetric(fill(b, svc, vs.ID, n, 2), "chunks/s")
		}
	})
	b.Run("embedder-384", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			svc := newTestService(b, Options{})
			b.ReportMetric(fill(b, svc, hashStore(b, svc, 384), n, 2), "chunks/s")
		}
	})
}

func BenchmarkSearchLatency(b *testing.B) {
	n := 10000
	if v := os.Getenv("PLINTH_BENCH_CHUNKS"); v != "" {
		n, _ = strconv.Atoi(v)
	}
	svc := newTestService(b, Options{})
	vs := hashStore(b, svc, 384)
	rate := fill(b, svc, vs, n, 2)
	b.Logf("%d chunks ingested at %.0f chunks/s", n, rate)
	s := newSynth(99)
	queries := make([]string, 300)
	for i := range queries {
		queries[i] = s.text(4 + i%9)
	}
	for _, mode := range []string{ModeLexical, ModeVector, ModeHybrid} {
		for _, filtered := range []bool{false, true} {
			name := mode
			var f []byte
			if filtered {
				name += "-filtered"
				f = []byte(`{"type":"eq","key":"bucket","value":3}`)
			}
			b.Run(name, func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					lat := make([]time.Duration, len(queries))
					for j, q := range queries {
						t := time.Now()
						_, err := svc.Search(context.Background(), "t", &abi.SearchRequest{StoreIDs: []string{vs}, Query: q,
							Mode: mode, Alpha: -1, Filters: f})
						if err != nil {
							b.Fatal(err)
						}
						lat[j] = time.Since(t)
					}
					p50, p99 := percentiles(lat)
					b.ReportMetric(float64(p50.Microseconds())/1000, "p50-ms")
					b.ReportMetric(float64(p99.Microseconds())/1000, "p99-ms")
				}
			})
		}
	}
}
