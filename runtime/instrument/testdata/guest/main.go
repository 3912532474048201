// Command guest is a Go plugin used by the instrument tests: built with
// GOOS=wasip1 GOARCH=wasm -buildmode=c-shared, it exports compute-heavy
// functions whose results and memory effects must survive instrumentation.
package main

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"hash/fnv"
	"sort"
)

func main() {}

// sink keeps endless loops observable so the compiler cannot drop them.
var sink int64

//go:wasmexport xorshift
func xorshift(n int64) int64 {
	x := uint64(88172645463325252)
	for i := int64(0); i < n; i++ {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
	}
	return int64(x)
}

//go:wasmexport sumloop
func sumloop(n int64) int64 {
	var acc int64
	for i := int64(0); i < n; i++ {
		acc += i
	}
	return acc
}

//go:wasmexport fib
func fib(n int32) int64 {
	if n < 2 {
		return int64(n)
	}
	return fib(n-1) + fib(n-2)
}

var buf []byte

//go:wasmexport memops
func memops(n int32) int64 {
	src := make([]byte, n)
	for i := range src {
		src[i] = byte(i*7 + 3)
	}
	if len(buf) < int(n) {
		buf = make([]byte, n)
	}
	copy(buf, src)
	clear(src[:n/2])
	copy(buf[n/4:], src)
	h := fnv.New64a()
	h.Write(buf[:n])
	return int64(h.Sum64())
}

func data(n int32, seed uint64) []uint64 {
	v := make([]uint64, n)
	x := seed | 1
	for i := range v {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		v[i] = x % 1000003
	}
	return v
}

//go:wasmexport sortints
func sortints(n int32, seed int64) int64 {
	v := data(n, uint64(seed))
	ints := make([]int, len(v))
	for i, x := range v {
		ints[i] = int(x)
	}
	sort.Ints(ints)
	var acc int64
	for i, x := range ints {
		acc = acc*31 + int64(x)*int64(i+1)
	}
	return acc
}

//go:wasmexport hash
func hash(n int32) int64 {
	b := make([]byte, 0, n*8)
	for _, x := range data(n, 12345) {
		b = binary.LittleEndian.AppendUint64(b, x)
	}
	s := sha256.Sum256(b)
	return int64(binary.LittleEndian.Uint64(s[:8]))
}

type record struct {
	ID    int               `json:"id"`
	Name  string            `json:"name"`
	Tags  []string          `json:"tags"`
	Score float64           `json:"score"`
	Attrs map[string]uint64 `json:"attrs"`
}

var lastJSON []byte

//go:wasmexport jsonenc
func jsonenc(n int32) int64 {
	recs := make([]record, n)
	for i, x := range data(n, 777) {
		recs[i] = record{ID: i, Name: "rec", Tags: []string{"a", "b<c>"}, Score: float64(x) / 7, Attrs: map[string]uint64{"x": x, "y": x / 3}}
	}
	out, err := json.Marshal(recs)
	if err != nil {
		return -1
	}
	lastJSON = out
	h := fnv.New64a()
	h.Write(out)
	return int64(h.Sum64())
}

// spin never returns: the host must preempt it.
//
//go:wasmexport spin
func spin() {
	x := uint64(1)
	for {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		sink = int64(x)
	}
}
