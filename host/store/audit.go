package store

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"sync/atomic"
	"time"
)

// Audit records of admin actions. Each record is written twice in one batch: under its tenant (for the
// tenant's own view) and in the global log (for the operator):
//
//	tenant nsAudit time(8 BE ns) seq(8 BE) → AuditRecord
//	'g' 'a' time(8 BE ns) seq(8 BE)       → AuditRecord
//
// The sequence number breaks ties between records of the same nanosecond. A record's id is "aud_" and
// the hex of time and sequence: unique, ordered like the records, and the cursor of the next page.

// AuditRecord is one admin action.
type AuditRecord struct {
	ID     string          `json:"id,omitempty"` // derived from the key when read; not stored
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
	r.ID = ""
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

// AuditCursor says where a page of the audit log starts: just older than the record with ID (from an
// earlier page), or else older than Time (zero: now).
type AuditCursor struct {
	ID   string
	Time time.Time
}

// ErrBadAuditID is returned for a cursor id that no record could have.
var ErrBadAuditID = errors.New("store: malformed audit record id")

const auditIDPrefix = "aud_"

// AuditLog returns up to limit records, newest first, of one tenant ("" for the global log), older than
// the cursor, and whether older records remain.
func (s *Store) AuditLog(tenantID string, before AuditCursor, limit int) ([]AuditRecord, bool, error) {
	var lower []byte
	if tenantID == "" {
		lower = globalKey('a', nil)
	} else {
		lower = TenantKey(tenantID, nsAudit)
	}
	upper := prefixEnd(lower)
	switch {
	case before.ID != "":
		suffix, err := hex.DecodeString(strings.TrimPrefix(before.ID, auditIDPrefix))
		if err != nil || len(suffix) != 16 || !strings.HasPrefix(before.ID, auditIDPrefix) {
			return nil, false, ErrBadAuditID
		}
		upper = append(append([]byte{}, lower...), suffix...)
	case !before.Time.IsZero():
		upper = append(append([]byte{}, lower...), be64(uint64(before.Time.UnixNano()))...)
	}
	var out []AuditRecord
	var decodeErr error
	more := false
	err := s.b.ScanReverse(lower, upper, func(k, v []byte) bool {
		if len(out) == limit {
			more = true
			return false
		}
		var r AuditRecord
		if decodeErr = json.Unmarshal(v, &r); decodeErr != nil {
			return false
		}
		r.ID = auditIDPrefix + hex.EncodeToString(k[len(k)-16:])
		out = append(out, r)
		return true
	})
	if decodeErr != nil {
		return nil, false, errors.Join(errors.New("store: corrupt audit record"), decodeErr)
	}
	return out, more, err
}
