package server

import (
	"encoding/json"
	"errors"
	"strconv"

	"github.com/valyala/fasthttp"

	"github.com/plinth-dev/plinth/runtime"
)

// APIError is an error answered to a client as OpenAI-shaped JSON:
//
//	{"error": {"message": "...", "type": "...", "param": null, "code": "..."}}
//
// Messages say what a user needs to fix the problem (which plugin, which limit, which field) and never
// contain a secret.
type APIError struct {
	Status  int
	Type    string
	Code    string
	Message string
	Param   string
	// RetryAfter, when positive, is sent as the Retry-After header (seconds, rounded up).
	RetryAfterMs int64
}

func (e *APIError) Error() string { return e.Message }

// Error types, as OpenAI names them where it has a name.
const (
	typeInvalidRequest = "invalid_request_error"
	typeAuthentication = "authentication_error"
	typePermission     = "permission_error"
	typeNotFound       = "not_found_error"
	typeRateLimit      = "rate_limit_error"
	typeServer         = "server_error"
	typePlugin         = "plugin_error"
	typeUnavailable    = "service_unavailable"
)

func errInvalid(code, msg string) *APIError {
	return &APIError{Status: fasthttp.StatusBadRequest, Type: typeInvalidRequest, Code: code, Message: msg}
}

func errNotFound(msg string) *APIError {
	return &APIError{Status: fasthttp.StatusNotFound, Type: typeNotFound, Code: "not_found", Message: msg}
}

func errInternal(msg string) *APIError {
	return &APIError{Status: fasthttp.StatusInternalServerError, Type: typeServer, Code: "internal_error", Message: msg}
}

type errorBody struct {
	Error errorFields `json:"error"`
}

type errorFields struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    string  `json:"code"`
}

// writeError answers with e as JSON, replacing whatever body was set.
func writeError(ctx *fasthttp.RequestCtx, e *APIError) {
	body := errorBody{Error: errorFields{Message: e.Message, Type: e.Type, Code: e.Code}}
	if e.Param != "" {
		body.Error.Param = &e.Param
	}
	b, _ := json.Marshal(body)
	ctx.Response.ResetBody()
	ctx.SetStatusCode(e.Status)
	ctx.SetContentType("application/json")
	if e.RetryAfterMs > 0 {
		ctx.Response.Header.Set("Retry-After", strconv.FormatInt((e.RetryAfterMs+999)/1000, 10))
	}
	ctx.SetBody(b)
}

// pluginError maps a failed plugin call to the client's error: it names the plugin and the hook and
// says what happened, and never includes request data.
func pluginError(err error) *APIError {
	var ce *runtime.CallError
	if !errors.As(err, &ce) {
		return &APIError{Status: fasthttp.StatusInternalServerError, Type: typePlugin, Code: "plugin_error", Message: err.Error()}
	}
	e := &APIError{Type: typePlugin, Message: ce.Error()}
	switch ce.Kind {
	case runtime.KindTimeout:
		e.Status, e.Code = fasthttp.StatusGatewayTimeout, "plugin_timeout"
	case runtime.KindBudget:
		e.Status, e.Code = fasthttp.StatusInternalServerError, "plugin_cpu_budget_exceeded"
	case runtime.KindOverload:
		e.Status, e.Code, e.RetryAfterMs = fasthttp.StatusServiceUnavailable, "plugin_overloaded", 1000
	case runtime.KindInit:
		e.Status, e.Code = fasthttp.StatusInternalServerError, "plugin_init_failed"
	case runtime.KindInvalid:
		e.Status, e.Code = fasthttp.StatusInternalServerError, "plugin_abi_violation"
	default:
		e.Status, e.Code = fasthttp.StatusInternalServerError, "plugin_trap"
	}
	return e
}

// handlerError reports an error a plugin's handler returned (or a panic the SDK recovered).
func handlerError(plugin, hook, text string) *APIError {
	return &APIError{Status: fasthttp.StatusInternalServerError, Type: typePlugin, Code: "plugin_handler_error",
		Message: "plugin " + plugin + " " + hook + " hook returned an error: " + text}
}
