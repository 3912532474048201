package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

func msg(text string) json.RawMessage {
	return json.RawMessage(fmt.Sprintf(`{"type":"message","role":"user","content":%q}`, text))
}

func TestConversationLifecycle(t *testing.T) {
	s, c := openTest(t)
	conv, items, err := s.CreateConversation("a", map[string]string{"topic": "x"}, []json.RawMessage{msg("one")}, Quota{})
	if err != nil || len(items) != 1 || !ValidConvID(conv.ID) {
		t.Fatalf("create: %v %+v", err, conv)
	}
	for i := 2; i <= 5; i++ {
		if _, err := s.AppendItems("a", conv.ID, []json.RawMessage{msg(fmt.Sprint(i))}, Quota{}); err != nil {
			t.Fatal(err)
		}
	}
	asc, more, err := s.ListItems("a", conv.ID, "", 3, false)
	if err != nil || !more || len(asc) != 3 || !strings.Contains(string(asc[0].JSON), `"one"`) {
		t.Fatalf("asc page: %v %v %d", err, more, len(asc))
	}
	next, more, _ := s.ListItems("a", conv.ID, asc[2].ID, 3, false)
	if more || len(next) != 2 || next[1].Seq != 4 {
		t.Fatalf("second page: %v %+v", more, next)
	}
	desc, _, _ := s.ListItems("a", conv.ID, "", 2, true)
	if desc[0].Seq != 4 || desc[1].Seq != 3 {
		t.Fatalf("desc: %d %d", desc[0].Seq, desc[1].Seq)
	}
	it, err := s.GetItem("a", conv.ID, asc[1].ID)
	if err != nil || !strings.Contains(string(it.JSON), `"id":"`+asc[1].ID+`"`) {
		t.Fatalf("get item: %v %s", err, it.JSON)
	}
	if _, err := s.DeleteItem("a", conv.ID, asc[1].ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetItem("a", conv.ID, asc[1].ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted item: %v", err)
	}
	// Another tenant cannot see it, and a malformed id is just not found.
	if _, err := s.GetConversation("b", conv.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("tenant b sees a's conversation: %v", err)
	}
	if _, err := s.GetConversation("a", "conv_../../x"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("malformed id: %v", err)
	}
	// Usage goes back to zero when everything is deleted.
	c.advance(time.Second)
	if err := s.DeleteConversation("a", conv.ID); err != nil {
		t.Fatal(err)
	}
	if b, k, _ := s.Usage("a"); b != 0 || k != 0 {
		t.Fatalf("usage after deleting everything: %d bytes, %d keys", b, k)
	}
}

func TestConversationRetention(t *testing.T) {
	s, c := openTest(t)
	old, _, _ := s.CreateConversation("a", nil, []json.RawMessage{msg("old")}, Quota{})
	c.advance(10 * 24 * time.Hour)
	fresh, _, _ := s.CreateConversation("a", nil, nil, Quota{})
	revived, _, _ := s.CreateConversation("a", nil, nil, Quota{})
	c.advance(25 * 24 * time.Hour)
	// Updating refreshes the retention clock.
	if _, err := s.AppendItems("a", revived.ID, []json.RawMessage{msg("again")}, Quota{}); err != nil {
		t.Fatal(err)
	}
	n, err := s.ExpireConversations("a", c.now().Add(-30*24*time.Hour), 100)
	if err != nil || n != 1 {
		t.Fatalf("expired %d, %v; want only the 35-day-old one", n, err)
	}
	if _, err := s.GetConversation("a", old.ID); !errors.Is(err, ErrNotFound) {
		t.Fatal("old conversation survived")
	}
	for _, id := range []string{fresh.ID, revived.ID} {
		if _, err := s.GetConversation("a", id); err != nil {
			t.Fatalf("%s: %v", id, err)
		}
	}
}

func TestConversationQuota(t *testing.T) {
	s, _ := openTest(t)
	conv, _, err := s.CreateConversation("a", nil, nil, Quota{Keys: 3})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.AppendItems("a", conv.ID, []json.RawMessage{msg("1"), msg("2")}, Quota{Keys: 3}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AppendItems("a", conv.ID, []json.RawMessage{msg("3")}, Quota{Keys: 3}); !IsQuota(err) {
		t.Fatalf("over the key quota: %v", err)
	}
	items, _, _ := s.ListItems("a", conv.ID, "", 10, false)
	if len(items) != 2 {
		t.Fatalf("a refused append left %d items", len(items))
	}
}
