package server

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/plinth-dev/plinth/abi"
	"github.com/plinth-dev/plinth/host/llm"
	"github.com/plinth-dev/plinth/host/store"
	"github.com/plinth-dev/plinth/host/tenant"
	"github.com/plinth-dev/plinth/runtime"
)

// The admin API (/admin/v1): the operator key manages tenants, keys and limits; a tenant-admin key
// manages its own tenant's plugins. Every change is written to the store, recorded in the audit log and
// then applied with Apply, which swaps the server's state atomically: requests in flight finish on the
// old plugin versions and new requests get the new ones.

// adminRoute is one admin endpoint.
type adminRoute struct {
	method string
	segs   []string
	// operator: only the operator key may call it; otherwise a tenant-admin key of the {tenant} in the
	// path may too.
	operator bool
	serve    func(ac *adminCtx)
}

// adminCtx is one admin request.
type adminCtx struct {
	s        *Server
	ctx      *fasthttp.RequestCtx
	operator bool
	key      *tenant.Key // the tenant-admin key, when not the operator
	params   []abi.Pair
}

func (ac *adminCtx) param(name string) string {
	v, _ := abi.Lookup(ac.params, name)
	return v
}

// actor names the caller in the audit log.
func (ac *adminCtx) actor() string {
	if ac.operator {
		return "operator"
	}
	return "key:" + ac.key.ID
}

func (s *Server) adminRoutes() []adminRoute {
	r := func(method, pattern string, operator bool, serve func(*adminCtx)) adminRoute {
		return adminRoute{method: method, segs: strings.Split(strings.Trim(pattern, "/"), "/"), operator: operator, serve: serve}
	}
	return []adminRoute{
		r("GET", "/admin/v1/whoami", false, s.adminWhoami),
		r("GET", "/admin/v1/tenants", true, s.adminListTenants),
		r("POST", "/admin/v1/tenants", true, s.adminCreateTenant),
		r("GET", "/admin/v1/tenants/{tenant}", false, s.adminGetTenant),
		r("PATCH", "/admin/v1/tenants/{tenant}", true, s.adminUpdateTenant),
		r("PUT", "/admin/v1/tenants/{tenant}/limits", true, s.adminSetLimits),
		r("GET", "/admin/v1/tenants/{tenant}/keys", false, s.adminListKeys),
		r("POST", "/admin/v1/tenants/{tenant}/keys", false, s.adminCreateKey),
		r("DELETE", "/admin/v1/tenants/{tenant}/keys/{key}", false, s.adminRevokeKey),
		r("GET", "/admin/v1/tenants/{tenant}/plugins", false, s.adminListPlugins),
		r("GET", "/admin/v1/tenants/{tenant}/plugins/{plugin}", false, s.adminGetPlugin),
		r("DELETE", "/admin/v1/tenants/{tenant}/plugins/{plugin}", false, s.adminDeletePlugin),
		r("GET", "/admin/v1/tenants/{tenant}/plugins/{plugin}/versions", false, s.adminListVersions),
		r("PUT", "/admin/v1/tenants/{tenant}/plugins/{plugin}/versions", false, s.adminUploadVersion),
		r("PUT", "/admin/v1/tenants/{tenant}/plugins/{plugin}/config", false, s.adminSetConfig),
		r("POST", "/admin/v1/tenants/{tenant}/plugins/{plugin}/activate", false, s.adminActivate),
		r("POST", "/admin/v1/tenants/{tenant}/plugins/{plugin}/rollback", false, s.adminRollback),
		r("GET", "/admin/v1/tenants/{tenant}/hooks", false, s.adminListHooks),
		r("PUT", "/admin/v1/tenants/{tenant}/hooks/{hook}", false, s.adminBindHook),
		r("DELETE", "/admin/v1/tenants/{tenant}/hooks/{hook}", false, s.adminUnbindHook),
		r("GET", "/admin/v1/tenants/{tenant}/audit", false, s.adminTenantAudit),
		r("GET", "/admin/v1/audit", true, s.adminAudit),
		r("POST", "/admin/v1/backup", true, s.adminBackup),
	}
}

// serveAdmin serves /admin/v1 requests; it reports whether the path was an admin path.
func (s *Server) serveAdmin(ctx *fasthttp.RequestCtx) bool {
	path := ctx.Path()
	if !bytes.HasPrefix(path, []byte("/admin/")) {
		return false
	}
	if s.store == nil {
		writeError(ctx, &APIError{Status: fasthttp.StatusServiceUnavailable, Type: typeUnavailable, Code: "store_unavailable",
			Message: "the admin API needs the data store"})
		return true
	}
	p := bytes.Trim(path, "/")
	var route *adminRoute
	var allowed []string
	for i := range s.admin {
		r := &s.admin[i]
		if !matchSegs(r.segs, p) {
			continue
		}
		if string(ctx.Method()) != r.method {
			allowed = append(allowed, r.method)
			continue
		}
		route = r
		break
	}
	if route == nil {
		if len(allowed) > 0 {
			ctx.Response.Header.Set("Allow", strings.Join(allowed, ", "))
			writeError(ctx, &APIError{Status: fasthttp.StatusMethodNotAllowed, Type: typeInvalidRequest, Code: "method_not_allowed",
				Message: string(ctx.Method()) + " is not allowed on " + string(path)})
		} else {
			writeError(ctx, errNotFound("no admin endpoint "+string(ctx.Method())+" "+string(path)))
		}
		return true
	}
	ac := &adminCtx{s: s, ctx: ctx, params: captures(route.segs, p)}
	if e := s.adminAuth(ac, route); e != nil {
		writeError(ctx, e)
		return true
	}
	route.serve(ac)
	return true
}

