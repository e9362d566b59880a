// Package testutil holds the helpers the edgegw test suites share: polling
// with a deadline instead of fixed sleeps, the wait for a paho token, a
// throwaway PKI, the lookup of Debian's mosquitto peers, a goroutine-safe
// log buffer, and a gate to hold the code under test at a seam. The gateway runner is in the subpackage
// gwtest (it imports gateway, which this package must not).
//
// It is an ordinary package so that the test files of every package can
// import it, but only test code may: its helpers stop the test on any
// error, which has no place in the daemon. A dependency test
// (internal/deps_test.go) keeps it out of the daemon's packages.
package testutil
