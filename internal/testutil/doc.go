// Package testutil holds the helpers the edgegw test suites share: polling
// with a deadline instead of fixed sleeps, a throwaway PKI, the lookup of
// Debian's mosquitto peers, and a goroutine-safe log buffer.
//
// It is an ordinary package so that the test files of every package can
// import it, but only test code may: its helpers stop the test on any
// error, which has no place in the daemon. A dependency test
// (internal/deps_test.go) keeps it out of the daemon's packages.
package testutil
