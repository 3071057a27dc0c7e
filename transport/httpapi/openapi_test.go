package httpapi_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/provisiond/provisiond/transport/httpapi"
)

var update = flag.Bool("update", false, "rewrite docs/openapi.json")

// TestOpenAPI keeps docs/openapi.json equal to the document the server
// serves, and checks that it covers every route with its access rule.
func TestOpenAPI(t *testing.T) {
	got := httpapi.OpenAPI()
	path := filepath.Join("..", "..", "docs", "openapi.json")
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("docs/openapi.json is stale: go test ./transport/httpapi -run TestOpenAPI -args -update")
	}
	var doc struct {
		Paths map[string]map[string]struct {
			Summary  string         `json:"summary"`
			Role     string         `json:"x-provisiond-role"`
			Security []any          `json:"security"`
			Resp     map[string]any `json:"responses"`
		} `json:"paths"`
	}
	if err := json.Unmarshal(got, &doc); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, rt := range httpapi.Routes() {
		method, path, _ := strings.Cut(rt.Pattern, " ")
		if path == "/ocsp/" {
			path = "/ocsp/{request}"
		}
		op, ok := doc.Paths[path][strings.ToLower(method)]
		switch {
		case !ok:
			t.Errorf("%s is not in the document", rt.Pattern)
		case op.Summary == "":
			t.Errorf("%s has no summary (add it to the docs table)", rt.Pattern)
		case op.Role != string(rt.Role) || (rt.Role != "") != (len(op.Security) > 0):
			t.Errorf("%s: document says role %q security %v, the route table %q", rt.Pattern, op.Role, op.Security, rt.Role)
		}
		n++
	}
	ops := 0
	for _, p := range doc.Paths {
		ops += len(p)
	}
	if ops != n {
		t.Errorf("document has %d operations, the route table %d", ops, n)
	}
}
