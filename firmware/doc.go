// Package firmware owns which image each device should run and how it gets
// there: a catalogue of firmware images, content-addressed by SHA-256 on
// disk, each described by a manifest that provisiond signs with its own
// Ed25519 firmware key; target versions per model, per site and per
// device; and staged rollouts.
//
// # Basics
//
// [Open] opens (and on first start creates) the catalogue in a directory:
//
//	firmware/
//	  signing.key          Ed25519 private key, encrypted PKCS#8 (0600)
//	  signing.pub          its public key, PEM (what devices get)
//	  images/<sha256>      image bytes, named by their digest only
//	  manifests/<model>/<version>.json   signed manifests
//
// [Catalogue.Add] streams an image in, hashes it, stores it under its
// digest and writes a signed manifest. A name given by a user never becomes
// a path: models and versions are checked against a narrow alphabet, and
// images are opened by a validated hex digest.
//
// A device verifies a [Signed] manifest with the catalogue's public key
// ([Verify]), then the image against the manifest's size and digest
// ([Manifest.CheckImage]), then that the manifest is for its model and not
// below what it runs or may run ([Manifest.Allows]).
//
// # Caveats
//
// The signing key is encrypted with the same master secret as the CA keys:
// losing it means a new key, which devices only learn at their next
// bootstrap or config push.
package firmware