// adminAuth authenticates the caller and checks it may use the route.
func (s *Server) adminAuth(ac *adminCtx, route *adminRoute) *APIError {
	secret := apiKey(ac.ctx)
	if len(secret) == 0 {
		return &APIError{Status: fasthttp.StatusUnauthorized, Type: typeAuthentication, Code: "invalid_api_key", Message: tenant.ErrNoKey.Error()}
	}
	h := tenant.HashKey(secret)
	if s.opts.OperatorKeyHash != ([32]byte{}) && subtle.ConstantTimeCompare(h[:], s.opts.OperatorKeyHash[:]) == 1 {
		ac.operator = true
		return nil
	}
	st := s.acquire()
	defer st.release()
	if st.snap == nil {
		return &APIError{Status: fasthttp.StatusUnauthorized, Type: typeAuthentication, Code: "invalid_api_key", Message: tenant.ErrBadKey.Error()}
	}
	key, _, err := st.snap.Authenticate(secret, s.now)
	if err == tenant.ErrTenantDisabled {
		return &APIError{Status: fasthttp.StatusForbidden, Type: typePermission, Code: "tenant_disabled", Message: err.Error()}
	}
	if err != nil {
		return &APIError{Status: fasthttp.StatusUnauthorized, Type: typeAuthentication, Code: "invalid_api_key", Message: err.Error()}
	}
	if !key.Admin {
		return &APIError{Status: fasthttp.StatusForbidden, Type: typePermission, Code: "not_admin",
			Message: "key " + key.ID + " is not a tenant-admin key"}
	}
	ac.key = key
	if route.operator {
		return &APIError{Status: fasthttp.StatusForbidden, Type: typePermission, Code: "operator_only",
			Message: "this endpoint needs the operator key"}
	}
	if t := ac.param("tenant"); t != "" && t != key.Tenant {
		// Another tenant's resources are not found, not forbidden: their existence is not revealed.
		return errNotFound("tenant " + t + " not found")
	}
	return nil
}

// adminMu serialises admin mutations and the state rebuilds that follow them.
var adminMu sync.Mutex

// commit records an admin action and applies the store's new state to the server.
func (ac *adminCtx) commit(action, tenantID, target string, detail any) error {
	var raw json.RawMessage
	if detail != nil {
		raw, _ = json.Marshal(detail)
	}
	if err := ac.s.store.Audit(store.AuditRecord{Actor: ac.actor(), Tenant: tenantID, Action: action, Target: target, Detail: raw}); err != nil {
		return err
	}
	return ac.s.Reload(context.Background())
}

// Reload rebuilds the server state from the store (after admin changes made here or elsewhere).
func (s *Server) Reload(ctx context.Context) error {
	snap, err := s.store.Snapshot()
	if err != nil {
		return err
	}
	return s.Apply(ctx, snap)
}

// adminError maps store and runtime errors of admin actions to API errors.
func (ac *adminCtx) fail(what string, err error) {
	var e *APIError
	var ve *runtime.ValidationError
	var ce *runtime.CallError
	switch {
	case errors.As(err, &e):
	case errors.Is(err, store.ErrNotFound):
		e = errNotFound(what + " not found")
	case errors.Is(err, store.ErrExists):
		e = &APIError{Status: fasthttp.StatusConflict, Type: typeInvalidRequest, Code: "already_exists", Message: what + " " + err.Error()}
	case errors.Is(err, store.ErrBadID):
		e = errInvalid("invalid_id", err.Error())
	case errors.Is(err, store.ErrNoActive):
		e = &APIError{Status: fasthttp.StatusConflict, Type: typeInvalidRequest, Code: "no_previous_version", Message: err.Error()}
	case store.IsQuota(err):
		e = &APIError{Status: fasthttp.StatusInsufficientStorage, Type: typeInvalidRequest, Code: "storage_quota_exceeded", Message: err.Error()}
	case errors.As(err, &ve):
		e = &APIError{Status: fasthttp.StatusUnprocessableEntity, Type: typeInvalidRequest, Code: "invalid_plugin", Message: err.Error()}
	case errors.As(err, &ce):
		e = &APIError{Status: fasthttp.StatusUnprocessableEntity, Type: typeInvalidRequest, Code: "invalid_plugin",
			Message: "the module failed to start: " + err.Error()}
	default:
		ac.s.log.Error("admin action failed", "what", what, "err", err)
		e = errInternal(what + ": " + err.Error())
	}
	writeError(ac.ctx, e)
}

func (ac *adminCtx) decode(v any) bool {
	body := ac.ctx.PostBody()
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeError(ac.ctx, errInvalid("invalid_json", "malformed JSON body: "+err.Error()))
		return false
	}
	return true
}

