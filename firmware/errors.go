package firmware

import "errors"

var (
	// ErrInvalid is returned when a model, version, digest or manifest field
	// is malformed.
	ErrInvalid = errors.New("invalid")
	// ErrNotFound is returned when no image or manifest matches.
	ErrNotFound = errors.New("not found")
	// ErrExists is returned when a model already has a different image under
	// the same version.
	ErrExists = errors.New("already exists")
	// ErrBadSignature is returned when a manifest's signature does not
	// verify with the firmware key.
	ErrBadSignature = errors.New("manifest signature does not verify")
	// ErrImageMismatch is returned when an image's size or digest is not
	// the manifest's.
	ErrImageMismatch = errors.New("image does not match its manifest")
	// ErrNotAllowed is returned when a manifest is for another model, is a
	// downgrade below the device's floor, or needs a newer bootloader or
	// hardware revision.
	ErrNotAllowed = errors.New("not allowed on this device")
)
