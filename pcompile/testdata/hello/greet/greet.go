// Package greet is a subpackage of the hello test plugin.
package greet

// calls is package state: each build of the plugin has its own.
var calls int

// Message returns this build's greeting.
func Message() string {
	calls++
	return "greet-1"
}
