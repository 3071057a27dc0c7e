package web

import (
	"io/fs"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
)

func TestPages(t *testing.T) {
	h := Handler()
	cases := []struct {
		path, want string
		code       int
	}{
		{"/claim", "<title>Claim a device", 200},
		{"/console", "<title>Console", 200},
		{"/ui/app.css", ":root", 200},
		{"/ui/claim.js", "import", 200},
		{"/ui/console.js", "import", 200},
		{"/ui/common.js", "export", 200},
		{"/ui/claim.html", "", 404}, // pages only at their paths
		{"/ui/../web.go", "", 404},  // nothing outside the embedded tree
		{"/ui/nope.js", "", 404},
		{"/elsewhere", "", 404},
	}
	for _, c := range cases {
		t.Run(c.path, func(t *testing.T) {
			w := httptest.NewRecorder()
			h.ServeHTTP(w, httptest.NewRequest("GET", c.path, nil))
			if w.Code != c.code || !strings.Contains(w.Body.String(), c.want) {
				t.Errorf("GET %s: %d %.60q, want %d with %q", c.path, w.Code, w.Body.String(), c.code, c.want)
			}
			if csp := w.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") || strings.Contains(csp, "unsafe") {
				t.Errorf("CSP %q", csp)
			}
			if w.Header().Get("X-Content-Type-Options") != "nosniff" {
				t.Error("no nosniff")
			}
		})
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("GET", "/", nil))
	if w.Code != http.StatusFound || w.Header().Get("Location") != "/console" {
		t.Errorf("GET /: %d %s", w.Code, w.Header().Get("Location"))
	}
}

// The pages load nothing from elsewhere and put no data into HTML: every
// URL in them is a path on this origin, and the scripts build the page
// with text nodes (no innerHTML, no inline handlers, no inline styles).
func TestPagesAreSelfContained(t *testing.T) {
	external := regexp.MustCompile(`(?i)\b(?:https?:|wss?:)?//[a-z0-9.-]+\.[a-z]{2,}|@import|url\(\s*['"]?(?:https?:)?//`)
	forbidden := regexp.MustCompile(`innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(|new Function|\son[a-z]+="|style="`)
	n := 0
	err := fs.WalkDir(static, "static", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		n++
		b, err := fs.ReadFile(static, p)
		if err != nil {
			return err
		}
		if m := external.Find(b); m != nil {
			t.Errorf("%s refers to another origin: %q", p, m)
		}
		if m := forbidden.Find(b); m != nil {
			t.Errorf("%s uses %q", p, m)
		}
		return nil
	})
	if err != nil || n < 6 {
		t.Fatalf("walked %d files: %v", n, err)
	}
}
