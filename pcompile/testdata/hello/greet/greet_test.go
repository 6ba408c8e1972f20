package greet

import "testing"

// This file must not be copied into builds (it would not compile there: it
// refers to a function that does not exist).
func TestNotCopied(t *testing.T) { doesNotExist() }
