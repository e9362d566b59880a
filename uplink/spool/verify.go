package spool

import "github.com/edgegw/edgegw/internal/boltcheck"

// verifyFile walks the B+tree of the spool file with plain, bounds-checked
// reads before bbolt maps it (see internal/boltcheck: bbolt trusts page
// pointers, and a damaged one would crash the process instead of being
// reported). A gateway must not crash-loop on a damaged spool: when this
// walk passes, bbolt's own walk and tx.Check can run safely.
func verifyFile(path string) error { return boltcheck.File(path) }
