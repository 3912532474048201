package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// client calls a Plinth server's HTTP API with a key: the /v1 API with a tenant key (ingest, eval) or the
// admin API with an operator or tenant-admin key (prefix "/admin/v1").
type client struct {
	base   string // server base URL, without a trailing slash
	prefix string // prepended to every path
	key    string
	// noKey is the error when key is empty: it tells which flag or variable to set.
	noKey string
	http  *http.Client
	// dump, when set, receives the JSON of every successful answer (the -json flag).
	dump io.Writer
}

// apiError is an error answer of the server.
type apiError struct {
	Status  int
	Message string
	Code    string
}

func (e *apiError) Error() string {
	return fmt.Sprintf("%s (%s, HTTP %d)", e.Message, e.Code, e.Status)
}

// send makes one request; a JSON error answer becomes an *apiError with the server's message.
func (c *client) send(method, path, contentType string, body io.Reader, out any) error {
	if c.key == "" && c.noKey != "" {
		return errors.New(c.noKey)
	}
	req, err := http.NewRequest(method, strings.TrimRight(c.base, "/")+c.prefix+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.key)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	res, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the server at %s (is it running? set -url or PLINTH_URL): %w", c.base, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		return err
	}
	if res.StatusCode != http.StatusOK {
		var e struct {
			Error struct{ Message, Code string }
		}
		if json.Unmarshal(b, &e) != nil || e.Error.Message == "" {
			return fmt.Errorf("%s %s: HTTP %d: %s", method, path, res.StatusCode, strings.TrimSpace(string(b)))
		}
		return &apiError{Status: res.StatusCode, Message: e.Error.Message, Code: e.Error.Code}
	}
	if c.dump != nil {
		fmt.Fprintln(c.dump, strings.TrimSpace(string(b)))
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

// call sends body as JSON (nil: no body).
func (c *client) call(method, path string, body, out any) error {
	var rd io.Reader
	ct := ""
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd, ct = strings.NewReader(string(b)), "application/json"
	}
	return c.send(method, path, ct, rd, out)
}

// envOr returns the environment variable name, or def when it is unset.
func envOr(env *Env, name, def string) string {
	if v := env.Getenv(name); v != "" {
		return v
	}
	return def
}