// --- whoami and tenants ------------------------------------------------------------------------------

func (s *Server) adminWhoami(ac *adminCtx) {
	if ac.operator {
		writeJSON(ac.ctx, 200, map[string]any{"role": "operator"})
		return
	}
	writeJSON(ac.ctx, 200, map[string]any{"role": "tenant_admin", "tenant": ac.key.Tenant, "key_id": ac.key.ID})
}

// limitsJSON is a tenant's limits in the API: durations as strings, as in the config file.
type limitsJSON struct {
	PluginMemoryBytes     int64  `json:"plugin_memory_bytes,omitempty"`
	PluginDeadline        string `json:"plugin_deadline,omitempty"`
	PluginInstances       int    `json:"plugin_instances,omitempty"`
	StorageBytes          int64  `json:"storage_bytes,omitempty"`
	StorageKeys           int64  `json:"storage_keys,omitempty"`
	RequestBytes          int64  `json:"request_bytes,omitempty"`
	CPUPerCall            int64  `json:"cpu_per_call,omitempty"`
	CPUPerMinute          int64  `json:"cpu_per_minute,omitempty"`
	ConversationRetention string `json:"conversation_retention,omitempty"`
}

func limitsOut(l tenant.Limits) limitsJSON {
	d := func(v time.Duration) string {
		if v == 0 {
			return ""
		}
		return v.String()
	}
	return limitsJSON{PluginMemoryBytes: l.PluginMemoryBytes, PluginDeadline: d(l.PluginDeadline), PluginInstances: l.PluginInstances,
		StorageBytes: l.StorageBytes, StorageKeys: l.StorageKeys, RequestBytes: l.RequestBytes, CPUPerCall: l.CPUPerCall,
		CPUPerMinute: l.CPUPerMinute, ConversationRetention: d(l.ConversationRetention)}
}

func (j limitsJSON) limits() (tenant.Limits, error) {
	var l tenant.Limits
	parse := func(name, s string, dst *time.Duration) error {
		if s == "" {
			return nil
		}
		v, err := time.ParseDuration(s)
		if err != nil || v < 0 {
			return fmt.Errorf("%s %q: want a duration like \"500ms\"", name, s)
		}
		*dst = v
		return nil
	}
	if err := parse("plugin_deadline", j.PluginDeadline, &l.PluginDeadline); err != nil {
		return l, err
	}
	if err := parse("conversation_retention", j.ConversationRetention, &l.ConversationRetention); err != nil {
		return l, err
	}
	for name, v := range map[string]int64{"plugin_memory_bytes": j.PluginMemoryBytes, "plugin_instances": int64(j.PluginInstances),
		"storage_bytes": j.StorageBytes, "storage_keys": j.StorageKeys, "request_bytes": j.RequestBytes,
		"cpu_per_call": j.CPUPerCall, "cpu_per_minute": j.CPUPerMinute} {
		if v < 0 {
			return l, fmt.Errorf("%s must not be negative", name)
		}
	}
	if j.PluginMemoryBytes != 0 && j.PluginMemoryBytes < 1<<20 {
		return l, errors.New("plugin_memory_bytes must be at least 1 MiB")
	}
	l.PluginMemoryBytes, l.PluginInstances, l.StorageBytes, l.StorageKeys = j.PluginMemoryBytes, j.PluginInstances, j.StorageBytes, j.StorageKeys
	l.RequestBytes, l.CPUPerCall, l.CPUPerMinute = j.RequestBytes, j.CPUPerCall, j.CPUPerMinute
	return l, nil
}

type tenantJSON struct {
	ID        string            `json:"id"`
	Object    string            `json:"object"`
	Name      string            `json:"name,omitempty"`
	Disabled  bool              `json:"disabled"`
	Limits    limitsJSON        `json:"limits"`
	Hooks     map[string]string `json:"hooks"`
	CreatedAt int64             `json:"created_at"`
}

func tenantOut(t *store.TenantRecord) tenantJSON {
	hooks := t.Bindings
	if hooks == nil {
		hooks = map[string]string{}
	}
	return tenantJSON{ID: t.ID, Object: "tenant", Name: t.Name, Disabled: t.Disabled, Limits: limitsOut(t.Limits),
		Hooks: hooks, CreatedAt: t.CreatedAt.Unix()}
}

func (s *Server) adminListTenants(ac *adminCtx) {
	ts, err := s.store.Tenants()
	if err != nil {
		ac.fail("tenants", err)
		return
	}
	out := make([]tenantJSON, len(ts))
	for i, t := range ts {
		out[i] = tenantOut(t)
	}
	writeJSON(ac.ctx, 200, map[string]any{"object": "list", "data": out})
}

