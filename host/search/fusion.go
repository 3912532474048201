package search

import (
	"cmp"
	"slices"
)

// Fusion of ranked lists, in our code (not bleve's): reciprocal rank fusion and the convex combination of
// min-max normalised scores. Both take lists best first and return one list best first; ties are broken
// by key, so results are deterministic.

// Fusion defaults.
const (
	// DefaultRRFK is the k of reciprocal rank fusion (Cormack et al., 2009).
	DefaultRRFK = 60
	// DefaultAlpha weighs the vector side of convex fusion. Without relevance judgments for the tenant's
	// data there is nothing to tune it on, so both sides weigh the same; Bruch et al. (2023) show that a
	// convex combination tuned on a few queries beats RRF, so tenants with judgments should tune it.
	DefaultAlpha = 0.5
)

// ranked is a scored chunk.
type ranked struct {
	key   hitKey
	score float64
}

// hitKey names a chunk across the stores of a search.
type hitKey struct {
	store string
	chunk string // docID#index
}

func byScore(a, b ranked) int {
	if c := cmp.Compare(b.score, a.score); c != 0 {
		return c
	}
	if c := cmp.Compare(a.key.store, b.key.store); c != 0 {
		return c
	}
	return cmp.Compare(a.key.chunk, b.key.chunk)
}

// fuseRRF scores each chunk by the sum over lists of 1/(k + rank), rank counted from 1.
func fuseRRF(k int, lists ...[]ranked) []ranked {
	if k <= 0 {
		k = DefaultRRFK
	}
	acc := map[hitKey]float64{}
	for _, l := range lists {
		for i, r := range l {
			acc[r.key] += 1 / float64(k+i+1)
		}
	}
	return sorted(acc)
}

// fuseConvex scores each chunk by alpha·v + (1−alpha)·l, where v and l are its vector and lexical scores
// min-max normalised within their lists (a chunk missing from a list scores 0 there; a list whose scores
// are all equal normalises to 1).
func fuseConvex(alpha float64, lexical, vector []ranked) []ranked {
	acc := map[hitKey]float64{}
	add := func(l []ranked, w float64) {
		if len(l) == 0 {
			return
		}
		lo, hi := l[0].score, l[0].score
		for _, r := range l {
			lo, hi = min(lo, r.score), max(hi, r.score)
		}
		for _, r := range l {
			n := 1.0
			if hi > lo {
				n = (r.score - lo) / (hi - lo)
			}
			acc[r.key] += w * n
		}
	}
	add(lexical, 1-alpha)
	add(vector, alpha)
	return sorted(acc)
}

func sorted(acc map[hitKey]float64) []ranked {
	out := make([]ranked, 0, len(acc))
	for k, s := range acc {
		out = append(out, ranked{key: k, score: s})
	}
	slices.SortFunc(out, byScore)
	return out
}

// mergeLists merges lists (each best first) by raw score: the hits of several stores in one mode.
func mergeLists(lists ...[]ranked) []ranked {
	if len(lists) == 1 {
		return lists[0]
	}
	var out []ranked
	for _, l := range lists {
		out = append(out, l...)
	}
	slices.SortFunc(out, byScore)
	return out
}
