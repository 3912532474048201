package cli

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// Client commands for the admin API (/admin/v1): tenants, keys, audit. See plugin.go for plugins.

func init() {
	register(command{"tenants", "manage tenants (operator key): list, create, get, disable, enable, limits", runTenants})
	register(command{"keys", "manage API keys: list, create, revoke; hash a secret for the config file", runKeys})
	register(command{"whoami", "show which tenant and role the admin key has", runWhoami})
	register(command{"audit", "show the audit log of admin actions", runAudit})
	register(command{"backup", "write an online backup of the store to a directory on the server (operator key)", runBackup})
}

// adminClient calls the admin API with an operator or tenant-admin key.
type adminClient struct {
	*client
	out  io.Writer
	json bool // print the server's JSON answers instead of tables
}

// adminFlags adds the flags every admin command takes.
func adminFlags(fs *flag.FlagSet, env *Env) func() *adminClient {
	url := fs.String("url", envOr(env, "PLINTH_URL", "http://127.0.0.1:8080"), "server base URL (env PLINTH_URL)")
	key := fs.String("key", envOr(env, "PLINTH_ADMIN_KEY", env.Getenv("PLINTH_OPERATOR_KEY")),
		"operator or tenant-admin key (env PLINTH_ADMIN_KEY, else PLINTH_OPERATOR_KEY)")
	asJSON := fs.Bool("json", false, "print the server's JSON answers")
	return func() *adminClient {
		c := &adminClient{client: &client{base: strings.TrimRight(*url, "/"), prefix: "/admin/v1", key: *key,
			noKey: "no admin key: pass -key or set PLINTH_ADMIN_KEY (a tenant-admin key) or PLINTH_OPERATOR_KEY",
			http:  &http.Client{Timeout: 5 * time.Minute}}, out: env.Stdout, json: *asJSON}
		if c.json {
			c.dump = env.Stdout
		}
		return c
	}
}

// tenantOf returns the -tenant flag, or the tenant of a tenant-admin key.
func (c *adminClient) tenantOf(flagValue string) (string, error) {
	if flagValue != "" {
		return flagValue, nil
	}
	var who struct{ Role, Tenant string }
	if err := c.send("GET", "/whoami", "", nil, &who); err != nil {
		return "", err
	}
	if who.Tenant == "" {
		return "", errors.New("the operator key belongs to no tenant: pass -tenant")
	}
	return who.Tenant, nil
}

// table prints rows aligned in columns, unless the client prints JSON.
func (c *adminClient) table(header string, rows [][]string) {
	if c.json {
		return
	}
	w := tabwriter.NewWriter(c.out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(w, header)
	for _, r := range rows {
		fmt.Fprintln(w, strings.Join(r, "\t"))
	}
	w.Flush()
}

// subcommand splits "NAME args..." and checks there is one.
func subcommand(args []string, usage string) (string, []string, error) {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return "", nil, fmt.Errorf("missing subcommand; usage: %s", usage)
	}
	return args[0], args[1:], nil
}

