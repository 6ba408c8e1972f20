// Package reply formats the echo plugin's answers; the swap test changes it
// between builds to prove that every package of a plugin gets a new path.
package reply

// Format is what every response body is.
func Format(build, s string) string { return build + ":" + s }
