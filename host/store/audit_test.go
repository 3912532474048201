package store

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

// TestAuditPagesByID pages through records that share one timestamp (a stopped clock): the id cursor
// keeps every record exactly once, newest first, and has_more is exact.
func TestAuditPagesByID(t *testing.T) {
	s, c := openTest(t)
	for i := 0; i < 7; i++ {
		if err := s.Audit(AuditRecord{Actor: "operator", Tenant: "acme", Action: "key.create", Target: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
	}
	s.Audit(AuditRecord{Actor: "operator", Tenant: "other", Action: "key.create", Target: "x"})

	var got []string
	var cursor AuditCursor
	for page := 0; ; page++ {
		recs, more, err := s.AuditLog("acme", cursor, 3)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			got = append(got, r.Target)
		}
		if wantMore := page < 2; more != wantMore || (len(recs) != 3 && page < 2) {
			t.Fatalf("page %d: %d records, has_more %v", page, len(recs), more)
		}
		if !more {
			break
		}
		cursor = AuditCursor{ID: recs[len(recs)-1].ID}
	}
	if fmt.Sprint(got) != "[6 5 4 3 2 1 0]" {
		t.Fatalf("records %v, want every one of acme's once, newest first", got)
	}

	// A page that ends exactly at the last record says so.
	if recs, more, _ := s.AuditLog("acme", AuditCursor{}, 7); len(recs) != 7 || more {
		t.Fatalf("exact page: %d records, has_more %v", len(recs), more)
	}
	// The global log has both tenants' records; a time cursor still works.
	if recs, _, _ := s.AuditLog("", AuditCursor{}, 100); len(recs) != 8 {
		t.Fatalf("global log: %d records", len(recs))
	}
	c.advance(time.Second)
	s.Audit(AuditRecord{Actor: "operator", Tenant: "acme", Action: "tenant.update"})
	if recs, _, _ := s.AuditLog("acme", AuditCursor{Time: c.now()}, 100); len(recs) != 7 {
		t.Fatalf("before the newest record's time: %d records, want the 7 older", len(recs))
	}
	for _, id := range []string{"aud_xyz", "aud_00", "0000000000000000000000000000000000"} {
		if _, _, err := s.AuditLog("acme", AuditCursor{ID: id}, 3); !errors.Is(err, ErrBadAuditID) {
			t.Fatalf("id %q: %v", id, err)
		}
	}
}