func runWhoami(env *Env, args []string) error {
	fs := flag.NewFlagSet("plinth whoami", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	client := adminFlags(fs, env)
	if err := fs.Parse(args); err != nil {
		return err
	}
	c := client()
	var who struct {
		Role   string
		Tenant string
		KeyID  string `json:"key_id"`
	}
	if err := c.send("GET", "/whoami", "", nil, &who); err != nil {
		return err
	}
	if !c.json {
		if who.Tenant == "" {
			fmt.Fprintln(c.out, "operator")
		} else {
			fmt.Fprintf(c.out, "tenant-admin of %s (key %s)\n", who.Tenant, who.KeyID)
		}
	}
	return nil
}

type tenantInfo struct {
	ID       string
	Name     string
	Disabled bool
	Limits   map[string]any
	Hooks    map[string]string
}

func runTenants(env *Env, args []string) error {
	const usage = "plinth tenants list | create ID [-name NAME] | get ID | disable ID | enable ID | limits ID [-plugin-memory BYTES ...]"
	sub, rest, err := subcommand(args, usage)
	if err != nil {
		return err
	}
	fs := flag.NewFlagSet("plinth tenants "+sub, flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	client := adminFlags(fs, env)
	name := fs.String("name", "", "display name (create)")
	limits := map[string]*string{}
	for _, l := range []struct{ name, usage string }{
		{"plugin_memory_bytes", "memory per plugin instance, bytes"}, {"plugin_deadline", "per-call deadline, e.g. 500ms"},
		{"plugin_instances", "instances per plugin"}, {"storage_bytes", "storage quota, bytes"}, {"storage_keys", "storage quota, records"},
		{"request_bytes", "request body limit, bytes"}, {"cpu_per_call", "CPU budget per call, work units"},
		{"cpu_per_minute", "CPU budget per minute, work units"}, {"conversation_retention", "e.g. 720h"},
	} {
		limits[l.name] = fs.String(strings.ReplaceAll(l.name, "_", "-"), "", l.usage+" (limits)")
	}
	if err := fs.Parse(reorder(rest)); err != nil {
		return err
	}
	c := client()
	id := fs.Arg(0)
	needID := func() error {
		if id == "" {
			return fmt.Errorf("missing tenant id; usage: %s", usage)
		}
		return nil
	}
	var t tenantInfo
	switch sub {
	case "list":
		var list struct{ Data []tenantInfo }
		if err := c.call("GET", "/tenants", nil, &list); err != nil {
			return err
		}
		var rows [][]string
		for _, t := range list.Data {
			rows = append(rows, []string{t.ID, t.Name, status(t.Disabled), hooksSummary(t.Hooks)})
		}
		c.table("ID\tNAME\tSTATUS\tHOOKS", rows)
		return nil
	case "create":
		if err := needID(); err != nil {
			return err
		}
		if err := c.call("POST", "/tenants", map[string]any{"id": id, "name": *name}, &t); err != nil {
			return err
		}
	case "get":
		if err := needID(); err != nil {
			return err
		}
		if err := c.call("GET", "/tenants/"+id, nil, &t); err != nil {
			return err
		}
	case "disable", "enable":
		if err := needID(); err != nil {
			return err
		}
		if err := c.call("PATCH", "/tenants/"+id, map[string]bool{"disabled": sub == "disable"}, &t); err != nil {
			return err
		}
	case "limits":
		if err := needID(); err != nil {
			return err
		}
		var cur tenantInfo
		if err := c.call("GET", "/tenants/"+id, nil, &cur); err != nil {
			return err
		}
		body := cur.Limits
		if body == nil {
			body = map[string]any{}
		}
		for k, v := range limits {
			if *v == "" {
				continue
			}
			var n json.Number
			if json.Unmarshal([]byte(*v), &n) == nil {
				body[k] = n
			} else {
				body[k] = *v
			}
		}
		if err := c.call("PUT", "/tenants/"+id+"/limits", body, &t); err != nil {
			return err
		}
	default:
		return fmt.Errorf("unknown subcommand %q; usage: %s", sub, usage)
	}
	if !c.json {
		fmt.Fprintf(c.out, "tenant %s (%s)\n", t.ID, status(t.Disabled))
		keys := make([]string, 0, len(t.Limits))
		for k := range t.Limits {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(c.out, "  %s: %v\n", k, t.Limits[k])
		}
		if len(t.Hooks) > 0 {
			fmt.Fprintf(c.out, "  hooks: %s\n", hooksSummary(t.Hooks))
		}
	}
	return nil
}

func status(disabled bool) string {
	if disabled {
		return "disabled"
	}
	return "active"
}

func hooksSummary(h map[string]string) string {
	var parts []string
	for k, v := range h {
		parts = append(parts, k+"="+v)
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

func runKeys(env *Env, args []string) error {
	const usage = "plinth keys list [-tenant T] | create [-tenant T] [-id ID] [-label L] [-admin] [-expires-in 720h] | revoke [-tenant T] ID | hash SECRET"
	sub, rest, err := subcommand(args, usage)
	if err != nil {
		return err
	}
	if sub == "hash" {
		if len(rest) != 1 {
			return fmt.Errorf("usage: plinth keys hash SECRET")
		}
		h := sha256.Sum256([]byte(rest[0]))
		fmt.Fprintln(env.Stdout, hex.EncodeToString(h[:]))
		return nil
	}
	fs := flag.NewFlagSet("plinth keys "+sub, flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	client := adminFlags(fs, env)
	tenantFlag := fs.String("tenant", "", "tenant (default: the admin key's tenant)")
	id := fs.String("id", "", "key id (create; default generated)")
	label := fs.String("label", "", "label, the rate-limit tier by convention (create)")
	admin := fs.Bool("admin", false, "make a tenant-admin key (create; operator only)")
	expiresIn := fs.String("expires-in", "", "expiry from now, e.g. 720h (create)")
	if err := fs.Parse(reorder(rest)); err != nil {
		return err
	}
	c := client()
	tenantID, err := c.tenantOf(*tenantFlag)
	if err != nil {
		return err
	}
	type keyInfo struct {
		ID        string
		Label     string
		Admin     bool
		ExpiresAt *int64 `json:"expires_at"`
		Key       string
	}
	switch sub {
	case "list":
		var list struct{ Data []keyInfo }
		if err := c.call("GET", "/tenants/"+tenantID+"/keys", nil, &list); err != nil {
			return err
		}
		var rows [][]string
		for _, k := range list.Data {
			exp := "never"
			if k.ExpiresAt != nil {
				exp = time.Unix(*k.ExpiresAt, 0).UTC().Format(time.RFC3339)
			}
			role := "api"
			if k.Admin {
				role = "admin"
			}
			rows = append(rows, []string{k.ID, role, k.Label, exp})
		}
		c.table("ID\tROLE\tLABEL\tEXPIRES", rows)
	case "create":
		body := map[string]any{"id": *id, "label": *label, "admin": *admin}
		if *expiresIn != "" {
			body["expires_in"] = *expiresIn
		}
		var k keyInfo
		if err := c.call("POST", "/tenants/"+tenantID+"/keys", body, &k); err != nil {
			return err
		}
		if !c.json {
			fmt.Fprintf(c.out, "created key %s for tenant %s; the secret is shown only now:\n%s\n", k.ID, tenantID, k.Key)
		}
	case "revoke":
		if fs.NArg() != 1 {
			return fmt.Errorf("usage: plinth keys revoke [-tenant T] ID")
		}
		if err := c.call("DELETE", "/tenants/"+tenantID+"/keys/"+fs.Arg(0), nil, nil); err != nil {
			return err
		}
		if !c.json {
			fmt.Fprintf(c.out, "revoked key %s of tenant %s\n", fs.Arg(0), tenantID)
		}
	default:
		return fmt.Errorf("unknown subcommand %q; usage: %s", sub, usage)
	}
	return nil
}

func runAudit(env *Env, args []string) error {
	fs := flag.NewFlagSet("plinth audit", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	client := adminFlags(fs, env)
	tenantFlag := fs.String("tenant", "", "a tenant's log (default: the admin key's tenant; the operator sees all)")
	limit := fs.Int("limit", 50, "records to show, newest first")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c := client()
	path := fmt.Sprintf("/audit?limit=%d", *limit)
	if *tenantFlag != "" {
		path = fmt.Sprintf("/tenants/%s/audit?limit=%d", *tenantFlag, *limit)
	} else if t, err := c.tenantOf(""); err == nil {
		path = fmt.Sprintf("/tenants/%s/audit?limit=%d", t, *limit)
	}
	var list struct {
		Data []struct {
			Time                          time.Time
			Actor, Tenant, Action, Target string
		}
	}
	if err := c.call("GET", path, nil, &list); err != nil {
		return err
	}
	var rows [][]string
	for _, r := range list.Data {
		rows = append(rows, []string{r.Time.Format(time.RFC3339), r.Actor, r.Tenant, r.Action, r.Target})
	}
	c.table("TIME\tACTOR\tTENANT\tACTION\tTARGET", rows)
	return nil
}

// reorder moves flags before positional arguments, so "create acme -name X" parses like
// "create -name X acme" (Go's flag package stops at the first positional argument).
func reorder(args []string) []string {
	var flags, pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if strings.HasPrefix(a, "-") && a != "-" {
			flags = append(flags, a)
			if !strings.Contains(a, "=") && i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") && !boolFlag(a) {
				flags = append(flags, args[i+1])
				i++
			}
			continue
		}
		pos = append(pos, a)
	}
	return append(flags, pos...)
}

// boolFlag lists the boolean flags of the admin commands, which take no separate value.
func boolFlag(a string) bool {
	switch strings.TrimLeft(a, "-") {
	case "admin", "json", "no-activate", "force":
		return true
	}
	return false
}

func runBackup(env *Env, args []string) error {
	fs := flag.NewFlagSet("plinth backup", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	client := adminFlags(fs, env)
	if err := fs.Parse(reorder(args)); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("usage: plinth backup /absolute/path/on/the/server (the directory must not exist)")
	}
	c := client()
	var res struct {
		Path       string
		DurationMs int64 `json:"duration_ms"`
	}
	if err := c.call("POST", "/backup", map[string]string{"path": fs.Arg(0)}, &res); err != nil {
		return err
	}
	if !c.json {
		fmt.Fprintf(c.out, "backup written to %s in %dms\n", res.Path, res.DurationMs)
	}
	return nil
}
