// Package instrument rewrites a WebAssembly module so that a host can preempt
// and meter a guest that would otherwise never give control back.
//
// wazero's compiled code has no Go GC safe points: a guest spinning in a loop
// holds up every stop-the-world of the whole process, and wazero's own remedy
// (WithCloseOnContextDone) costs 4–40x on tight loops. Instrument instead
// injects a countdown into the guest: every function entry and every loop
// header decrements a mutable i32 global, and when the countdown is <= 0
// (signed) the guest calls an imported host function "tick" and resets the
// countdown to Options.Interval. tick is Go code, so the goroutine reaches a
// safe point at least every Interval headers, and tick can abort the call
// (by panicking, which wazero turns into an error) when its deadline or CPU
// budget is spent.
//
// The countdown also meters work. If the host sets the exported countdown to
// Interval before a call, the call performed
//
//	ticks*Interval + (Interval - countdown after the call)
//
// header checks, where ticks is how often tick ran during the call.
//
// Inside loops that make no calls, the countdown lives in a function local
// (a register) instead of the global, and is written back to the global on
// every way out of the loop and before tick; elsewhere the checks work on
// the global directly. Either way the exported global holds the true
// countdown whenever the host runs: during tick and any other host function,
// and after the call returned (see code.go). Only a trap other than
// unreachable inside such a loop can leave up to Interval+4 checks out of
// the global, on an instance the host discards anyway.
//
// Small loops without calls are also unrolled into 4 copies of their body
// that each decrement the countdown, with only the first testing it: a tick
// can come up to 3 iterations late and the countdown can end a little
// below zero, but the work measured stays exact, because a tick adds
// Interval to the countdown instead of setting it.
package instrument

import (
	"fmt"
	"unicode/utf8"
)

// DefaultInterval is the countdown used when Options.Interval is zero. 2^14
// keeps the tick overhead in tight loops within noise while adding only tens
// of microseconds to a GC pause or an abort (see the preemption design notes).
const DefaultInterval = 1 << 14

// maxInterval bounds Options.Interval: the hoisted loop form resets the
// countdown to Interval+1 (see code.go), which must not overflow an i32.
const maxInterval = 1 << 30

// Options configures Instrument. The zero value is ready to use.
type Options struct {
	Interval      int32  // countdown between tick calls; zero means DefaultInterval; at most 1<<30
	ImportModule  string // module of the injected tick import; zero means "plinth"
	ImportName    string // name of the injected tick import; zero means "tick"
	CounterExport string // export name of the injected countdown global; zero means "plinth_countdown"
}

// Error reports why a module cannot be instrumented. Instrument never returns
// a module it could not rewrite safely; it returns an *Error instead.
type Error struct {
	Offset int    // byte offset in the input module where the problem was found
	Func   int    // function index in the input module (imports included), or -1 outside code
	Reason string // what is wrong, phrased for the plugin's author
}

// Error formats the offset, the function (if any) and the reason.
func (e *Error) Error() string {
	if e.Func >= 0 {
		return fmt.Sprintf("instrument: function %d, offset %#x: %s", e.Func, e.Offset, e.Reason)
	}
	return fmt.Sprintf("instrument: offset %#x: %s", e.Offset, e.Reason)
}

// placement selects where loop checks put their tick call. It exists so the
// tests and benchmarks can compare the forms; Instrument always uses
// placeAuto.
type placement int

const (
	// placeAuto hoists the tick call out of every loop whose block type has
	// no parameters and uses the inline form for the others.
	placeAuto placement = iota
	// placeInline puts "if call $tick ... end" inside every loop.
	placeInline
)

// counterForm selects where instrumented code keeps the countdown between
// checks. It exists so the tests and benchmarks can compare the forms;
// Instrument always uses counterAuto.
type counterForm int

const (
	// counterAuto keeps the countdown in a local inside loops without
	// calls ("regions", see code.go for the invariant) and checks the
	// global everywhere else.
	counterAuto counterForm = iota
	// counterGlobal decrements and tests the global at every check.
	counterGlobal
)

// config is the resolved form of Options plus internal knobs.
type config struct {
	interval   int32
	importMod  string
	importName string
	counterExp string
	place      placement
	counter    counterForm
	noRefresh  bool // benchmarks only: leave the tick path's locals alone (see buildRefresh)
	unroll     int  // copies of a small loop's body per check (see code.go); 1 or less: no unrolling
}

// Instrument returns a rewritten copy of the module. wasm is not modified.
//
// The copy imports ImportModule.ImportName as a function of type () -> (),
// defines a mutable i32 global initialised to Interval and exports it as
// CounterExport, and checks the countdown at every function entry and every
// loop header. Because the new import comes after the existing function
// imports, every defined function's index grows by one; calls, ref.func,
// element segments, exports, the start function and the "name" section are
// renumbered accordingly. DWARF custom sections (".debug_*") are dropped
// because their code offsets no longer hold; other sections the rewrite does
// not affect are copied byte for byte.
//
// Instrument returns an *Error for anything it cannot rewrite safely:
// malformed binaries, unknown opcodes or prefixes, threads and atomics,
// exception handling, GC types, a module that already imports
// ImportModule.ImportName or already exports CounterExport.
func Instrument(wasm []byte, opts Options) ([]byte, error) {
	cfg, err := resolve(opts)
	if err != nil {
		return nil, err
	}
	return instrument(wasm, cfg)
}

func resolve(opts Options) (config, error) {
	cfg := config{
		interval:   opts.Interval,
		importMod:  opts.ImportModule,
		importName: opts.ImportName,
		counterExp: opts.CounterExport,
	}
	if cfg.interval == 0 {
		cfg.interval = DefaultInterval
	}
	cfg.unroll = defaultUnroll
	if cfg.importMod == "" {
		cfg.importMod = "plinth"
	}
	if cfg.importName == "" {
		cfg.importName = "tick"
	}
	if cfg.counterExp == "" {
		cfg.counterExp = "plinth_countdown"
	}
	if cfg.interval < 0 || cfg.interval > maxInterval {
		return cfg, &Error{Offset: 0, Func: -1, Reason: fmt.Sprintf("Options.Interval %d is outside 1..%d", cfg.interval, maxInterval)}
	}
	for _, s := range []string{cfg.importMod, cfg.importName, cfg.counterExp} {
		if !utf8.ValidString(s) {
			return cfg, &Error{Offset: 0, Func: -1, Reason: fmt.Sprintf("Options name %q is not valid UTF-8", s)}
		}
	}
	return cfg, nil
}
