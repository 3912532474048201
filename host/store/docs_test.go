package store

import (
	"errors"
	"fmt"
	"slices"
	"testing"
)

func TestVectorStoreLifecycle(t *testing.T) {
	s, _ := openTest(t)
	vs := &VectorStore{Name: "kb", Metadata: map[string]string{"k": "v"}, Config: []byte(`{"x":1}`)}
	if err := s.CreateVectorStore("a", vs, Quota{}); err != nil {
		t.Fatal(err)
	}
	if !ValidVSID(vs.ID) {
		t.Fatalf("id %q", vs.ID)
	}
	// Tenant b cannot see it, even with its id.
	if _, err := s.GetVectorStore("b", vs.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("tenant b sees tenant a's store: %v", err)
	}
	if _, err := s.WriteDocuments("b", vs.ID, []DocWrite{{Doc: &Document{ID: "x"}, Seq: 1}}, Quota{}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("tenant b writes into tenant a's store: %v", err)
	}
	got, err := s.GetVectorStore("a", vs.ID)
	if err != nil || got.Name != "kb" || string(got.Config) != `{"x":1}` {
		t.Fatalf("get: %+v %v", got, err)
	}
	if _, err := s.UpdateVectorStore("a", vs.ID, func(v *VectorStore) error { v.Name = "kb2"; return nil }, Quota{}); err != nil {
		t.Fatal(err)
	}
	all, err := s.VectorStores("a")
	if err != nil || len(all) != 1 || all[0].Name != "kb2" {
		t.Fatalf("list: %v %v", all, err)
	}

	// Documents: write, replace with fewer chunks, delete; usage follows.
	doc := func(id string, chunks ...string) DocWrite {
		w := DocWrite{Doc: &Document{ID: id, Attributes: []byte(`{"n":1}`)}}
		for _, c := range chunks {
			w.Chunks = append(w.Chunks, Chunk{Text: c, Tokens: 2, Vector: []float32{1, 2, 3}})
		}
		return w
	}
	w1, w2 := doc("d1", "a b", "c d", "e f"), doc("d2", "g h")
	w1.Seq, w2.Seq = 1, 2
	ch, err := s.WriteDocuments("a", vs.ID, []DocWrite{w1, w2}, Quota{})
	if err != nil || ch[0].Existed || ch[1].Existed {
		t.Fatalf("write: %v %v", ch, err)
	}
	u, _ := s.VectorStoreUsage("a", vs.ID)
	if u.Documents != 2 || u.Chunks != 4 || u.Records != 6 || u.Bytes <= 0 {
		t.Fatalf("usage %+v", u)
	}
	bytesBefore, keysBefore, _ := s.Usage("a")
	r := doc("d1", "x y")
	r.Seq = 3
	ch, err = s.WriteDocuments("a", vs.ID, []DocWrite{r}, Quota{})
	if err != nil || !ch[0].Existed || ch[0].PrevChunks != 3 {
		t.Fatalf("replace: %v %v", ch, err)
	}
	cs, err := s.Chunks("a", vs.ID, "d1", -1)
	if err != nil || len(cs) != 1 || cs[0].Text != "x y" || !slices.Equal(cs[0].Vector, []float32{1, 2, 3}) || cs[0].Tokens != 2 {
		t.Fatalf("chunks after replace: %+v %v", cs, err)
	}
	if _, keys, _ := s.Usage("a"); keys != keysBefore-2 {
		t.Fatalf("tenant keys %d, want %d", keys, keysBefore-2)
	}
	d, err := s.GetDocument("a", vs.ID, "d1")
	if err != nil || d.Chunks != 1 || d.Tokens != 2 || string(d.Attributes) != `{"n":1}` {
		t.Fatalf("doc: %+v %v", d, err)
	}
	ch, err = s.WriteDocuments("a", vs.ID, []DocWrite{{Doc: &Document{ID: "d2"}, Delete: true, Seq: 4},
		{Doc: &Document{ID: "nope"}, Delete: true, Seq: 5}}, Quota{})
	if err != nil || !ch[0].Existed || ch[0].PrevChunks != 1 || ch[1].Existed {
		t.Fatalf("delete: %v %v", ch, err)
	}
	if _, err := s.GetDocument("a", vs.ID, "d2"); !errors.Is(err, ErrNotFound) {
		t.Fatal("deleted document still there")
	}

	// The change log has every write in order, with previous chunk counts.
	var log []LogEntry
	s.DocLog("a", vs.ID, 0, func(e LogEntry) bool { log = append(log, e); return true })
	want := []LogEntry{{1, "d1", 0}, {2, "d2", 0}, {3, "d1", 3}, {4, "d2", 1}, {5, "nope", 0}}
	if !slices.Equal(log, want) {
		t.Fatalf("log %v, want %v", log, want)
	}
	if err := s.TrimDocLog("a", vs.ID, 3); err != nil {
		t.Fatal(err)
	}
	log = nil
	s.DocLog("a", vs.ID, 0, func(e LogEntry) bool { log = append(log, e); return true })
	if len(log) != 2 || log[0].Seq != 4 {
		t.Fatalf("log after trim %v", log)
	}

	// Deleting the store gives back every byte and record.
	if err := s.DeleteVectorStore("a", vs.ID); err != nil {
		t.Fatal(err)
	}
	if b, k, _ := s.Usage("a"); b != 0 || k != 0 {
		t.Fatalf("usage after delete: %d bytes %d keys", b, k)
	}
	if _, err := s.GetVectorStore("a", vs.ID); !errors.Is(err, ErrNotFound) {
		t.Fatal("store still there")
	}
	_ = bytesBefore
}

