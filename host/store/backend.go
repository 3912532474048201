// Package store is the source of truth for everything a tenant owns: plugin KV, conversations,
// documents, plugin modules and versions, keys and audit records.
//
// Two layers:
//   - Backend is a small ordered key-value interface (get, iterate, atomic batch) with one implementation
//     on Pebble. A distributed backend can be added behind it without touching callers.
//   - Store adds the keyspace layout (docs/storage.md), tenant scoping, TTLs, per-tenant quotas and the
//     read-modify-write operations (incr, compare-and-set), which it serialises with striped locks. Those
//     locks make the RMW operations atomic within one process; a distributed backend would have to
//     provide conditional writes instead.
//
// Every write a caller is told succeeded has been synced to the write-ahead log: Pebble's commit
// pipeline groups concurrent synced commits into one fsync, so durability stays cheap under load.
package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/cockroachdb/pebble/v2"
)

// ErrNotFound is returned for missing keys.
var ErrNotFound = errors.New("not found")

// Backend is an ordered key-value store with atomic batches.
type Backend interface {
	// Get returns a copy of the value of key, or ErrNotFound.
	Get(key []byte) ([]byte, error)
	// Scan calls fn for each key in [lower, upper) in ascending order until fn returns false. The slices
	// are only valid during the call.
	Scan(lower, upper []byte, fn func(key, value []byte) bool) error
	// ScanReverse is Scan in descending key order.
	ScanReverse(lower, upper []byte, fn func(key, value []byte) bool) error
	// Apply commits a batch atomically and durably.
	Apply(b *Batch) error
	// Checkpoint writes a consistent copy of the whole store into dir (which must not exist) while it
	// keeps serving: the online backup.
	Checkpoint(dir string) error
	Close() error
}

// opKind is a batch operation.
type opKind uint8

const (
	opSet opKind = iota
	opDelete
	opDeleteRange
	opAdd // add a signed 64-bit integer to a counter key (see counterMerger)
)

type op struct {
	kind       opKind
	key, value []byte // value is the end key for opDeleteRange
	delta      int64
}

// Batch collects writes to apply atomically. Keys and values are copied when added.
type Batch struct {
	ops []op
}

// Set writes key = value.
func (b *Batch) Set(key, value []byte) {
	b.ops = append(b.ops, op{kind: opSet, key: bytes.Clone(key), value: bytes.Clone(value)})
}

// Delete removes key.
func (b *Batch) Delete(key []byte) { b.ops = append(b.ops, op{kind: opDelete, key: bytes.Clone(key)}) }

// DeleteRange removes every key in [start, end).
func (b *Batch) DeleteRange(start, end []byte) {
	b.ops = append(b.ops, op{kind: opDeleteRange, key: bytes.Clone(start), value: bytes.Clone(end)})
}

// Add adds delta to the counter at key (a missing counter is 0). Counters are only ever written with Add.
func (b *Batch) Add(key []byte, delta int64) {
	if delta != 0 {
		b.ops = append(b.ops, op{kind: opAdd, key: bytes.Clone(key), delta: delta})
	}
}

// Len returns the number of operations.
func (b *Batch) Len() int { return len(b.ops) }

// pebbleBackend implements Backend on Pebble.
type pebbleBackend struct {
	db *pebble.DB
}

// OpenPebble opens (or creates) a Pebble database in dir.
func OpenPebble(dir string) (Backend, error) {
	db, err := pebble.Open(dir, &pebble.Options{
		Merger: &pebble.Merger{Name: counterMergerName, Merge: newCounterMerger},
		Logger: quietPebbleLogger{},
	})
	if err != nil {
		return nil, fmt.Errorf("store: opening %s: %w", dir, err)
	}
	return &pebbleBackend{db: db}, nil
}

func (p *pebbleBackend) Get(key []byte) ([]byte, error) {
	v, closer, err := p.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	out := bytes.Clone(v)
	closer.Close()
	return out, nil
}

func (p *pebbleBackend) Scan(lower, upper []byte, fn func(key, value []byte) bool) error {
	return p.scan(lower, upper, false, fn)
}

func (p *pebbleBackend) ScanReverse(lower, upper []byte, fn func(key, value []byte) bool) error {
	return p.scan(lower, upper, true, fn)
}

func (p *pebbleBackend) scan(lower, upper []byte, reverse bool, fn func(key, value []byte) bool) error {
	it, err := p.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return err
	}
	first, next := it.First, it.Next
	if reverse {
		first, next = it.Last, it.Prev
	}
	for valid := first(); valid; valid = next() {
		v, err := it.ValueAndErr()
		if err != nil {
			it.Close()
			return err
		}
		if !fn(it.Key(), v) {
			break
		}
	}
	return errors.Join(it.Error(), it.Close())
}

func (p *pebbleBackend) Apply(b *Batch) error {
	pb := p.db.NewBatch()
	defer pb.Close()
	var num [8]byte
	for _, o := range b.ops {
		var err error
		switch o.kind {
		case opSet:
			err = pb.Set(o.key, o.value, nil)
		case opDelete:
			err = pb.Delete(o.key, nil)
		case opDeleteRange:
			err = pb.DeleteRange(o.key, o.value, nil)
		case opAdd:
			binary.LittleEndian.PutUint64(num[:], uint64(o.delta))
			err = pb.Merge(o.key, num[:], nil)
		}
		if err != nil {
			return err
		}
	}
	return pb.Commit(pebble.Sync)
}

func (p *pebbleBackend) Checkpoint(dir string) error {
	// Flushing the WAL first makes the checkpoint contain every acknowledged write.
	return p.db.Checkpoint(dir, pebble.WithFlushedWAL())
}

func (p *pebbleBackend) Close() error { return p.db.Close() }

// counterMergerName is stored by Pebble in the database; it must never change.
const counterMergerName = "plinth.counter.v1"

// counterMerger sums 8-byte little-endian int64 operands. Only counter keys are ever merged, and they
// are only ever written with merges (Batch.Add), so every operand has this form.
type counterMerger struct{ sum int64 }

func newCounterMerger(_, value []byte) (pebble.ValueMerger, error) {
	m := &counterMerger{}
	return m, m.MergeNewer(value)
}

func (m *counterMerger) MergeNewer(value []byte) error {
	if len(value) != 8 {
		return fmt.Errorf("store: counter operand of %d bytes", len(value))
	}
	m.sum += int64(binary.LittleEndian.Uint64(value))
	return nil
}

func (m *counterMerger) MergeOlder(value []byte) error { return m.MergeNewer(value) }

func (m *counterMerger) Finish(bool) ([]byte, io.Closer, error) {
	return binary.LittleEndian.AppendUint64(nil, uint64(m.sum)), nil, nil
}

// readCounter decodes a counter value.
func readCounter(v []byte) int64 {
	if len(v) != 8 {
		return 0
	}
	return int64(binary.LittleEndian.Uint64(v))
}

type quietPebbleLogger struct{}

func (quietPebbleLogger) Infof(string, ...any)  {}
func (quietPebbleLogger) Errorf(string, ...any) {}
func (quietPebbleLogger) Fatalf(format string, args ...any) {
	panic(fmt.Sprintf("pebble: "+format, args...))
}
