package server

import (
	"encoding/json"
	"errors"
	"strconv"
	"strings"

	"github.com/valyala/fasthttp"

	"github.com/plinth-dev/plinth/abi"
	"github.com/plinth-dev/plinth/host/store"
)

// The Conversations API (OpenAI-shaped): conversations with metadata and an append-only list of items,
// stored in the tenant's range of the store. Ids of other tenants' conversations are simply not found:
// every lookup is scoped by the authenticated tenant.

func init() {
	endpointRegistrars = append(endpointRegistrars, func(s *Server) {
		s.route("POST", "/v1/conversations", "conversations.create", s.createConversation)
		s.route("GET", "/v1/conversations/{conversation_id}", "conversations.get", s.getConversation)
		s.route("POST", "/v1/conversations/{conversation_id}", "conversations.update", s.updateConversation)
		s.route("DELETE", "/v1/conversations/{conversation_id}", "conversations.delete", s.deleteConversation)
		s.route("POST", "/v1/conversations/{conversation_id}/items", "conversations.items.create", s.createItems)
		s.route("GET", "/v1/conversations/{conversation_id}/items", "conversations.items.list", s.listItems)
		s.route("GET", "/v1/conversations/{conversation_id}/items/{item_id}", "conversations.items.get", s.getItem)
		s.route("DELETE", "/v1/conversations/{conversation_id}/items/{item_id}", "conversations.items.delete", s.deleteItem)
	})
}

// Limits of the conversations API.
const (
	maxItemsPerRequest = 100 // OpenAI's limit for initial and added items
	maxMetadataPairs   = 16  // OpenAI's metadata limits
	maxMetadataKey     = 64
	maxMetadataValue   = 512
)

type conversationJSON struct {
	ID        string            `json:"id"`
	Object    string            `json:"object"`
	CreatedAt int64             `json:"created_at"`
	Metadata  map[string]string `json:"metadata"`
}

func conversationOut(c *store.Conversation) conversationJSON {
	return conversationJSON{ID: c.ID, Object: "conversation", CreatedAt: c.CreatedAt, Metadata: c.Metadata}
}

type itemList struct {
	Object  string            `json:"object"`
	Data    []json.RawMessage `json:"data"`
	FirstID *string           `json:"first_id"`
	LastID  *string           `json:"last_id"`
	HasMore bool              `json:"has_more"`
}

func listOf(items []store.Item, more bool) itemList {
	l := itemList{Object: "list", Data: make([]json.RawMessage, len(items)), HasMore: more}
	for i, it := range items {
		l.Data[i] = it.JSON
	}
	if len(items) > 0 {
		l.FirstID, l.LastID = &items[0].ID, &items[len(items)-1].ID
	}
	return l
}

// storeError maps store errors to API errors; ok is false for unexpected ones (answered as 500).
func (s *Server) storeError(rc *reqCtx, what string, err error) *APIError {
	switch {
	case errors.Is(err, store.ErrNotFound):
		return errNotFound(what + " not found")
	case errors.Is(err, store.ErrBadItem), errors.Is(err, store.ErrBadID):
		return errInvalid("invalid_request", err.Error())
	case store.IsQuota(err):
		return &APIError{Status: fasthttp.StatusInsufficientStorage, Type: typeInvalidRequest, Code: "storage_quota_exceeded",
			Message: err.Error()}
	}
	s.log.Error("store failure", "tenant", rc.tenantID(), "what", what, "err", err, "request_id", string(rc.rid))
	return errInternal("storage failure; the request id identifies it in the server log")
}

func (rc *reqCtx) quota() store.Quota {
	return store.Quota{Bytes: rc.trt.limits.StorageBytes, Keys: rc.trt.limits.StorageKeys}
}

func (s *Server) needStore(rc *reqCtx) bool {
	if s.store == nil {
		writeError(rc.ctx, &APIError{Status: fasthttp.StatusServiceUnavailable, Type: typeUnavailable, Code: "store_unavailable",
			Message: "this server runs without a data store"})
		return false
	}
	return true
}

// decodeBody decodes a JSON request body into v, refusing unknown fields so typos are reported.
func decodeBody(rc *reqCtx, v any, allowEmpty bool) *APIError {
	body := rc.ctx.PostBody()
	if len(body) == 0 {
		if allowEmpty {
			return nil
		}
		return errInvalid("invalid_json", "the request needs a JSON body")
	}
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return errInvalid("invalid_json", "malformed JSON body: "+err.Error())
	}
	if dec.More() {
		return errInvalid("invalid_json", "malformed JSON body: more than one value")
	}
	return nil
}

