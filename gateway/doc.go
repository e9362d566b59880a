// Package gateway wires edgegw's parts — configuration, registry, local
// broker, spool, cloud sessions, admin API, metrics — and runs their
// lifecycle.
package gateway
