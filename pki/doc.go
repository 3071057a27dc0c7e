// Package pki is provisiond's embedded certificate authority, built on
// smallstep: a root and an intermediate (ECDSA P-256) created on first start
// with their keys encrypted at rest, device certificates issued from an
// x509util template that an operator can replace, and short-lived server
// certificates for the service's own DTLS, TLS and HTTPS listeners.
//
// # Basics
//
// [Open] loads the CA from a directory, creating it when the directory is
// empty. [CA.IssueDevice] turns a verified CSR into a device certificate
// whose identity the server chooses: subject common name and a urn:uuid SAN
// carry the device UUID whatever names the CSR asked for.
//
// # Caveats
//
// Issuance uses smallstep's SoftCAS (the same signing path as step-ca) with a
// template parsed once at start; step's authority.Sign is not used on the hot
// path because it re-verifies the CSR and rebuilds the template per call
// (about three times the cost of the signature itself on a 2-core machine).
// The caller must have verified the CSR signature (proof of possession).
package pki