func checkMetadata(m map[string]string) *APIError {
	if len(m) > maxMetadataPairs {
		return &APIError{Status: 400, Type: typeInvalidRequest, Code: "invalid_metadata", Param: "metadata",
			Message: "metadata has at most " + strconv.Itoa(maxMetadataPairs) + " pairs"}
	}
	for k, v := range m {
		if len(k) > maxMetadataKey || len(v) > maxMetadataValue {
			return &APIError{Status: 400, Type: typeInvalidRequest, Code: "invalid_metadata", Param: "metadata",
				Message: "metadata keys are at most 64 characters and values at most 512"}
		}
	}
	return nil
}

// normalizeItems validates items and brings messages to the OpenAI item shape: {"type":"message",
// "role":..., "content":[{"type":"input_text"|"output_text","text":...}], "status":"completed"}. A plain
// string content becomes one text part. Items of other types are stored as given.
func normalizeItems(raw []json.RawMessage) ([]json.RawMessage, *APIError) {
	if len(raw) > maxItemsPerRequest {
		return nil, &APIError{Status: 400, Type: typeInvalidRequest, Code: "too_many_items", Param: "items",
			Message: "at most " + strconv.Itoa(maxItemsPerRequest) + " items per request"}
	}
	out := make([]json.RawMessage, len(raw))
	for i, r := range raw {
		var m map[string]json.RawMessage
		if err := json.Unmarshal(r, &m); err != nil || m == nil {
			return nil, &APIError{Status: 400, Type: typeInvalidRequest, Code: "invalid_item", Param: "items[" + strconv.Itoa(i) + "]",
				Message: "each item must be a JSON object"}
		}
		var typ string
		json.Unmarshal(m["type"], &typ)
		if typ == "" {
			typ = "message"
		}
		if typ != "message" {
			out[i] = r
			continue
		}
		msg, ok := parseMessageItem(m)
		if !ok {
			return nil, &APIError{Status: 400, Type: typeInvalidRequest, Code: "invalid_item", Param: "items[" + strconv.Itoa(i) + "]",
				Message: "a message item needs a role (user, assistant, system or developer) and text content"}
		}
		out[i] = messageItem(msg)
	}
	return out, nil
}

