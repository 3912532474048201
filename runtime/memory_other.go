//go:build !(linux || darwin || freebsd)

package runtime

import "github.com/tetratelabs/wazero/experimental"

// memoryAllocator returns nil: wazero's default allocator is used where no mmap is available.
func memoryAllocator() experimental.MemoryAllocator { return nil }
