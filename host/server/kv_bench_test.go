package server

import (
	"context"
	"testing"

	"github.com/plinth-dev/plinth/abi"
	"github.com/plinth-dev/plinth/host/store"
	"github.com/plinth-dev/plinth/host/tenant"
)

// BenchmarkKVThroughABI measures KV get and put from a plugin through the host ABI, and the same
// operations on the store directly, so the share of Pebble and of the ABI crossing can be told apart:
//
//	per-op cost through the ABI = (hook doing 100 ops − hook doing nothing) / 100
//	Pebble share                = direct / per-op cost
//
// Puts are synced writes (durable on return), so they are dominated by the WAL fsync.
func BenchmarkKVThroughABI(b *testing.B) {
	st, err := store.OpenDir(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	ts := startServer(b, Options{Store: st})
	t := &tenant.Tenant{ID: "bench", Plugins: map[string]*tenant.Plugin{
		"bench": plugin(b, ts, "bench", "../../testdata/guests/bench", ""),
	}, Bindings: map[abi.Hook]string{abi.HookRoute: "bench"}}
	snap, _ := tenant.NewSnapshot([]*tenant.Tenant{t}, nil)
	ts.Apply(context.Background(), snap)
	prt := ts.cur.Load().tenants["bench"].plugins["bench"]
	st.KVPut("bench", "bench", []byte("bench-key"), make([]byte, 64), 0, store.Quota{})

	hook := func(path string) func(b *testing.B) {
		return func(b *testing.B) {
			in := (&abi.Request{Method: "GET", Path: path, Tenant: "bench"}).AppendTo(nil)
			var out []byte
			for b.Loop() {
				if out, err = ts.call(context.Background(), prt, abi.HookRoute, "", in, out); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	b.Run("hook-noop", hook("/noop"))
	b.Run("hook-kvget", hook("/kvget"))
	b.Run("hook-kvget100", hook("/kvget100"))
	b.Run("hook-kvput", hook("/kvput"))
	b.Run("hook-kvput100", hook("/kvput100"))
	b.Run("direct-get", func(b *testing.B) {
		for b.Loop() {
			if _, err := st.KVGet("bench", "bench", []byte("bench-key")); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("direct-put", func(b *testing.B) {
		v := make([]byte, 64)
		for b.Loop() {
			if err := st.KVPut("bench", "bench", []byte("bench-key"), v, 0, store.Quota{}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
