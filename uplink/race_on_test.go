//go:build race

package uplink

// raceEnabled: the race detector allows at most 8128 live goroutines, and
// a paho session has about ten.
const raceEnabled = true
