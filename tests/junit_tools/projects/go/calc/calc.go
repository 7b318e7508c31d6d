// Package calc is the code under test of the Go JUnit demo.
package calc

// Add returns a+b.
func Add(a, b int) int { return a + b }
