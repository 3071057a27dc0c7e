// Package web serves provisiond's browser pages from the binary itself: the
// installer page (/claim), where an installer signs in with a token, reads
// a device's label (the phone's camera app opening the label's URL, a scan
// inside the page, or typing the code), claims the device for a site and
// watches it come up; and the operator console (/console): the inventory,
// device detail, sites and their convergence, reconfiguration, revocation,
// the audit log and token management.
//
// The pages are plain HTML with a little JavaScript of our own, no
// framework and no build step. They talk only to the ops API on the same
// origin with the same bearer tokens, kept in the tab's sessionStorage, and
// load nothing from anywhere else (the Content-Security-Policy says so).
package web

import (
	"embed"
	"io/fs"
	"net/http"
	"path"
	"strings"
)

//go:embed static
var static embed.FS

// csp allows only this origin: scripts, styles, images (and the camera's
// blob: frames), fetches. Inline scripts and styles are refused too.
const csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; " +
	"media-src 'self' blob: mediastream:; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"

// Pages maps a page's path to its file.
var Pages = map[string]string{
	"/claim":   "claim.html",
	"/console": "console.html",
}

// Handler serves the pages at their paths (Pages) and their assets under
// /ui/. / redirects to the console.
func Handler() http.Handler {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embedded tree is part of the binary
	}
	files := http.FileServerFS(sub)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", csp)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Permissions-Policy", "camera=(self), microphone=(), geolocation=()")
		switch {
		case r.URL.Path == "/":
			http.Redirect(w, r, "/console", http.StatusFound)
		case Pages[r.URL.Path] != "":
			h.Set("Cache-Control", "no-store")
			http.ServeFileFS(w, r, sub, Pages[r.URL.Path])
		case strings.HasPrefix(r.URL.Path, "/ui/") && path.Ext(r.URL.Path) != ".html":
			h.Set("Cache-Control", "no-cache")
			r2 := r.Clone(r.Context())
			r2.URL.Path = strings.TrimPrefix(r.URL.Path, "/ui")
			files.ServeHTTP(w, r2)
		default:
			http.NotFound(w, r)
		}
	})
}
