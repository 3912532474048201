package search

import (
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/host/store"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// newTestService returns a Service on a real Pebble store and real bleve indexes in a temporary directory.
func newTestService(t testing.TB, opts Options) *Service {
	t.Helper()
	dir := t.TempDir()
	st, err := store.OpenDir(filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	opts.Store, opts.Dir, opts.Logger = st, filepath.Join(dir, "indexes"), quiet()
	svc, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := svc.Close(); err != nil {
			t.Error(err)
		}
		st.Close()
	})
	return svc
}

func errorsAs(err error, target any) bool { return errors.As(err, target) }

// percentiles returns the 50th and 99th percentiles of d (which it sorts).
func percentiles(d []time.Duration) (time.Duration, time.Duration) {
	slices.Sort(d)
	return d[len(d)/2], d[len(d)*99/100]
}
