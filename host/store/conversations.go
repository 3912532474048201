package store

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Conversations (what the old system called chat sessions). Layout in the tenant's range:
//
//	nsConv  convID 0x00            → meta (JSON)
//	nsConv  convID 0x01 seq(8 BE)  → item (JSON)
//	nsConvTime updated(8 BE ms) convID → ""     retention index, ordered by last update
//
// Conversation ids have a fixed length, so one id is never a prefix of another, and an item's key sorts
// in append order. The meta record carries the next sequence number and the conversation's byte and item
// totals, so appends and deletes need no scan for quota accounting.

// ConvIDLen is the length of a conversation id: "conv_" and 32 hex digits.
const ConvIDLen = 5 + 32

// Conversation is a conversation's metadata.
type Conversation struct {
	ID        string            `json:"id"`
	CreatedAt int64             `json:"created_at"` // Unix seconds
	UpdatedAt int64             `json:"updated_ms"` // Unix ms of the last change (retention clock)
	Metadata  map[string]string `json:"metadata"`
	NextSeq   uint64            `json:"next_seq"`
	ItemBytes int64             `json:"item_bytes"` // stored bytes (keys and values) of the items
	Items     int64             `json:"items"`

	metaSize int64 // stored bytes of the meta record as last read or written
}

// Item is a stored conversation item: its JSON object (with its id set).
type Item struct {
	ID   string
	Seq  uint64
	JSON json.RawMessage
}

// ErrBadID is returned for ids that are not of Plinth's format (they cannot exist).
var ErrBadID = errors.New("malformed id")

// ValidConvID reports whether id has the conversation id format.
func ValidConvID(id string) bool { return hexID(id, "conv_", 32) }