// parseMessageItem reads a message item's role and text (text parts joined by newlines).
func parseMessageItem(m map[string]json.RawMessage) (abi.Message, bool) {
	var msg abi.Message
	json.Unmarshal(m["role"], &msg.Role)
	switch msg.Role {
	case "user", "assistant", "system", "developer":
	default:
		return msg, false
	}
	var text string
	if err := json.Unmarshal(m["content"], &text); err == nil {
		msg.Content = text
		return msg, true
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	if err := json.Unmarshal(m["content"], &parts); err != nil {
		return msg, false
	}
	var texts []string
	for _, p := range parts {
		switch p.Type {
		case "input_text", "output_text", "text":
			texts = append(texts, p.Text)
		}
	}
	msg.Content = strings.Join(texts, "\n")
	return msg, true
}

// messageItem is the stored item of a chat message.
func messageItem(m abi.Message) json.RawMessage {
	part := "input_text"
	if m.Role == "assistant" {
		part = "output_text"
	}
	b, _ := json.Marshal(map[string]any{
		"type": "message", "role": m.Role, "status": "completed",
		"content": []map[string]string{{"type": part, "text": m.Content}},
	})
	return b
}

// itemMessage returns the chat message of a stored item; ok is false for items that are not messages.
func itemMessage(raw json.RawMessage) (abi.Message, bool) {
	var m map[string]json.RawMessage
	if json.Unmarshal(raw, &m) != nil {
		return abi.Message{}, false
	}
	var typ string
	json.Unmarshal(m["type"], &typ)
	if typ != "message" {
		return abi.Message{}, false
	}
	return parseMessageItem(m)
}

func (s *Server) createConversation(rc *reqCtx) {
	if !s.needStore(rc) {
		return
	}
	var req struct {
		Metadata map[string]string `json:"metadata"`
		Items    []json.RawMessage `json:"items"`
	}
	if e := decodeBody(rc, &req, true); e != nil {
		writeError(rc.ctx, e)
		return
	}
	if e := checkMetadata(req.Metadata); e != nil {
		writeError(rc.ctx, e)
		return
	}
	items, e := normalizeItems(req.Items)
	if e != nil {
		writeError(rc.ctx, e)
		return
	}
	c, _, err := s.store.CreateConversation(rc.tenantID(), req.Metadata, items, rc.quota())
	if err != nil {
		writeError(rc.ctx, s.storeError(rc, "conversation", err))
		return
	}
	writeJSON(rc.ctx, fasthttp.StatusOK, conversationOut(c))
}

func (s *Server) getConversation(rc *reqCtx) {
	if !s.needStore(rc) {
		return
	}
	c, err := s.store.GetConversation(rc.tenantID(), rc.param("conversation_id"))
	if err != nil {
		writeError(rc.ctx, s.storeError(rc, "conversation", err))
		return
	}
	writeJSON(rc.ctx, fasthttp.StatusOK, conversationOut(c))
}

func (s *Server) updateConversation(rc *reqCtx) {
	if !s.needStore(rc) {
		return
	}
	var req struct {
		Metadata map[string]string `json:"metadata"`
	}
	if e := decodeBody(rc, &req, false); e != nil {
		writeError(rc.ctx, e)
		return
	}
	if req.Metadata == nil {
		writeError(rc.ctx, &APIError{Status: 400, Type: typeInvalidRequest, Code: "missing_metadata", Param: "metadata",
			Message: "metadata is required: the update replaces the conversation's metadata ({} clears it)"})
		return
	}
	if e := checkMetadata(req.Metadata); e != nil {
		writeError(rc.ctx, e)
		return
	}
	c, err := s.store.UpdateConversation(rc.tenantID(), rc.param("conversation_id"), req.Metadata, rc.quota())
	if err != nil {
		writeError(rc.ctx, s.storeError(rc, "conversation", err))
		return
	}
	writeJSON(rc.ctx, fasthttp.StatusOK, conversationOut(c))
}

func (s *Server) deleteConversation(rc *reqCtx) {
	if !s.needStore(rc) {
		return
	}
	id := rc.param("conversation_id")
	if err := s.store.DeleteConversation(rc.tenantID(), id); err != nil {
		writeError(rc.ctx, s.storeError(rc, "conversation", err))
		return
	}
	writeJSON(rc.ctx, fasthttp.StatusOK, map[string]any{"id": id, "object": "conversation.deleted", "deleted": true})
}

func (s *Server) createItems(rc *reqCtx) {
	if !s.needStore(rc) {
		return
	}
	var req struct {
		Items []json.RawMessage `json:"items"`
	}
	if e := decodeBody(rc, &req, false); e != nil {
		writeError(rc.ctx, e)
		return
	}
	if len(req.Items) == 0 {
		writeError(rc.ctx, &APIError{Status: 400, Type: typeInvalidRequest, Code: "missing_items", Param: "items",
			Message: "items must hold at least one item"})
		return
	}
	items, e := normalizeItems(req.Items)
	if e != nil {
		writeError(rc.ctx, e)
		return
	}
	out, err := s.store.AppendItems(rc.tenantID(), rc.param("conversation_id"), items, rc.quota())
	if err != nil {
		writeError(rc.ctx, s.storeError(rc, "conversation", err))
		return
	}
	writeJSON(rc.ctx, fasthttp.StatusOK, listOf(out, false))
}

func (s *Server) listItems(rc *reqCtx) {
	if !s.needStore(rc) {
		return
	}
	args := rc.ctx.QueryArgs()
	limit := 20
	if v := args.Peek("limit"); len(v) > 0 {
		n, err := strconv.Atoi(string(v))
		if err != nil || n < 1 || n > 100 {
			writeError(rc.ctx, &APIError{Status: 400, Type: typeInvalidRequest, Code: "invalid_limit", Param: "limit",
				Message: "limit must be an integer from 1 to 100"})
			return
		}
		limit = n
	}
	desc := true
	switch string(args.Peek("order")) {
	case "", "desc":
	case "asc":
		desc = false
	default:
		writeError(rc.ctx, &APIError{Status: 400, Type: typeInvalidRequest, Code: "invalid_order", Param: "order",
			Message: "order must be asc or desc"})
		return
	}
	items, more, err := s.store.ListItems(rc.tenantID(), rc.param("conversation_id"), string(args.Peek("after")), limit, desc)
	if err != nil {
		writeError(rc.ctx, s.storeError(rc, "conversation", err))
		return
	}
	writeJSON(rc.ctx, fasthttp.StatusOK, listOf(items, more))
}

func (s *Server) getItem(rc *reqCtx) {
	if !s.needStore(rc) {
		return
	}
	it, err := s.store.GetItem(rc.tenantID(), rc.param("conversation_id"), rc.param("item_id"))
	if err != nil {
		writeError(rc.ctx, s.storeError(rc, "item", err))
		return
	}
	rc.ctx.SetContentType("application/json")
	rc.ctx.SetBody(it.JSON)
}

func (s *Server) deleteItem(rc *reqCtx) {
	if !s.needStore(rc) {
		return
	}
	c, err := s.store.DeleteItem(rc.tenantID(), rc.param("conversation_id"), rc.param("item_id"))
	if err != nil {
		writeError(rc.ctx, s.storeError(rc, "item", err))
		return
	}
	writeJSON(rc.ctx, fasthttp.StatusOK, conversationOut(c))
}
