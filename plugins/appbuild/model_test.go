package main

import (
	"sort"
	"testing"
)

// Ids made one after another must sort in that order: the build history and
// retention list builds by id.
func TestNewIDSortsInCreationOrder(t *testing.T) {
	ids := make([]string, 20000)
	for i := range ids {
		ids[i] = newID()
	}
	if !sort.StringsAreSorted(ids) {
		for i := 1; i < len(ids); i++ {
			if ids[i] <= ids[i-1] {
				t.Fatalf("id %d %s sorts before id %d %s", i, ids[i], i-1, ids[i-1])
			}
		}
	}
	for _, id := range ids[:3] {
		if !validID(id) {
			t.Fatalf("newID() = %q, not a valid id", id)
		}
	}
}
