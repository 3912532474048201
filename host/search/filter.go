package search

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
)

// Attribute filters, in the JSON form of OpenAI's vector store search:
//
//	{"type": "eq", "key": "lang", "value": "en"}                        comparison: eq ne gt gte lt lte in nin
//	{"type": "and", "filters": [ ...filters ]}                          compound: and or
//
// Values are strings, numbers or booleans; in and nin take an array of them. Comparisons of a missing
// attribute, or of values of different types, are false, so ne and nin are true for them. gt, gte, lt and
// lte compare numbers numerically and strings lexicographically.

// Attributes are a document's attributes: string, float64 or bool values.
type Attributes map[string]any

// Limits of attributes (OpenAI's) and of filters.
const (
	MaxAttributes       = 16
	MaxAttributeKey     = 64
	MaxAttributeString  = 512
	maxFilterDepth      = 8
	maxFilterConditions = 64
)

// ParseAttributes reads and validates a document's attributes object ("" or null: none).
func ParseAttributes(raw json.RawMessage) (Attributes, error) {
	if len(bytes.TrimSpace(raw)) == 0 || string(bytes.TrimSpace(raw)) == "null" {
		return nil, nil
	}
	var m map[string]any
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&m); err != nil || m == nil {
		return nil, fmt.Errorf("attributes must be a JSON object of strings, numbers and booleans")
	}
	if len(m) > MaxAttributes {
		return nil, fmt.Errorf("attributes have at most %d keys, got %d", MaxAttributes, len(m))
	}
	for k, v := range m {
		if k == "" || len(k) > MaxAttributeKey {
			return nil, fmt.Errorf("attribute keys are 1 to %d characters", MaxAttributeKey)
		}
		switch v := v.(type) {
		case string:
			if len(v) > MaxAttributeString {
				return nil, fmt.Errorf("attribute %q: strings are at most %d characters", k, MaxAttributeString)
			}
		case float64, bool:
		default:
			return nil, fmt.Errorf("attribute %q: values are strings, numbers or booleans", k)
		}
	}
	return m, nil
}

// Filter is a compiled attribute filter. A nil *Filter accepts everything.
type Filter struct {
	op     string
	key    string
	value  any   // comparisons
	values []any // in, nin
	subs   []*Filter
}

type filterJSON struct {
	Type    string            `json:"type"`
	Key     string            `json:"key"`
	Value   json.RawMessage   `json:"value"`
	Filters []json.RawMessage `json:"filters"`
}

// ParseFilter compiles a filter ("" or null: none). Errors say which part is wrong.
func ParseFilter(raw []byte) (*Filter, error) {
	if len(bytes.TrimSpace(raw)) == 0 || string(bytes.TrimSpace(raw)) == "null" {
		return nil, nil
	}
	n := 0
	return parseFilter(raw, "filters", 0, &n)
}

func parseFilter(raw []byte, path string, depth int, n *int) (*Filter, error) {
	if depth > maxFilterDepth {
		return nil, fmt.Errorf("%s: filters nest at most %d deep", path, maxFilterDepth)
	}
	if *n++; *n > maxFilterConditions {
		return nil, fmt.Errorf("%s: at most %d filters in all", path, maxFilterConditions)
	}
	var fj filterJSON
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&fj); err != nil {
		return nil, fmt.Errorf("%s: want an object with type, key and value (or type and filters): %v", path, err)
	}
	f := &Filter{op: fj.Type, key: fj.Key}
	switch fj.Type {
	case "and", "or":
		if len(fj.Filters) == 0 {
			return nil, fmt.Errorf("%s: a %q filter needs a non-empty filters array", path, fj.Type)
		}
		for i, sub := range fj.Filters {
			sf, err := parseFilter(sub, fmt.Sprintf("%s.filters[%d]", path, i), depth+1, n)
			if err != nil {
				return nil, err
			}
			f.subs = append(f.subs, sf)
		}
		return f, nil
	case "eq", "ne", "gt", "gte", "lt", "lte", "in", "nin":
	case "":
		return nil, fmt.Errorf("%s: type is required (eq, ne, gt, gte, lt, lte, in, nin, and, or)", path)
	default:
		return nil, fmt.Errorf("%s: unknown type %q (want eq, ne, gt, gte, lt, lte, in, nin, and, or)", path, fj.Type)
	}
	if fj.Key == "" {
		return nil, fmt.Errorf("%s: a %q filter needs a key", path, fj.Type)
	}
	if len(fj.Value) == 0 {
		return nil, fmt.Errorf("%s: a %q filter needs a value", path, fj.Type)
	}
	if fj.Type == "in" || fj.Type == "nin" {
		var vs []json.RawMessage
		if err := json.Unmarshal(fj.Value, &vs); err != nil {
			return nil, fmt.Errorf("%s: the value of %q is an array of strings, numbers or booleans", path, fj.Type)
		}
		for _, v := range vs {
			sv, err := scalar(v)
			if err != nil {
				return nil, fmt.Errorf("%s: %v", path, err)
			}
			f.values = append(f.values, sv)
		}
		return f, nil
	}
	v, err := scalar(fj.Value)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	if _, isBool := v.(bool); isBool && fj.Type != "eq" && fj.Type != "ne" {
		return nil, fmt.Errorf("%s: %q does not compare booleans", path, fj.Type)
	}
	f.value = v
	return f, nil
}

func scalar(raw json.RawMessage) (any, error) {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return nil, fmt.Errorf("invalid value %s", raw)
	}
	switch v.(type) {
	case string, float64, bool:
		return v, nil
	}
	return nil, fmt.Errorf("values are strings, numbers or booleans, got %s", raw)
}

// Match reports whether attributes satisfy the filter.
func (f *Filter) Match(a Attributes) bool {
	if f == nil {
		return true
	}
	switch f.op {
	case "and":
		for _, s := range f.subs {
			if !s.Match(a) {
				return false
			}
		}
		return true
	case "or":
		for _, s := range f.subs {
			if s.Match(a) {
				return true
			}
		}
		return false
	}
	v, ok := a[f.key]
	switch f.op {
	case "eq":
		return ok && equal(v, f.value)
	case "ne":
		return !ok || !equal(v, f.value)
	case "in", "nin":
		in := false
		if ok {
			for _, x := range f.values {
				if equal(v, x) {
					in = true
					break
				}
			}
		}
		return in == (f.op == "in")
	}
	if !ok {
		return false
	}
	c, comparable := compare(v, f.value)
	if !comparable {
		return false
	}
	switch f.op {
	case "gt":
		return c > 0
	case "gte":
		return c >= 0
	case "lt":
		return c < 0
	default: // lte
		return c <= 0
	}
}

func equal(a, b any) bool {
	switch a := a.(type) {
	case string:
		b, ok := b.(string)
		return ok && a == b
	case float64:
		b, ok := b.(float64)
		return ok && a == b
	case bool:
		b, ok := b.(bool)
		return ok && a == b
	}
	return false
}

func compare(a, b any) (int, bool) {
	switch a := a.(type) {
	case string:
		if b, ok := b.(string); ok {
			return strings.Compare(a, b), true
		}
	case float64:
		if b, ok := b.(float64); ok {
			switch {
			case a < b:
				return -1, true
			case a > b:
				return 1, true
			}
			return 0, true
		}
	}
	return 0, false
}
