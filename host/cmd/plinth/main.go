// Command plinth is the Plinth server and its command-line client. See `plinth help`.
package main

import (
	"os"

	"github.com/plinth-dev/plinth/host/cli"
)

func main() { os.Exit(cli.Main(os.Args[1:])) }
