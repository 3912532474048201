package store

import (
	"encoding/json"
	"errors"
	"sync/atomic"
	"time"
)

// Audit records of admin actions. Each record is written twice in one batch: under its tenant (for the
// tenant's own view) and in the global log (for the operator):
//
//	tenant nsAudit time(8 BE ns) seq(8 BE) → AuditRecord
//	'g' 'a' time(8 BE ns) seq(8 BE)       → AuditRecord
//
// The sequence number breaks ties between records of the same nanosecond.

// AuditRecord is one admin action.
type AuditRecord struct {
	Time   time.Time       `json:"time"`
	Actor  string          `json:"actor"` // "operator" or "key:<id>"
	Tenant string          `json:"tenant,omitempty"`
	Action string          `json:"action"` // e.g. "plugin.upload", "key.revoke"
	Target string          `json:"target,omitempty"`
	Detail json.RawMessage `json:"detail,omitempty"`
}

var auditSeq atomic.Uint64

// Audit appends a record (Time is set when zero).
func (s *Store) Audit(r AuditRecord) error {
	if r.Time.IsZero() {
		r.Time = s.now().UTC()
	}
	suffix := append(be64(uint64(r.Time.UnixNano())), be64(auditSeq.Add(1))...)
	raw, err := json.Marshal(r)
	if err != nil {
		return err
	}
	var b Batch
	b.Set(globalKey('a', suffix), raw)
	if r.Tenant != "" {
		b.Set(TenantKey(r.Tenant, nsAudit, suffix), raw)
	}
	return s.b.Apply(&b)
}

// AuditLog returns up to limit records, newest first, of one tenant ("" for the global log), before
// the given time (zero: now).
func (s *Store) AuditLog(tenantID string, before time.Time, limit int) ([]AuditRecord, error) {
	var lower []byte
	if tenantID == "" {
		lower = globalKey('a', nil)
	} else {
		lower = TenantKey(tenantID, nsAudit)
	}
	upper := prefixEnd(lower)
	if !before.IsZero() {
		upper = append(append([]byte{}, lower...), be64(uint64(before.UnixNano()))...)
	}
	var out []AuditRecord
	var decodeErr error
	err := s.b.ScanReverse(lower, upper, func(_, v []byte) bool {
		var r AuditRecord
		if decodeErr = json.Unmarshal(v, &r); decodeErr != nil {
			return false
		}
		out = append(out, r)
		return len(out) < limit
	})
	if decodeErr != nil {
		return nil, errors.Join(errors.New("store: corrupt audit record"), decodeErr)
	}
	return out, err
}