func (s *Server) adminCreateTenant(ac *adminCtx) {
	var req struct {
		ID     string          `json:"id"`
		Name   string          `json:"name"`
		Limits limitsJSON      `json:"limits"`
		LLM    json.RawMessage `json:"llm"`
	}
	if !ac.decode(&req) {
		return
	}
	l, err := req.Limits.limits()
	if err != nil {
		writeError(ac.ctx, &APIError{Status: 400, Type: typeInvalidRequest, Code: "invalid_limits", Param: "limits", Message: err.Error()})
		return
	}
	if !checkLLMConfig(ac, req.LLM) {
		return
	}
	adminMu.Lock()
	defer adminMu.Unlock()
	rec := &store.TenantRecord{ID: req.ID, Name: req.Name, Limits: l, LLM: req.LLM, Bindings: map[string]string{}}
	if err := s.store.PutTenant(rec, true); err != nil {
		ac.fail("tenant "+req.ID, err)
		return
	}
	if err := ac.commit("tenant.create", rec.ID, rec.ID, map[string]any{"name": rec.Name}); err != nil {
		ac.fail("tenant "+req.ID, err)
		return
	}
	writeJSON(ac.ctx, 200, tenantOut(rec))
}

// checkLLMConfig refuses a tenant LLM configuration the LLM service would not accept, so a mistake is
// reported to the operator now rather than to the tenant's clients later.
func checkLLMConfig(ac *adminCtx, raw json.RawMessage) bool {
	if len(raw) == 0 || string(raw) == "null" {
		return true
	}
	if _, err := llm.ParseConfig(raw); err != nil {
		writeError(ac.ctx, &APIError{Status: 400, Type: typeInvalidRequest, Code: "invalid_llm_config", Param: "llm",
			Message: "llm: " + err.Error()})
		return false
	}
	return true
}

func (s *Server) adminGetTenant(ac *adminCtx) {
	t, err := s.store.Tenant(ac.param("tenant"))
	if err != nil {
		ac.fail("tenant "+ac.param("tenant"), err)
		return
	}
	writeJSON(ac.ctx, 200, tenantOut(t))
}

func (s *Server) adminUpdateTenant(ac *adminCtx) {
	var req struct {
		Name     *string         `json:"name"`
		Disabled *bool           `json:"disabled"`
		LLM      json.RawMessage `json:"llm"`
	}
	if !ac.decode(&req) || !checkLLMConfig(ac, req.LLM) {
		return
	}
	adminMu.Lock()
	defer adminMu.Unlock()
	t, err := s.store.Tenant(ac.param("tenant"))
	if err != nil {
		ac.fail("tenant "+ac.param("tenant"), err)
		return
	}
	if req.Name != nil {
		t.Name = *req.Name
	}
	if req.Disabled != nil {
		t.Disabled = *req.Disabled
	}
	if req.LLM != nil {
		t.LLM = req.LLM
	}
	if err := s.store.PutTenant(t, false); err != nil {
		ac.fail("tenant", err)
		return
	}
	if err := ac.commit("tenant.update", t.ID, t.ID, map[string]any{"disabled": t.Disabled, "name": t.Name}); err != nil {
		ac.fail("tenant", err)
		return
	}
	writeJSON(ac.ctx, 200, tenantOut(t))
}

func (s *Server) adminSetLimits(ac *adminCtx) {
	var req limitsJSON
	if !ac.decode(&req) {
		return
	}
	l, err := req.limits()
	if err != nil {
		writeError(ac.ctx, &APIError{Status: 400, Type: typeInvalidRequest, Code: "invalid_limits", Message: err.Error()})
		return
	}
	adminMu.Lock()
	defer adminMu.Unlock()
	t, err := s.store.Tenant(ac.param("tenant"))
	if err != nil {
		ac.fail("tenant "+ac.param("tenant"), err)
		return
	}
	t.Limits = l
	if err := s.store.PutTenant(t, false); err != nil {
		ac.fail("tenant", err)
		return
	}
	if err := ac.commit("tenant.limits", t.ID, t.ID, req); err != nil {
		ac.fail("tenant", err)
		return
	}
	writeJSON(ac.ctx, 200, tenantOut(t))
}

// --- keys --------------------------------------------------------------------------------------------

type keyJSON struct {
	ID        string `json:"id"`
	Object    string `json:"object"`
	Tenant    string `json:"tenant"`
	Label     string `json:"label,omitempty"`
	Admin     bool   `json:"admin"`
	ExpiresAt *int64 `json:"expires_at"`
	CreatedAt int64  `json:"created_at"`
	// Key is the secret, returned once at creation and never stored.
	Key string `json:"key,omitempty"`
}

func keyOut(k *store.KeyRecord) keyJSON {
	j := keyJSON{ID: k.ID, Object: "api_key", Tenant: k.Tenant, Label: k.Label, Admin: k.Admin, CreatedAt: k.CreatedAt.Unix()}
	if !k.Expires.IsZero() {
		e := k.Expires.Unix()
		j.ExpiresAt = &e
	}
	return j
}

func (s *Server) adminListKeys(ac *adminCtx) {
	if _, err := s.store.Tenant(ac.param("tenant")); err != nil {
		ac.fail("tenant "+ac.param("tenant"), err)
		return
	}
	ks, err := s.store.Keys(ac.param("tenant"))
	if err != nil {
		ac.fail("keys", err)
		return
	}
	out := make([]keyJSON, len(ks))
	for i, k := range ks {
		out[i] = keyOut(k)
	}
	writeJSON(ac.ctx, 200, map[string]any{"object": "list", "data": out})
}

