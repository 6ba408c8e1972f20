// Package balance implements the gateway's six load-balancing strategies
// behind one interface. A Balancer is built for one fixed list of targets
// (a new list gets a new Balancer) and is safe for concurrent use; Pick
// does not allocate.
package balance

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
)

// Target is one upstream instance as a balancer sees it.
type Target interface {
	// ID identifies the instance; the hash ring is built from it.
	ID() string
	// Weight is the instance's weight (>= 1).
	Weight() int
	// Load is the number of requests in flight to the instance.
	Load() int64
	// Available is false while the instance is unhealthy or its breaker is open.
	Available() bool
}

// Balancer chooses a target for a request.
type Balancer interface {
	// Pick returns the index of an available target whose bit in skip is
	// not set (targets already tried), or -1 when there is none. key is the
	// hash key; only the hash strategy reads it.
	Pick(key string, skip uint64) int
}

// Strategy names (canonical spellings; see conf.NormalizeStrategy).
const (
	RoundRobin         = "round-robin"
	Random             = "random"
	WeightedRoundRobin = "weighted-round-robin"
	WeightedRandom     = "weighted-random"
	LessLoad           = "less-load"
	Hash               = "hash"
)

// New builds the balancer of a strategy for targets.
func New(strategy string, targets []Target) (Balancer, error) {
	switch strategy {
	case RoundRobin:
		return &roundRobin{t: targets}, nil
	case Random:
		return &random{t: targets}, nil
	case WeightedRoundRobin:
		return &weightedRR{t: targets, cur: make([]int, len(targets))}, nil
	case WeightedRandom:
		return &weightedRandom{t: targets}, nil
	case LessLoad:
		return &lessLoad{t: targets}, nil
	case Hash:
		return newRing(targets), nil
	}
	return nil, fmt.Errorf("unknown load balance strategy %q", strategy)
}

func usable(t []Target, i int, skip uint64) bool {
	if i < 64 && skip&(1<<uint(i)) != 0 {
		return false
	}
	return t[i].Available()
}

func weight(t Target) int {
	if w := t.Weight(); w > 0 {
		return w
	}
	return 1
}

type roundRobin struct {
	t   []Target
	ctr atomic.Uint64
}

func (b *roundRobin) Pick(_ string, skip uint64) int {
	n := uint64(len(b.t))
	if n == 0 {
		return -1
	}
	start := b.ctr.Add(1) - 1
	for i := uint64(0); i < n; i++ {
		if idx := int((start + i) % n); usable(b.t, idx, skip) {
			return idx
		}
	}
	return -1
}

type random struct{ t []Target }

func (b *random) Pick(_ string, skip uint64) int {
	n := len(b.t)
	if n == 0 {
		return -1
	}
	start := rand.IntN(n)
	for i := 0; i < n; i++ {
		if idx := (start + i) % n; usable(b.t, idx, skip) {
			return idx
		}
	}
	return -1
}

// weightedRR is nginx's smooth weighted round-robin: every pick adds each
// available target's weight to its current value, takes the largest and
// subtracts the total from it. Over sum(weights) picks each target is
// chosen exactly weight times, interleaved.
type weightedRR struct {
	t   []Target
	mu  sync.Mutex
	cur []int
}

func (b *weightedRR) Pick(_ string, skip uint64) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	best, total := -1, 0
	for i, t := range b.t {
		if !usable(b.t, i, skip) {
			continue
		}
		w := weight(t)
		b.cur[i] += w
		total += w
		if best < 0 || b.cur[i] > b.cur[best] {
			best = i
		}
	}
	if best >= 0 {
		b.cur[best] -= total
	}
	return best
}

type weightedRandom struct{ t []Target }

func (b *weightedRandom) Pick(_ string, skip uint64) int {
	total := 0
	for i, t := range b.t {
		if usable(b.t, i, skip) {
			total += weight(t)
		}
	}
	if total == 0 {
		return -1
	}
	r := rand.IntN(total)
	for i, t := range b.t {
		if !usable(b.t, i, skip) {
			continue
		}
		if r -= weight(t); r < 0 {
			return i
		}
	}
	return -1
}

// lessLoad picks the available target with the fewest requests in flight;
// ties are broken round-robin so idle targets share the work.
type lessLoad struct {
	t   []Target
	ctr atomic.Uint64
}

func (b *lessLoad) Pick(_ string, skip uint64) int {
	n := len(b.t)
	if n == 0 {
		return -1
	}
	start := int(b.ctr.Add(1) % uint64(n))
	best, bestLoad := -1, int64(0)
	for k := 0; k < n; k++ {
		i := (start + k) % n
		if !usable(b.t, i, skip) {
			continue
		}
		if l := b.t[i].Load(); best < 0 || l < bestLoad {
			best, bestLoad = i, l
		}
	}
	return best
}

// ring is consistent hashing with virtual nodes: each target owns
// vnodesPerWeight*weight points on a 64-bit ring, placed by hashing its ID,
// so adding or removing a target moves only the keys of its own arcs
// (about 1/n of them).
type ring struct {
	t      []Target
	points []uint64
	owner  []int
}

const vnodesPerWeight = 160
const maxVnodes = 16000

func newRing(t []Target) *ring {
	r := &ring{t: t}
	type pt struct {
		h uint64
		o int
	}
	var pts []pt
	for i, tg := range t {
		v := vnodesPerWeight * weight(tg)
		if v > maxVnodes {
			v = maxVnodes
		}
		for k := 0; k < v; k++ {
			pts = append(pts, pt{Sum64(tg.ID() + "#" + strconv.Itoa(k)), i})
		}
	}
	sort.Slice(pts, func(a, b int) bool { return pts[a].h < pts[b].h })
	r.points = make([]uint64, len(pts))
	r.owner = make([]int, len(pts))
	for i, p := range pts {
		r.points[i], r.owner[i] = p.h, p.o
	}
	return r
}

func (r *ring) Pick(key string, skip uint64) int {
	n := len(r.points)
	if n == 0 {
		return -1
	}
	h := Sum64(key)
	i := sort.Search(n, func(i int) bool { return r.points[i] >= h })
	for k := 0; k < n; k++ {
		if o := r.owner[(i+k)%n]; usable(r.t, o, skip) {
			return o
		}
	}
	return -1
}

// Sum64 is FNV-1a followed by a 64-bit finalizer (so nearby inputs land
// far apart on the ring). It is deterministic across processes, so a key
// keeps its instance across gateway swaps and restarts.
func Sum64(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}
