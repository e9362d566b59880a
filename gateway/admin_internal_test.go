package gateway

import (
	"slices"
	"sort"
	"testing"

	"github.com/edgegw/edgegw/gateway/adminapi"
)

// TestAdminServesEveryMethod: the gateway serves exactly the methods
// adminapi names (its unknown-method error lists adminapi.Methods).
func TestAdminServesEveryMethod(t *testing.T) {
	served := make([]string, 0, len(adminMethods))
	for m := range adminMethods {
		served = append(served, m)
	}
	sort.Strings(served)
	if want := adminapi.Methods(); !slices.Equal(served, want) {
		t.Fatalf("served %v, adminapi.Methods %v", served, want)
	}
}
