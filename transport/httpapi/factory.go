package httpapi

import (
	"encoding/pem"
	"net/http"
	"time"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/enroll"
)

// FactoryCARequest registers a manufacturer CA.
type FactoryCARequest struct {
	Certificate  string   `json:"certificate"` // PEM
	Model        string   `json:"model"`
	Batch        string   `json:"batch,omitempty"`
	Site         string   `json:"site,omitempty"`
	AutoRegister bool     `json:"auto_register,omitempty"`
	AllowExpired bool     `json:"allow_expired,omitempty"`
	SerialFields []string `json:"serial_fields,omitempty"`
}

// FactoryCAView is a registered manufacturer CA.
type FactoryCAView struct {
	ID           string    `json:"id"`
	Subject      string    `json:"subject"`
	Certificate  string    `json:"certificate"` // PEM
	Model        string    `json:"model"`
	Batch        string    `json:"batch,omitempty"`
	Site         string    `json:"site,omitempty"`
	AutoRegister bool      `json:"auto_register"`
	AllowExpired bool      `json:"allow_expired"`
	SerialFields []string  `json:"serial_fields"`
	NotAfter     time.Time `json:"not_after"`
	AddedBy      string    `json:"added_by"`
	AddedAt      time.Time `json:"added_at"`
}

type factoryCAList struct {
	CAs []FactoryCAView `json:"cas"`
}

func factoryCAView(ca devices.FactoryCA) FactoryCAView {
	return FactoryCAView{ID: ca.ID, Subject: ca.Subject, Certificate: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.CertDER})),
		Model: ca.Model, Batch: ca.Batch, Site: ca.Site, AutoRegister: ca.AutoRegister, AllowExpired: ca.AllowExpired,
		SerialFields: ca.Fields(), NotAfter: ca.NotAfter, AddedBy: ca.AddedBy, AddedAt: ca.AddedAt}
}

func (a *API) addFactoryCA(w http.ResponseWriter, r *http.Request, actor enroll.Actor) {
	var req FactoryCARequest
	if err := decode(r, &req); err != nil {
		a.fail(w, err)
		return
	}
	ca, err := a.fleet.AddFactoryCA(r.Context(), actor, enroll.FactoryCASpec{Cert: []byte(req.Certificate), Model: req.Model,
		Batch: req.Batch, Site: req.Site, AutoRegister: req.AutoRegister, AllowExpired: req.AllowExpired, SerialFields: req.SerialFields})
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, factoryCAView(ca))
}

func (a *API) listFactoryCAs(w http.ResponseWriter, r *http.Request, _ enroll.Actor) {
	cas, err := a.fleet.FactoryCAs(r.Context())
	if err != nil {
		a.fail(w, err)
		return
	}
	out := factoryCAList{CAs: []FactoryCAView{}}
	for _, ca := range cas {
		out.CAs = append(out.CAs, factoryCAView(ca))
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *API) removeFactoryCA(w http.ResponseWriter, r *http.Request, actor enroll.Actor) {
	ca, err := a.fleet.RemoveFactoryCA(r.Context(), actor, r.PathValue("id"))
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, factoryCAView(ca))
}
