package store

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type clock struct{ ms atomic.Int64 }

func (c *clock) now() time.Time          { return time.UnixMilli(c.ms.Load()) }
func (c *clock) advance(d time.Duration) { c.ms.Add(d.Milliseconds()) }

func openTest(t testing.TB) (*Store, *clock) {
	t.Helper()
	b, err := OpenPebble(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	c := &clock{}
	c.ms.Store(1_700_000_000_000)
	s := Open(b, c.now)
	t.Cleanup(func() { s.Close() })
	return s, c
}

func TestKVBasics(t *testing.T) {
	s, c := openTest(t)
	if _, err := s.KVGet("a", "p", []byte("k")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing key: %v", err)
	}
	if err := s.KVPut("a", "p", []byte("k"), []byte("v1"), 0, Quota{}); err != nil {
		t.Fatal(err)
	}
	if v, err := s.KVGet("a", "p", []byte("k")); err != nil || string(v) != "v1" {
		t.Fatalf("get: %q %v", v, err)
	}
	// TTL: gone after expiry, for reads and scans.
	s.KVPut("a", "p", []byte("t"), []byte("x"), time.Second, Quota{})
	c.advance(999 * time.Millisecond)
	if _, err := s.KVGet("a", "p", []byte("t")); err != nil {
		t.Fatal("expired early")
	}
	c.advance(time.Millisecond)
	if _, err := s.KVGet("a", "p", []byte("t")); !errors.Is(err, ErrNotFound) {
		t.Fatal("not expired at its TTL")
	}
	if n, err := s.SweepExpired("a"); err != nil || n != 1 {
		t.Fatalf("sweep removed %d, %v", n, err)
	}
	// Incr on a missing key, then on an existing one; on a non-integer it fails.
	for want := int64(5); want <= 10; want += 5 {
		if n, err := s.KVIncr("a", "p", []byte("n"), 5, 0, Quota{}); err != nil || n != want {
			t.Fatalf("incr: %d %v", n, err)
		}
	}
	if _, err := s.KVIncr("a", "p", []byte("k"), 1, 0, Quota{}); !errors.Is(err, ErrNotInt) {
		t.Fatalf("incr on text: %v", err)
	}
	// CAS: absent precondition, value precondition, delete.
	if err := s.KVCAS("a", "p", []byte("c"), nil, []byte("1"), 0, Quota{}); err != nil {
		t.Fatal(err)
	}
	if err := s.KVCAS("a", "p", []byte("c"), nil, []byte("2"), 0, Quota{}); !errors.Is(err, ErrConflict) {
		t.Fatalf("create over existing: %v", err)
	}
	if err := s.KVCAS("a", "p", []byte("c"), []byte("x"), []byte("2"), 0, Quota{}); !errors.Is(err, ErrConflict) {
		t.Fatalf("wrong old value: %v", err)
	}
	if err := s.KVCAS("a", "p", []byte("c"), []byte("1"), nil, 0, Quota{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.KVGet("a", "p", []byte("c")); !errors.Is(err, ErrNotFound) {
		t.Fatal("CAS delete left the key")
	}
	// Empty and over-long keys are refused.
	if err := s.KVPut("a", "p", nil, []byte("x"), 0, Quota{}); !errors.Is(err, ErrBadKey) {
		t.Fatalf("empty key: %v", err)
	}
	if err := s.KVPut("a", "p", bytes.Repeat([]byte("k"), MaxKVKey+1), nil, 0, Quota{}); !errors.Is(err, ErrBadKey) {
		t.Fatalf("long key: %v", err)
	}
}

func TestKVIncrIsAtomicUnderConcurrency(t *testing.T) {
	s, _ := openTest(t)
	var wg sync.WaitGroup
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 25; i++ {
				if _, err := s.KVIncr("a", "p", []byte("n"), 1, 0, Quota{}); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	if v, _ := s.KVGet("a", "p", []byte("n")); string(v) != "400" {
		t.Fatalf("after 400 concurrent increments: %s", v)
	}
}

func TestKVScanPaging(t *testing.T) {
	s, c := openTest(t)
	for i := 0; i < 25; i++ {
		s.KVPut("a", "p", []byte(fmt.Sprintf("user:%02d", i)), []byte{byte(i)}, 0, Quota{})
	}
	s.KVPut("a", "p", []byte("userx"), nil, 0, Quota{})
	s.KVPut("a", "p", []byte("user:99"), nil, time.Second, Quota{})
	c.advance(2 * time.Second) // user:99 expired: scans skip it
	var got []string
	after := ""
	for {
		page, more, err := s.KVScan("a", "p", []byte("user:"), []byte(after), 10, false)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range page {
			got = append(got, string(e.Key))
		}
		if !more {
			break
		}
		after = string(page[len(page)-1].Key)
	}
	if len(got) != 25 || got[0] != "user:00" || got[24] != "user:24" {
		t.Fatalf("paged scan: %v", got)
	}
}

// TestTenantIsolation crafts keys that try to reach another tenant's or plugin's range: separators,
// prefixes of the encoded head, long and invalid-UTF-8 keys. Nothing of tenant b is visible or changed.
func TestTenantIsolation(t *testing.T) {
	s, _ := openTest(t)
	s.KVPut("b", "p", []byte("secret"), []byte("b-data"), 0, Quota{})
	s.KVPut("a", "p2", []byte("x"), []byte("other-plugin"), 0, Quota{})
	crafted := [][]byte{
		[]byte("secret"),
		append([]byte{0}, "secret"...),
		TenantKey("b", nsKV, lp("p"), []byte("secret")), // the full encoded key of b's secret
		kvKey("b", "p", []byte("secret"))[2:],
		{0xff, 0xfe, 0x80},
		bytes.Repeat([]byte{0xff}, MaxKVKey),
		[]byte("\x01b\x01p"),
	}
	for _, k := range crafted {
		s.KVPut("a", "p", k, []byte("a-data"), 0, Quota{})
		s.KVCAS("a", "p", k, []byte("b-data"), []byte("pwned"), 0, Quota{})
		s.KVIncr("a", "p", k, 1, 0, Quota{})
		if v, err := s.KVGet("a", "p", k); err == nil && string(v) == "b-data" {
			t.Fatalf("key %q read tenant b's value", k)
		}
	}
	page, _, _ := s.KVScan("a", "p", nil, nil, 1000, false)
	for _, e := range page {
		if string(e.Value) == "b-data" || string(e.Value) == "other-plugin" {
			t.Fatalf("tenant a's scan saw %q", e.Value)
		}
	}
	if v, err := s.KVGet("b", "p", []byte("secret")); err != nil || string(v) != "b-data" {
		t.Fatalf("tenant b's value changed: %q %v", v, err)
	}
	if v, _ := s.KVGet("a", "p2", []byte("x")); string(v) != "other-plugin" {
		t.Fatalf("plugin p2's value changed: %q", v)
	}
	// Prefix tricks on tenant ids: "a" must not see "ab"'s data, nor the reverse.
	s.KVPut("ab", "p", []byte("k"), []byte("ab-data"), 0, Quota{})
	page, _, _ = s.KVScan("a", "p", nil, nil, 1000, false)
	for _, e := range page {
		if string(e.Value) == "ab-data" {
			t.Fatal("tenant a sees tenant ab")
		}
	}
}

func TestQuotas(t *testing.T) {
	s, _ := openTest(t)
	q := Quota{Keys: 3, Bytes: 1 << 20}
	for i := 0; i < 3; i++ {
		if err := s.KVPut("a", "p", []byte{byte('a' + i)}, []byte("v"), 0, q); err != nil {
			t.Fatal(err)
		}
	}
	err := s.KVPut("a", "p", []byte("d"), []byte("v"), 0, q)
	if !IsQuota(err) || err.Error() != "tenant a storage quota exceeded: 3 of 3 keys used" {
		t.Fatalf("4th key: %v", err)
	}
	// Overwriting an existing key does not add a key; deleting frees one.
	if err := s.KVPut("a", "p", []byte("a"), []byte("vv"), 0, q); err != nil {
		t.Fatal(err)
	}
	s.KVDelete("a", "p", []byte("a"))
	if err := s.KVPut("a", "p", []byte("d"), []byte("v"), 0, q); err != nil {
		t.Fatal(err)
	}
	if err := s.KVPut("a", "p", []byte("e"), bytes.Repeat([]byte("x"), 2<<20), 0, Quota{Bytes: 1 << 20}); err == nil {
		t.Fatal("value above the byte quota stored")
	}
	_, keys, _ := s.Usage("a")
	if keys != 3 {
		t.Fatalf("usage keys %d, want 3", keys)
	}
}

func TestUsageSurvivesReopen(t *testing.T) {
	dir := t.TempDir()
	b, _ := OpenPebble(dir)
	s := Open(b, nil)
	s.KVPut("a", "p", []byte("k1"), []byte("12345"), 0, Quota{})
	s.KVPut("a", "p", []byte("k2"), []byte("1"), 0, Quota{})
	s.KVDelete("a", "p", []byte("k2"))
	wantBytes, wantKeys, _ := s.Usage("a")
	s.Close()
	b, err := OpenPebble(dir)
	if err != nil {
		t.Fatal(err)
	}
	s = Open(b, nil)
	defer s.Close()
	gotBytes, gotKeys, _ := s.Usage("a")
	if gotBytes != wantBytes || gotKeys != wantKeys || gotKeys != 1 {
		t.Fatalf("usage after reopen %d/%d, want %d/%d", gotBytes, gotKeys, wantBytes, wantKeys)
	}
}

func TestBackupIsAConsistentCopy(t *testing.T) {
	s, _ := openTest(t)
	s.KVPut("a", "p", []byte("k"), []byte("before"), 0, Quota{})
	dir := t.TempDir() + "/backup"
	if err := s.Backup(dir); err != nil {
		t.Fatal(err)
	}
	s.KVPut("a", "p", []byte("k"), []byte("after"), 0, Quota{})
	if err := s.Backup(dir); err == nil {
		t.Fatal("backup over an existing directory succeeded")
	}
	restored, err := OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer restored.Close()
	if v, err := restored.KVGet("a", "p", []byte("k")); err != nil || string(v) != "before" {
		t.Fatalf("restored value %q, %v", v, err)
	}
	if _, keys, _ := restored.Usage("a"); keys != 1 {
		t.Fatalf("restored usage: %d keys", keys)
	}
}
