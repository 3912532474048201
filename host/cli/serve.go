package cli

import (
	"flag"
	"fmt"

	"github.com/plinth-dev/plinth/host/app"
	"github.com/plinth-dev/plinth/host/config"
)

func runServe(env *Env, args []string) error {
	fs := flag.NewFlagSet("plinth serve", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	cfg, err := config.Load(fs, args, env.Getenv)
	if err != nil {
		return err
	}
	a, err := app.New(env.Context, cfg, env.Stderr)
	if err != nil {
		return err
	}
	if _, err := a.Listen(); err != nil {
		return err
	}
	fmt.Fprint(env.Stdout, a.Banner())
	return a.Serve(env.Context)
}