// hexID reports whether id is prefix followed by n lowercase hex digits: the format of the store's
// random ids, whose fixed length keeps one id from being a prefix of another in the keyspace.
func hexID(id, prefix string, n int) bool {
	if len(id) != len(prefix)+n || !strings.HasPrefix(id, prefix) {
		return false
	}
	for _, c := range id[len(prefix):] {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

func newConvID() string {
	var b [16]byte
	rand.Read(b[:])
	return "conv_" + hex.EncodeToString(b[:])
}

// ItemID returns the id of item seq of a conversation: unique across conversations (it embeds part of
// the conversation id) and decodable back to its sequence number.
func ItemID(convID string, seq uint64) string {
	return fmt.Sprintf("msg_%s%016x", convID[5:17], seq)
}

// itemSeq decodes an item id of conversation convID.
func itemSeq(convID, itemID string) (uint64, bool) {
	if len(itemID) != 4+12+16 || !strings.HasPrefix(itemID, "msg_") || itemID[4:16] != convID[5:17] {
		return 0, false
	}
	seq, err := strconv.ParseUint(itemID[16:], 16, 64)
	return seq, err == nil
}

func convMetaKey(tenant, id string) []byte { return TenantKey(tenant, nsConv, []byte(id), []byte{0}) }

func convItemKey(tenant, id string, seq uint64) []byte {
	return TenantKey(tenant, nsConv, []byte(id), []byte{1}, be64(seq))
}

func convTimeKey(tenant string, ms int64, id string) []byte {
	return TenantKey(tenant, nsConvTime, be64(uint64(ms)), []byte(id))
}

func (s *Store) loadConv(tenant, id string) (*Conversation, error) {
	if !ValidConvID(id) {
		return nil, ErrNotFound
	}
	raw, err := s.b.Get(convMetaKey(tenant, id))
	if err != nil {
		return nil, err
	}
	var c Conversation
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, fmt.Errorf("store: corrupt conversation %s: %w", id, err)
	}
	c.metaSize = int64(len(convMetaKey(tenant, id)) + len(raw))
	return &c, nil
}

// putMeta adds the meta record and the retention index update to b, and returns the change in the
// meta's stored size (the index entries are not counted: they are the store's, not the tenant's data).
func putMeta(b *Batch, tenant string, c *Conversation, prevUpdated int64) int64 {
	if prevUpdated != 0 {
		b.Delete(convTimeKey(tenant, prevUpdated, c.ID))
	}
	b.Set(convTimeKey(tenant, c.UpdatedAt, c.ID), nil)
	meta, _ := json.Marshal(c)
	k := convMetaKey(tenant, c.ID)
	b.Set(k, meta)
	size := int64(len(k) + len(meta))
	d := size - c.metaSize
	c.metaSize = size
	return d
}

// CreateConversation creates a conversation with optional metadata and initial items.
func (s *Store) CreateConversation(tenant string, metadata map[string]string, items []json.RawMessage, q Quota) (*Conversation, []Item, error) {
	now := s.now()
	c := &Conversation{ID: newConvID(), CreatedAt: now.Unix(), UpdatedAt: now.UnixMilli(), Metadata: metadata}
	if c.Metadata == nil {
		c.Metadata = map[string]string{}
	}
	defer s.lock(convMetaKey(tenant, c.ID)).Unlock()
	out, err := s.appendLocked(tenant, c, 0, items, q, true)
	return c, out, err
}

// GetConversation returns a conversation, or ErrNotFound.
func (s *Store) GetConversation(tenant, id string) (*Conversation, error) {
	return s.loadConv(tenant, id)
}

// UpdateConversation replaces a conversation's metadata.
func (s *Store) UpdateConversation(tenant, id string, metadata map[string]string, q Quota) (*Conversation, error) {
	if !ValidConvID(id) {
		return nil, ErrNotFound
	}
	defer s.lock(convMetaKey(tenant, id)).Unlock()
	c, err := s.loadConv(tenant, id)
	if err != nil {
		return nil, err
	}
	if metadata == nil {
		metadata = map[string]string{}
	}
	c.Metadata = metadata
	_, err = s.appendLocked(tenant, c, c.UpdatedAt, nil, q, false)
	return c, err
}

// AppendItems appends items to a conversation and returns them with their ids.
func (s *Store) AppendItems(tenant, id string, items []json.RawMessage, q Quota) ([]Item, error) {
	if !ValidConvID(id) {
		return nil, ErrNotFound
	}
	defer s.lock(convMetaKey(tenant, id)).Unlock()
	c, err := s.loadConv(tenant, id)
	if err != nil {
		return nil, err
	}
	return s.appendLocked(tenant, c, c.UpdatedAt, items, q, false)
}

// appendLocked writes c's meta and new items in one batch. Caller holds the conversation's lock.
func (s *Store) appendLocked(tenant string, c *Conversation, prevUpdated int64, items []json.RawMessage, q Quota, created bool) ([]Item, error) {
	var b Batch
	var dBytes, dKeys int64
	out := make([]Item, 0, len(items))
	for _, raw := range items {
		seq := c.NextSeq
		c.NextSeq++
		it := Item{ID: ItemID(c.ID, seq), Seq: seq}
		var err error
		if it.JSON, err = setItemID(raw, it.ID); err != nil {
			return nil, err
		}
		k := convItemKey(tenant, c.ID, seq)
		b.Set(k, it.JSON)
		dBytes += int64(len(k) + len(it.JSON))
		dKeys++
		out = append(out, it)
	}
	c.UpdatedAt = max(s.now().UnixMilli(), prevUpdated)
	c.Items += dKeys
	c.ItemBytes += dBytes
	dBytes += putMeta(&b, tenant, c, prevUpdated)
	if created {
		dKeys++
	}
	if err := s.commit(tenant, &b, dBytes, dKeys, q); err != nil {
		return nil, err
	}
	return out, nil
}

// setItemID returns the item JSON object with its "id" set (and validates it is an object).
func setItemID(raw json.RawMessage, id string) (json.RawMessage, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil || m == nil {
		return nil, fmt.Errorf("%w: an item must be a JSON object", ErrBadItem)
	}
	m["id"], _ = json.Marshal(id)
	return json.Marshal(m)
}

// ErrBadItem is returned for items that are not JSON objects.
var ErrBadItem = errors.New("invalid item")

// ListItems returns up to limit items after the item with id after (exclusive; "" from the start), in
// ascending (append) or descending order, and whether more follow.
func (s *Store) ListItems(tenant, id, after string, limit int, desc bool) ([]Item, bool, error) {
	c, err := s.loadConv(tenant, id)
	if err != nil {
		return nil, false, err
	}
	lower, upper := convItemKey(tenant, id, 0), convItemKey(tenant, id, c.NextSeq)
	if after != "" {
		seq, ok := itemSeq(id, after)
		if !ok {
			return nil, false, fmt.Errorf("%w: after %q is not an item of this conversation", ErrBadID, after)
		}
		if desc {
			upper = convItemKey(tenant, id, seq)
		} else {
			lower = convItemKey(tenant, id, seq+1)
		}
	}
	var all []Item
	err = s.b.Scan(lower, upper, func(k, v []byte) bool {
		seq := binary.BigEndian.Uint64(k[len(k)-8:])
		all = append(all, Item{ID: ItemID(id, seq), Seq: seq, JSON: bytes.Clone(v)})
		// Ascending scans can stop early; descending ones need the tail.
		return desc || len(all) <= limit
	})
	if err != nil {
		return nil, false, err
	}
	if desc {
		for i, j := 0, len(all)-1; i < j; i, j = i+1, j-1 {
			all[i], all[j] = all[j], all[i]
		}
	}
	more := len(all) > limit
	if more {
		all = all[:limit]
	}
	return all, more, nil
}

// GetItem returns one item of a conversation.
func (s *Store) GetItem(tenant, id, itemID string) (Item, error) {
	seq, ok := itemSeq(id, itemID)
	if !ok || !ValidConvID(id) {
		return Item{}, ErrNotFound
	}
	v, err := s.b.Get(convItemKey(tenant, id, seq))
	if err != nil {
		return Item{}, err
	}
	return Item{ID: itemID, Seq: seq, JSON: v}, nil
}

// DeleteItem removes one item and returns the updated conversation.
func (s *Store) DeleteItem(tenant, id, itemID string) (*Conversation, error) {
	seq, ok := itemSeq(id, itemID)
	if !ok || !ValidConvID(id) {
		return nil, ErrNotFound
	}
	defer s.lock(convMetaKey(tenant, id)).Unlock()
	c, err := s.loadConv(tenant, id)
	if err != nil {
		return nil, err
	}
	k := convItemKey(tenant, id, seq)
	v, err := s.b.Get(k)
	if err != nil {
		return nil, err
	}
	var b Batch
	b.Delete(k)
	size := int64(len(k) + len(v))
	prev := c.UpdatedAt
	c.Items--
	c.ItemBytes -= size
	c.UpdatedAt = max(s.now().UnixMilli(), prev)
	dMeta := putMeta(&b, tenant, c, prev)
	return c, s.commit(tenant, &b, dMeta-size, -1, Quota{})
}

// DeleteConversation removes a conversation and all its items.
func (s *Store) DeleteConversation(tenant, id string) error {
	if !ValidConvID(id) {
		return ErrNotFound
	}
	defer s.lock(convMetaKey(tenant, id)).Unlock()
	return s.deleteConvLocked(tenant, id)
}

func (s *Store) deleteConvLocked(tenant, id string) error {
	c, err := s.loadConv(tenant, id)
	if err != nil {
		return err
	}
	var b Batch
	prefix := TenantKey(tenant, nsConv, []byte(id))
	b.DeleteRange(prefix, prefixEnd(prefix))
	b.Delete(convTimeKey(tenant, c.UpdatedAt, id))
	return s.commit(tenant, &b, -(c.ItemBytes + c.metaSize), -(c.Items + 1), Quota{})
}

// ExpireConversations deletes a tenant's conversations last updated before cutoff, at most limit of
// them per call (so the caller can pace the work), and returns how many it deleted. Each deletion takes
// only its own conversation's lock: requests are never blocked behind the sweep.
func (s *Store) ExpireConversations(tenant string, cutoff time.Time, limit int) (int, error) {
	lower := TenantKey(tenant, nsConvTime)
	upper := TenantKey(tenant, nsConvTime, be64(uint64(cutoff.UnixMilli())))
	var ids []string
	err := s.b.Scan(lower, upper, func(k, _ []byte) bool {
		ids = append(ids, string(k[len(lower)+8:]))
		return len(ids) < limit
	})
	if err != nil {
		return 0, err
	}
	n := 0
	for _, id := range ids {
		m := s.lock(convMetaKey(tenant, id))
		// Re-check under the lock: an append may have refreshed it since the scan.
		c, err := s.loadConv(tenant, id)
		if err == nil && c.UpdatedAt < cutoff.UnixMilli() {
			err = s.deleteConvLocked(tenant, id)
			n++
		}
		m.Unlock()
		if err != nil && !errors.Is(err, ErrNotFound) {
			return n, err
		}
	}
	return n, nil
}
