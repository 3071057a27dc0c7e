package httpapi

import (
	"net/http"

	"github.com/provisiond/provisiond/enroll"
)

func (a *API) getMetrics(w http.ResponseWriter, r *http.Request, _ enroll.Actor) {
	if a.metrics == nil {
		writeError(w, http.StatusNotFound, "not_found", "metrics are not enabled")
		return
	}
	a.metrics.ServeHTTP(w, r)
}

func (a *API) readyz(w http.ResponseWriter, r *http.Request, _ enroll.Actor) {
	if a.ready != nil {
		if err := a.ready(r.Context()); err != nil {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "reason": err.Error()})
			return
		}
	}
	writeJSON(w, 200, map[string]string{"status": "ready"})
}

func (a *API) getCluster(w http.ResponseWriter, r *http.Request, _ enroll.Actor) {
	if a.cluster == nil {
		writeError(w, http.StatusNotFound, "not_clustered", "this server's inventory is its own bbolt file, not a cluster's (see docs/cluster.md)")
		return
	}
	st, err := a.cluster(r.Context())
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (a *API) getBackup(w http.ResponseWriter, r *http.Request, actor enroll.Actor) {
	if a.backup == nil {
		writeError(w, http.StatusNotFound, "not_found", "backup is not enabled")
		return
	}
	w.Header().Set("Content-Type", "application/x-tar")
	w.Header().Set("Content-Disposition", `attachment; filename="provisiond-backup.tar"`)
	if err := a.backup(r.Context(), w); err != nil {
		// Headers are gone: the client sees a truncated tar and an error in the log.
		a.log.Error("backup failed", "err", err, "actor", actor.Name)
		return
	}
	a.log.Info("backup taken", "actor", actor.Name)
}
