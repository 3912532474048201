// Package defaults is the embedded default setup of `plinth serve` without a config file: a demo tenant
// using the first-party plugins, which `make plugins` builds into plugins/ before the binary is built.
package defaults

import (
	"embed"
	"fmt"
	"io/fs"
	"sort"
	"strings"
)

//go:embed default.json
var defaultConfig []byte

//go:embed plugins
var pluginFS embed.FS

// Config returns the default configuration (JSON, in the config file format).
func Config() []byte { return defaultConfig }

// Plugin returns the module of a first-party plugin built into the binary.
func Plugin(name string) ([]byte, error) {
	b, err := pluginFS.ReadFile("plugins/" + name + ".wasm")
	if err != nil {
		return nil, fmt.Errorf("first-party plugin %q is not built into this binary (have: %s); run `make plugins` "+
			"before building, or use `make run`", name, strings.Join(Plugins(), ", "))
	}
	return b, nil
}

// Plugins lists the first-party plugins built into the binary.
func Plugins() []string {
	var names []string
	entries, _ := fs.ReadDir(pluginFS, "plugins")
	for _, e := range entries {
		if n, ok := strings.CutSuffix(e.Name(), ".wasm"); ok {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	return names
}
