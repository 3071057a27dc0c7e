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