func TestDocumentsQuotaAndList(t *testing.T) {
	s, _ := openTest(t)
	vs := &VectorStore{}
	if err := s.CreateVectorStore("a", vs, Quota{}); err != nil {
		t.Fatal(err)
	}
	big := DocWrite{Doc: &Document{ID: "big"}, Chunks: []Chunk{{Text: string(make([]byte, 10000))}}, Seq: 1}
	if _, err := s.WriteDocuments("a", vs.ID, []DocWrite{big}, Quota{Bytes: 5000}); !IsQuota(err) {
		t.Fatalf("over quota: %v", err)
	}
	if _, err := s.GetDocument("a", vs.ID, "big"); !errors.Is(err, ErrNotFound) {
		t.Fatal("a refused write left a document")
	}
	var ws []DocWrite
	for i := 0; i < 25; i++ {
		ws = append(ws, DocWrite{Doc: &Document{ID: fmt.Sprintf("d%02d", i)}, Chunks: []Chunk{{Text: "t"}}, Seq: uint64(10 + i)})
	}
	if _, err := s.WriteDocuments("a", vs.ID, ws, Quota{}); err != nil {
		t.Fatal(err)
	}
	ids := func(ds []*Document) (out []string) {
		for _, d := range ds {
			out = append(out, d.ID)
		}
		return out
	}
	page, more, err := s.ListDocuments("a", vs.ID, "", "", 10, false)
	if err != nil || !more || len(page) != 10 || page[0].ID != "d00" {
		t.Fatalf("page 1: %v %v %v", ids(page), more, err)
	}
	page, more, _ = s.ListDocuments("a", vs.ID, "d19", "", 10, false)
	if more || !slices.Equal(ids(page), []string{"d20", "d21", "d22", "d23", "d24"}) {
		t.Fatalf("after d19: %v %v", ids(page), more)
	}
	page, more, _ = s.ListDocuments("a", vs.ID, "", "", 3, true)
	if !more || !slices.Equal(ids(page), []string{"d24", "d23", "d22"}) {
		t.Fatalf("desc: %v %v", ids(page), more)
	}
	page, more, _ = s.ListDocuments("a", vs.ID, "d22", "", 3, true)
	if !more || !slices.Equal(ids(page), []string{"d21", "d20", "d19"}) {
		t.Fatalf("desc after d22: %v %v", ids(page), more)
	}
	page, _, _ = s.ListDocuments("a", vs.ID, "d02", "d05", 10, false)
	if !slices.Equal(ids(page), []string{"d03", "d04"}) {
		t.Fatalf("between: %v", ids(page))
	}
	for _, bad := range []string{"", "a/b", "a b", "#x", "a#b", string(make([]byte, 300))} {
		if ValidDocID(bad) {
			t.Errorf("ValidDocID(%q)", bad)
		}
	}
}
