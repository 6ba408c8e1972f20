// Package text is an internal package of the extmod test plugin.
package text

// Line is this build's answer.
func Line() string { return "ext-1" }
