package wire

// Bundle is what the factory flashes into one device, written by
// `provctl factory mint` as DIR/<serial>.json: the device's serial and claim
// token, the root CA it must trust, and where to enroll.
type Bundle struct {
	Serial     string   `json:"serial"`
	ClaimToken string   `json:"claim_token"`
	RootCA     string   `json:"root_ca"`   // PEM
	Endpoints  []string `json:"endpoints"` // e.g. "coaps://prov.example.net:5684"
	Model      string   `json:"model,omitempty"`
	// A factory certificate (IDevID) and its key, when the batch was minted
	// with --idevid: PEM, the device's certificate first, then any
	// manufacturer intermediates. A device with one may enroll with it in
	// place of the claim token (EST, EST-coaps, /enroll over mutual TLS).
	IDevID    string `json:"idevid,omitempty"`
	IDevIDKey string `json:"idevid_key,omitempty"`
	// LwM2MPSK is the device's LwM2M bootstrap PSK in hex, when the batch
	// was minted with --lwm2m-psk; its identity is the endpoint name.
	LwM2MPSK string `json:"lwm2m_psk,omitempty"`
}

// Manifest is the batch manifest `provctl factory mint` writes beside the
// bundles (manifest.json). It carries token hashes, never tokens.
type Manifest struct {
	BatchID string        `json:"batch_id"`
	Model   string        `json:"model"`
	Site    string        `json:"site,omitempty"`
	Devices []ManifestRow `json:"devices"`
}

// ManifestRow is one device of a Manifest.
type ManifestRow struct {
	Serial         string `json:"serial"`
	DeviceID       string `json:"device_id"`
	ClaimTokenHash string `json:"claim_token_hash"`
}