func (s *Server) adminCreateKey(ac *adminCtx) {
	var req struct {
		ID        string `json:"id"`
		Label     string `json:"label"`
		Admin     bool   `json:"admin"`
		ExpiresAt int64  `json:"expires_at"` // Unix seconds; 0 never
		ExpiresIn string `json:"expires_in"` // or a duration from now, e.g. "720h"
	}
	if !ac.decode(&req) {
		return
	}
	if req.Admin && !ac.operator {
		writeError(ac.ctx, &APIError{Status: fasthttp.StatusForbidden, Type: typePermission, Code: "operator_only",
			Message: "only the operator issues tenant-admin keys"})
		return
	}
	tenantID := ac.param("tenant")
	if _, err := s.store.Tenant(tenantID); err != nil {
		ac.fail("tenant "+tenantID, err)
		return
	}
	if req.ID == "" {
		req.ID = "key-" + strconv.FormatInt(time.Now().UnixNano()%1e12, 36)
	}
	secret := tenant.NewSecret()
	h := tenant.HashKey([]byte(secret))
	rec := &store.KeyRecord{ID: req.ID, Tenant: tenantID, Label: req.Label, Hash: hex.EncodeToString(h[:]), Admin: req.Admin}
	switch {
	case req.ExpiresAt > 0:
		rec.Expires = time.Unix(req.ExpiresAt, 0).UTC()
	case req.ExpiresIn != "":
		d, err := time.ParseDuration(req.ExpiresIn)
		if err != nil || d <= 0 {
			writeError(ac.ctx, &APIError{Status: 400, Type: typeInvalidRequest, Code: "invalid_expiry", Param: "expires_in",
				Message: "expires_in must be a positive duration like \"720h\""})
			return
		}
		rec.Expires = s.now().Add(d).UTC()
	}
	adminMu.Lock()
	defer adminMu.Unlock()
	if _, err := s.store.Key(tenantID, req.ID); err == nil {
		ac.fail("key "+req.ID, fmt.Errorf("%w (revoke it first to replace it)", store.ErrExists))
		return
	}
	if err := s.store.PutKey(rec); err != nil {
		ac.fail("key "+req.ID, err)
		return
	}
	if err := ac.commit("key.create", tenantID, req.ID, map[string]any{"label": req.Label, "admin": req.Admin}); err != nil {
		ac.fail("key", err)
		return
	}
	out := keyOut(rec)
	out.Key = secret
	writeJSON(ac.ctx, 200, out)
}

func (s *Server) adminRevokeKey(ac *adminCtx) {
	tenantID, id := ac.param("tenant"), ac.param("key")
	adminMu.Lock()
	defer adminMu.Unlock()
	k, err := s.store.Key(tenantID, id)
	if err != nil {
		ac.fail("key "+id, err)
		return
	}
	if k.Admin && !ac.operator {
		writeError(ac.ctx, &APIError{Status: fasthttp.StatusForbidden, Type: typePermission, Code: "operator_only",
			Message: "only the operator revokes tenant-admin keys"})
		return
	}
	if err := s.store.DeleteKey(tenantID, id); err != nil {
		ac.fail("key "+id, err)
		return
	}
	if err := ac.commit("key.revoke", tenantID, id, nil); err != nil {
		ac.fail("key", err)
		return
	}
	writeJSON(ac.ctx, 200, map[string]any{"id": id, "object": "api_key.deleted", "deleted": true})
}

// --- plugins -----------------------------------------------------------------------------------------

type versionJSON struct {
	Version   int      `json:"version"`
	SHA256    string   `json:"sha256"`
	Size      int      `json:"size"`
	Hooks     []string `json:"hooks"`
	CreatedAt int64    `json:"created_at"`
}

type pluginJSON struct {
	Name     string          `json:"name"`
	Object   string          `json:"object"`
	Active   int             `json:"active_version"`
	Latest   int             `json:"latest_version"`
	Rollback *int            `json:"rollback_version"`
	Config   json.RawMessage `json:"config"`
	Hooks    []string        `json:"bound_hooks"`
	Source   string          `json:"source,omitempty"`
	Versions []versionJSON   `json:"versions,omitempty"`
}

func hookNames(set abi.HookSet) []string {
	out := []string{}
	for _, h := range abi.Hooks {
		if set.Has(h) {
			out = append(out, h.String())
		}
	}
	return out
}

func versionOut(v *store.VersionRecord) versionJSON {
	return versionJSON{Version: v.Version, SHA256: v.Hash, Size: v.Size, Hooks: hookNames(v.Hooks), CreatedAt: v.CreatedAt.Unix()}
}

func (s *Server) pluginOut(t *store.TenantRecord, p *store.PluginRecord) pluginJSON {
	j := pluginJSON{Name: p.Name, Object: "plugin", Active: p.Active, Latest: p.Latest, Config: p.Config, Source: p.Source, Hooks: []string{}}
	if len(p.Prior) > 0 {
		j.Rollback = &p.Prior[len(p.Prior)-1]
	}
	if j.Config == nil {
		j.Config = json.RawMessage("null")
	}
	for h, name := range t.Bindings {
		if name == p.Name {
			j.Hooks = append(j.Hooks, h)
		}
	}
	sort.Strings(j.Hooks)
	return j
}

