package gateway

import (
	"bytes"
	"strings"
	"testing"

	"github.com/edgegw/edgegw/gateway/adminapi"
)

// TestStatusPageEscapes: names and error texts reach the page escaped
// (a cloud's error text, or a name, is not the page's markup).
func TestStatusPageEscapes(t *testing.T) {
	evil := `<script>alert(1)</script>`
	p := &statusPage{
		S: adminapi.Status{Version: evil, Cloud: adminapi.Cloud{Endpoint: evil,
			Errors: []adminapi.ErrorCount{{Error: "connect: " + evil, Sessions: 1}}},
			Spool: adminapi.Totals{LastError: evil}},
		Devices: []pageDevice{{ID: "pk/" + evil, Session: evil, Queued: 1}},
	}
	var buf bytes.Buffer
	if err := statusPageTmpl.Execute(&buf, p); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	if strings.Contains(out, "<script") {
		t.Errorf("the page has an unescaped <script>:\n%s", out)
	}
	if n := strings.Count(out, "&lt;script&gt;"); n < 6 {
		t.Errorf("%d escaped names, want at least 6 (device row and attribute, session, error, version, endpoint, spool error)", n)
	}
}
