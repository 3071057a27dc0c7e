package devices

// SetIndexChunk makes index building use chunks of n devices until the
// returned function restores the default.
func SetIndexChunk(n int) (restore func()) {
	old := indexChunk
	indexChunk = n
	return func() { indexChunk = old }
}

// SetAuditMoveChunk makes the audit move use chunks of n events until the
// returned function restores the default.
func SetAuditMoveChunk(n int) (restore func()) {
	old := auditMoveChunk
	auditMoveChunk = n
	return func() { auditMoveChunk = old }
}

// DecodeAuditRecord and EncodeAuditRecord read and write a stored audit
// event as the store does (tests that tamper with the file).
func DecodeAuditRecord(raw []byte) (AuditEvent, error) {
	var ev AuditEvent
	err := decodeAuditRecord(raw, &ev)
	return ev, err
}

func EncodeAuditRecord(ev AuditEvent) ([]byte, error) { return encodeAuditEvent(&ev) }
