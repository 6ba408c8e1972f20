package balance

import (
	"fmt"
	"math"
	"testing"
)

type tgt struct {
	id   string
	w    int
	load int64
	down bool
}

func (t *tgt) ID() string      { return t.id }
func (t *tgt) Weight() int     { return t.w }
func (t *tgt) Load() int64     { return t.load }
func (t *tgt) Available() bool { return !t.down }

func targets(ws ...int) ([]Target, []*tgt) {
	var ts []Target
	var raw []*tgt
	for i, w := range ws {
		t := &tgt{id: fmt.Sprintf("inst-%d", i), w: w}
		ts = append(ts, t)
		raw = append(raw, t)
	}
	return ts, raw
}

func count(t *testing.T, b Balancer, n int, keyf func(i int) string) map[int]int {
	t.Helper()
	c := map[int]int{}
	for i := 0; i < n; i++ {
		k := ""
		if keyf != nil {
			k = keyf(i)
		}
		idx := b.Pick(k, 0)
		if idx < 0 {
			t.Fatalf("pick %d: no target", i)
		}
		c[idx]++
	}
	return c
}

func TestRoundRobinExact(t *testing.T) {
	ts, _ := targets(1, 1, 1)
	b, _ := New(RoundRobin, ts)
	c := count(t, b, 300, nil)
	for i := 0; i < 3; i++ {
		if c[i] != 100 {
			t.Fatalf("round robin counts %v", c)
		}
	}
}

func TestWeightedRoundRobinSmooth(t *testing.T) {
	ts, _ := targets(5, 1, 1)
	b, _ := New(WeightedRoundRobin, ts)
	var seq []int
	for i := 0; i < 7; i++ {
		seq = append(seq, b.Pick("", 0))
	}
	// nginx's documented sequence for weights 5,1,1: a a b a c a a
	want := []int{0, 0, 1, 0, 2, 0, 0}
	if fmt.Sprint(seq) != fmt.Sprint(want) {
		t.Fatalf("sequence %v, want %v", seq, want)
	}
	c := count(t, b, 7000, nil)
	if c[0] != 5000 || c[1] != 1000 || c[2] != 1000 {
		t.Fatalf("counts %v", c)
	}
}

func within(t *testing.T, name string, got, want, tol float64) {
	t.Helper()
	if math.Abs(got-want) > tol {
		t.Fatalf("%s: share %.3f, want %.3f ± %.3f", name, got, want, tol)
	}
}

func TestRandomAndWeightedRandom(t *testing.T) {
	ts, _ := targets(1, 1, 2)
	b, _ := New(Random, ts)
	c := count(t, b, 30000, nil)
	for i := 0; i < 3; i++ {
		within(t, "random", float64(c[i])/30000, 1.0/3, 0.03)
	}
	b, _ = New(WeightedRandom, ts)
	c = count(t, b, 40000, nil)
	within(t, "weighted-random 0", float64(c[0])/40000, 0.25, 0.03)
	within(t, "weighted-random 2", float64(c[2])/40000, 0.5, 0.03)
}

func TestSkipsUnavailableAndTried(t *testing.T) {
	for _, s := range []string{RoundRobin, Random, WeightedRoundRobin, WeightedRandom, LessLoad, Hash} {
		ts, raw := targets(1, 1, 1)
		raw[1].down = true
		b, _ := New(s, ts)
		for i := 0; i < 200; i++ {
			idx := b.Pick(fmt.Sprint(i), 1<<0)
			if idx != 2 {
				t.Fatalf("%s: picked %d, want 2 (0 tried, 1 down)", s, idx)
			}
		}
		raw[2].down = true
		if idx := b.Pick("k", 1); idx != -1 {
			t.Fatalf("%s: picked %d with nothing usable", s, idx)
		}
	}
}

func TestLessLoad(t *testing.T) {
	ts, raw := targets(1, 1, 1)
	raw[0].load, raw[1].load, raw[2].load = 5, 1, 3
	b, _ := New(LessLoad, ts)
	for i := 0; i < 10; i++ {
		if idx := b.Pick("", 0); idx != 1 {
			t.Fatalf("picked %d, want the least loaded 1", idx)
		}
	}
	raw[1].load = 5
	raw[2].load = 5
	raw[0].load = 5
	c := count(t, b, 300, nil)
	if c[0] != 100 || c[1] != 100 || c[2] != 100 {
		t.Fatalf("ties not spread: %v", c)
	}
}

func TestHashConsistent(t *testing.T) {
	ts, _ := targets(1, 1, 1, 1)
	b, _ := New(Hash, ts)
	const keys = 20000
	before := make([]int, keys)
	for i := range before {
		before[i] = b.Pick(fmt.Sprintf("10.0.%d.%d", i/256, i%256), 0)
		if again := b.Pick(fmt.Sprintf("10.0.%d.%d", i/256, i%256), 0); again != before[i] {
			t.Fatal("same key, different target")
		}
	}
	c := map[int]int{}
	for _, v := range before {
		c[v]++
	}
	for i := 0; i < 4; i++ {
		within(t, "hash share", float64(c[i])/keys, 0.25, 0.06)
	}
	ts5, _ := targets(1, 1, 1, 1, 1)
	b5, _ := New(Hash, ts5)
	moved := 0
	for i := range before {
		now := b5.Pick(fmt.Sprintf("10.0.%d.%d", i/256, i%256), 0)
		if now != before[i] {
			if now != 4 {
				t.Fatalf("key moved between old instances %d -> %d", before[i], now)
			}
			moved++
		}
	}
	within(t, "moved share", float64(moved)/keys, 0.2, 0.06)
}

func TestPickDoesNotAllocate(t *testing.T) {
	for _, s := range []string{RoundRobin, Random, WeightedRoundRobin, WeightedRandom, LessLoad, Hash} {
		ts, _ := targets(1, 2, 3)
		b, _ := New(s, ts)
		if a := testing.AllocsPerRun(100, func() { b.Pick("1.2.3.4", 0) }); a != 0 {
			t.Errorf("%s: %v allocs per pick", s, a)
		}
	}
}