func (s *Server) adminListPlugins(ac *adminCtx) {
	t, err := s.store.Tenant(ac.param("tenant"))
	if err != nil {
		ac.fail("tenant", err)
		return
	}
	ps, err := s.store.Plugins(t.ID)
	if err != nil {
		ac.fail("plugins", err)
		return
	}
	out := make([]pluginJSON, len(ps))
	for i, p := range ps {
		out[i] = s.pluginOut(t, p)
	}
	writeJSON(ac.ctx, 200, map[string]any{"object": "list", "data": out})
}

func (s *Server) adminGetPlugin(ac *adminCtx) {
	t, p, ok := ac.plugin()
	if !ok {
		return
	}
	j := s.pluginOut(t, p)
	vs, err := s.store.Versions(t.ID, p.Name)
	if err != nil {
		ac.fail("versions", err)
		return
	}
	for _, v := range vs {
		j.Versions = append(j.Versions, versionOut(v))
	}
	writeJSON(ac.ctx, 200, j)
}

// plugin loads the {tenant} and {plugin} of the path, answering 404 when either is missing.
func (ac *adminCtx) plugin() (*store.TenantRecord, *store.PluginRecord, bool) {
	t, err := ac.s.store.Tenant(ac.param("tenant"))
	if err != nil {
		ac.fail("tenant "+ac.param("tenant"), err)
		return nil, nil, false
	}
	p, err := ac.s.store.Plugin(t.ID, ac.param("plugin"))
	if err != nil {
		ac.fail("plugin "+ac.param("plugin"), err)
		return nil, nil, false
	}
	return t, p, true
}

func (s *Server) adminListVersions(ac *adminCtx) {
	t, p, ok := ac.plugin()
	if !ok {
		return
	}
	vs, err := s.store.Versions(t.ID, p.Name)
	if err != nil {
		ac.fail("versions", err)
		return
	}
	out := make([]versionJSON, len(vs))
	for i, v := range vs {
		out[i] = versionOut(v)
	}
	writeJSON(ac.ctx, 200, map[string]any{"object": "list", "data": out})
}

// adminUploadVersion stores a new version of a plugin: the body is the .wasm module. It is validated,
// precompiled and started once (its initialisation and ABI checks must pass) before it is stored, so a
// broken or hostile module is refused with the reason. ?activate=true makes it the active version.
func (s *Server) adminUploadVersion(ac *adminCtx) {
	tenantID, name := ac.param("tenant"), ac.param("plugin")
	t, err := s.store.Tenant(tenantID)
	if err != nil {
		ac.fail("tenant "+tenantID, err)
		return
	}
	if !tenant.ValidID(name) {
		writeError(ac.ctx, errInvalid("invalid_id", "plugin name "+strconv.Quote(name)+": use 1-63 of a-z, 0-9, _ and -"))
		return
	}
	wasm := ac.ctx.PostBody()
	if int64(len(wasm)) > s.opts.MaxPluginBytes {
		writeError(ac.ctx, &APIError{Status: fasthttp.StatusRequestEntityTooLarge, Type: typeInvalidRequest, Code: "plugin_too_large",
			Message: fmt.Sprintf("the module is %d bytes; the limit is %d", len(wasm), s.opts.MaxPluginBytes)})
		return
	}
	if len(wasm) < 8 || !bytes.Equal(wasm[:4], []byte("\x00asm")) {
		writeError(ac.ctx, &APIError{Status: fasthttp.StatusUnprocessableEntity, Type: typeInvalidRequest, Code: "invalid_plugin",
			Message: "the body is not a WebAssembly module (send the .wasm file as the request body)"})
		return
	}
	limits := t.Limits.WithDefaults()
	hooks, err := s.checkModule(ac.ctx, wasm, limits)
	if err != nil {
		ac.fail("plugin "+name, err)
		return
	}
	activate := string(ac.ctx.QueryArgs().Peek("activate")) == "true"
	adminMu.Lock()
	defer adminMu.Unlock()
	v, err := s.store.AddVersion(tenantID, name, wasm, hooks, activate, store.Quota{Bytes: limits.StorageBytes, Keys: limits.StorageKeys})
	if err != nil {
		ac.fail("plugin "+name, err)
		return
	}
	if err := ac.commit("plugin.upload", tenantID, name, map[string]any{"version": v.Version, "sha256": v.Hash, "activate": activate}); err != nil {
		ac.fail("plugin "+name, err)
		return
	}
	writeJSON(ac.ctx, 200, map[string]any{"object": "plugin.version", "plugin": name, "active": activate, "version": versionOut(v)})
}

// checkModule compiles a module with the tenant's limits and starts one instance of it (initialisation,
// ABI version), returning the hooks it registers handlers for (the Go SDK exports every hook function,
// so exports alone do not say which hooks a plugin implements).
func (s *Server) checkModule(ctx context.Context, wasm []byte, limits tenant.Limits) (abi.HookSet, error) {
	m, err := s.engine.Compile(ctx, wasm, runtime.CompileOptions{MemoryLimit: limits.PluginMemoryBytes})
	if err != nil {
		return 0, err
	}
	defer m.Release()
	return s.engine.Probe(ctx, m, &hostCall{s: s, plugin: &pluginRT{label: "upload-check"}}, 0)
}

