// Package cli is the `plinth` command: the server (serve) and the client commands that manage tenants,
// keys and plugins. main only calls Main.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
)

// command is a subcommand: a name, a one-line summary and its function.
type command struct {
	name    string
	summary string
	run     func(env *Env, args []string) error
}

// Env is what a command may touch: its streams and environment, so tests run commands in-process.
type Env struct {
	Stdout, Stderr io.Writer
	Getenv         func(string) string
	// Context is cancelled on SIGINT/SIGTERM.
	Context context.Context
}

var commands = map[string]command{}

func register(c command) { commands[c.name] = c }

func init() {
	register(command{"serve", "run the server (the default command)", runServe})
	register(command{"version", "print the version", func(env *Env, _ []string) error {
		fmt.Fprintln(env.Stdout, "plinth", Version)
		return nil
	}})
}

// Version is the binary's version, set at link time (-ldflags "-X .../cli.Version=v1.2.3").
var Version = "dev"

// errUsage marks errors that should be followed by the command's usage.
var errUsage = errors.New("usage")

// Main runs the command line and returns the exit code.
func Main(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	env := &Env{Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv, Context: ctx}
	return Run(env, args)
}

// Run runs one command line with env.
func Run(env *Env, args []string) int {
	name := "serve"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		name, args = args[0], args[1:]
	}
	if name == "help" || name == "-h" || name == "--help" {
		usage(env.Stdout)
		return 0
	}
	c, ok := commands[name]
	if !ok {
		fmt.Fprintf(env.Stderr, "plinth: unknown command %q\n\n", name)
		usage(env.Stderr)
		return 2
	}
	if err := c.run(env, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(env.Stderr, "plinth %s: %v\n", name, err)
		return 1
	}
	return 0
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "Plinth: a multi-tenant API host with WebAssembly plugins.")
	fmt.Fprintln(w, "\nUsage: plinth <command> [flags]\n\nCommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-10s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w, "\nRun 'plinth <command> -h' for a command's flags.")
}
