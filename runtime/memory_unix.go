//go:build linux || darwin || freebsd

package runtime

import (
	"syscall"

	"github.com/tetratelabs/wazero/experimental"
)

// mmapAllocator backs each instance's linear memory with its own anonymous mapping of the memory's
// maximum size (reserved, not committed: pages cost nothing until the guest touches them). Growing is
// then free: the mapping never moves, where wazero's default []byte allocator copies the whole memory on
// every memory.grow, which made allocation in Go guests several times slower. The memory also lives
// outside the Go heap, so guests neither inflate the host's GC work nor its heap goal, and closing an
// instance returns its pages to the OS at once.
type mmapAllocator struct{}

func (mmapAllocator) Allocate(cap, max uint64) experimental.LinearMemory {
	if max > 0 && max <= 1<<32 {
		b, err := syscall.Mmap(-1, 0, int(max), syscall.PROT_READ|syscall.PROT_WRITE,
			syscall.MAP_PRIVATE|syscall.MAP_ANON|mapNoReserve)
		if err == nil {
			return &mmapMemory{buf: b}
		}
	}
	// wazero requires a memory: fall back to a Go slice (out of address space is the only cause).
	return &sliceMemory{max: max}
}

type mmapMemory struct {
	buf []byte // the whole reservation
}

func (m *mmapMemory) Reallocate(size uint64) []byte {
	if size > uint64(len(m.buf)) {
		return nil
	}
	return m.buf[:size]
}

func (m *mmapMemory) Free() {
	if m.buf != nil {
		syscall.Munmap(m.buf)
		m.buf = nil
	}
}

// memoryAllocator returns the allocator for instances, or nil for wazero's default.
func memoryAllocator() experimental.MemoryAllocator { return mmapAllocator{} }

// sliceMemory is a growable Go slice, the fallback when a reservation fails.
type sliceMemory struct {
	buf []byte
	max uint64
}

func (m *sliceMemory) Reallocate(size uint64) []byte {
	if size > m.max {
		return nil
	}
	if size <= uint64(cap(m.buf)) {
		m.buf = m.buf[:size]
		return m.buf
	}
	nb := make([]byte, size, max(size, 2*uint64(cap(m.buf))))
	copy(nb, m.buf)
	m.buf = nb
	return nb
}

func (m *sliceMemory) Free() { m.buf = nil }