func (s *Server) adminSetConfig(ac *adminCtx) {
	body := ac.ctx.PostBody()
	if !json.Valid(body) {
		writeError(ac.ctx, errInvalid("invalid_json", "the plugin configuration must be JSON"))
		return
	}
	adminMu.Lock()
	defer adminMu.Unlock()
	t, _, ok := ac.plugin()
	if !ok {
		return
	}
	p, err := s.store.UpdatePlugin(t.ID, ac.param("plugin"), func(p *store.PluginRecord) error {
		p.Config = append(json.RawMessage(nil), body...)
		return nil
	})
	if err != nil {
		ac.fail("plugin", err)
		return
	}
	if err := ac.commit("plugin.config", t.ID, p.Name, nil); err != nil {
		ac.fail("plugin", err)
		return
	}
	writeJSON(ac.ctx, 200, s.pluginOut(t, p))
}

func (s *Server) adminActivate(ac *adminCtx) {
	var req struct {
		Version int `json:"version"`
	}
	if !ac.decode(&req) {
		return
	}
	ac.changeVersion("plugin.activate", func(tenantID, name string) (*store.PluginRecord, error) {
		p, err := s.store.Activate(tenantID, name, req.Version)
		if errors.Is(err, store.ErrNotFound) {
			return nil, errNotFound(fmt.Sprintf("version %d of plugin %s not found", req.Version, name))
		}
		return p, err
	})
}

func (s *Server) adminRollback(ac *adminCtx) {
	ac.changeVersion("plugin.rollback", s.store.Rollback)
}

// changeVersion applies a change of the active version of the {plugin} and answers with the plugin.
func (ac *adminCtx) changeVersion(action string, change func(tenantID, name string) (*store.PluginRecord, error)) {
	adminMu.Lock()
	defer adminMu.Unlock()
	t, _, ok := ac.plugin()
	if !ok {
		return
	}
	p, err := change(t.ID, ac.param("plugin"))
	if err != nil {
		ac.fail("plugin "+ac.param("plugin"), err)
		return
	}
	if err := ac.commit(action, t.ID, p.Name, map[string]int{"version": p.Active}); err != nil {
		ac.fail("plugin", err)
		return
	}
	writeJSON(ac.ctx, 200, ac.s.pluginOut(t, p))
}

func (s *Server) adminDeletePlugin(ac *adminCtx) {
	adminMu.Lock()
	defer adminMu.Unlock()
	t, p, ok := ac.plugin()
	if !ok {
		return
	}
	for h, name := range t.Bindings {
		if name == p.Name {
			writeError(ac.ctx, &APIError{Status: fasthttp.StatusConflict, Type: typeInvalidRequest, Code: "plugin_bound",
				Message: "plugin " + p.Name + " is bound to the " + h + " hook; unbind it first"})
			return
		}
	}
	if err := s.store.DeletePlugin(t.ID, p.Name); err != nil {
		ac.fail("plugin", err)
		return
	}
	if err := ac.commit("plugin.delete", t.ID, p.Name, nil); err != nil {
		ac.fail("plugin", err)
		return
	}
	writeJSON(ac.ctx, 200, map[string]any{"name": p.Name, "object": "plugin.deleted", "deleted": true})
}

// --- hooks -------------------------------------------------------------------------------------------

func (s *Server) adminListHooks(ac *adminCtx) {
	t, err := s.store.Tenant(ac.param("tenant"))
	if err != nil {
		ac.fail("tenant", err)
		return
	}
	hooks := map[string]any{}
	for _, h := range []abi.Hook{abi.HookRoute, abi.HookRateLimit, abi.HookPrompt} {
		if name, ok := t.Bindings[h.String()]; ok {
			hooks[h.String()] = name
		} else {
			hooks[h.String()] = nil
		}
	}
	writeJSON(ac.ctx, 200, map[string]any{"object": "hooks", "hooks": hooks})
}

func bindableHook(name string) (abi.Hook, bool) {
	h, ok := abi.ParseHook(name)
	return h, ok && h != abi.HookHandle
}

func (s *Server) adminBindHook(ac *adminCtx) {
	var req struct {
		Plugin string `json:"plugin"`
	}
	if !ac.decode(&req) {
		return
	}
	h, ok := bindableHook(ac.param("hook"))
	if !ok {
		writeError(ac.ctx, errInvalid("invalid_hook", "hook "+strconv.Quote(ac.param("hook"))+
			": bind route, ratelimit or prompt (handle needs no binding: route decisions name the plugin)"))
		return
	}
	adminMu.Lock()
	defer adminMu.Unlock()
	t, err := s.store.Tenant(ac.param("tenant"))
	if err != nil {
		ac.fail("tenant", err)
		return
	}
	p, err := s.store.Plugin(t.ID, req.Plugin)
	if err != nil {
		ac.fail("plugin "+req.Plugin, err)
		return
	}
	if p.Active == 0 {
		writeError(ac.ctx, &APIError{Status: fasthttp.StatusConflict, Type: typeInvalidRequest, Code: "no_active_version",
			Message: "plugin " + p.Name + " has no active version; activate one first"})
		return
	}
	v, err := s.store.Version(t.ID, p.Name, p.Active)
	if err != nil {
		ac.fail("version", err)
		return
	}
	if !v.Hooks.Has(h) {
		writeError(ac.ctx, &APIError{Status: fasthttp.StatusUnprocessableEntity, Type: typeInvalidRequest, Code: "hook_not_exported",
			Message: fmt.Sprintf("plugin %s v%d does not export %s", p.Name, v.Version, h.Export())})
		return
	}
	if t.Bindings == nil {
		t.Bindings = map[string]string{}
	}
	t.Bindings[h.String()] = p.Name
	if err := s.store.PutTenant(t, false); err != nil {
		ac.fail("tenant", err)
		return
	}
	if err := ac.commit("hook.bind", t.ID, h.String(), map[string]string{"plugin": p.Name}); err != nil {
		ac.fail("hook", err)
		return
	}
	writeJSON(ac.ctx, 200, map[string]any{"object": "hook", "hook": h.String(), "plugin": p.Name})
}

func (s *Server) adminUnbindHook(ac *adminCtx) {
	h, ok := bindableHook(ac.param("hook"))
	if !ok {
		writeError(ac.ctx, errInvalid("invalid_hook", "hook "+strconv.Quote(ac.param("hook"))+": route, ratelimit or prompt"))
		return
	}
	adminMu.Lock()
	defer adminMu.Unlock()
	t, err := s.store.Tenant(ac.param("tenant"))
	if err != nil {
		ac.fail("tenant", err)
		return
	}
	delete(t.Bindings, h.String())
	if err := s.store.PutTenant(t, false); err != nil {
		ac.fail("tenant", err)
		return
	}
	if err := ac.commit("hook.unbind", t.ID, h.String(), nil); err != nil {
		ac.fail("hook", err)
		return
	}
	writeJSON(ac.ctx, 200, map[string]any{"object": "hook", "hook": h.String(), "plugin": nil})
}

// --- audit -------------------------------------------------------------------------------------------

func (s *Server) auditPage(ac *adminCtx, tenantID string) {
	limit := 100
	if v := ac.ctx.QueryArgs().Peek("limit"); len(v) > 0 {
		n, err := strconv.Atoi(string(v))
		if err != nil || n < 1 || n > 1000 {
			writeError(ac.ctx, &APIError{Status: 400, Type: typeInvalidRequest, Code: "invalid_limit", Param: "limit",
				Message: "limit must be an integer from 1 to 1000"})
			return
		}
		limit = n
	}
	badBefore := &APIError{Status: 400, Type: typeInvalidRequest, Code: "invalid_before", Param: "before",
		Message: "before must be a record id (last_id of the previous page) or an RFC 3339 time"}
	var before store.AuditCursor
	if v := string(ac.ctx.QueryArgs().Peek("before")); strings.HasPrefix(v, "aud_") {
		before.ID = v
	} else if v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			writeError(ac.ctx, badBefore)
			return
		}
		before.Time = t
	}
	recs, more, err := s.store.AuditLog(tenantID, before, limit)
	if errors.Is(err, store.ErrBadAuditID) {
		writeError(ac.ctx, badBefore)
		return
	}
	if err != nil {
		ac.fail("audit log", err)
		return
	}
	page := map[string]any{"object": "list", "data": recs, "has_more": more, "first_id": nil, "last_id": nil}
	if len(recs) > 0 {
		page["first_id"], page["last_id"] = recs[0].ID, recs[len(recs)-1].ID
	} else {
		page["data"] = []store.AuditRecord{}
	}
	writeJSON(ac.ctx, 200, page)
}

func (s *Server) adminTenantAudit(ac *adminCtx) {
	if _, err := s.store.Tenant(ac.param("tenant")); err != nil {
		ac.fail("tenant "+ac.param("tenant"), err)
		return
	}
	s.auditPage(ac, ac.param("tenant"))
}

func (s *Server) adminAudit(ac *adminCtx) { s.auditPage(ac, "") }

// adminBackup writes an online backup of the store to a directory on the server's filesystem.
func (s *Server) adminBackup(ac *adminCtx) {
	var req struct {
		Path string `json:"path"`
	}
	if !ac.decode(&req) {
		return
	}
	if req.Path == "" || !filepath.IsAbs(req.Path) {
		writeError(ac.ctx, &APIError{Status: 400, Type: typeInvalidRequest, Code: "invalid_path", Param: "path",
			Message: "path must be an absolute directory path on the server that does not exist yet"})
		return
	}
	if _, err := os.Stat(req.Path); err == nil {
		writeError(ac.ctx, &APIError{Status: fasthttp.StatusConflict, Type: typeInvalidRequest, Code: "already_exists",
			Message: req.Path + " already exists"})
		return
	}
	start := time.Now()
	if err := s.store.Backup(req.Path); err != nil {
		ac.fail("backup", err)
		return
	}
	s.store.Audit(store.AuditRecord{Actor: ac.actor(), Action: "store.backup", Target: req.Path})
	writeJSON(ac.ctx, 200, map[string]any{"object": "backup", "path": req.Path, "duration_ms": time.Since(start).Milliseconds()})
}
