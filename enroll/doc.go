// Package enroll is provisiond's enrollment workflow and fleet operations,
// independent of any transport or storage engine.
//
// # Basics
//
// [Service.Enroll] runs the same steps whatever the wire: validate the
// request (sizes, CSR parse, proof of possession, allowed key type), check
// throttling, authenticate the claim token against its stored SHA-256 hash
// in constant time, apply the lifecycle rules, sign the certificate
// (outside any transaction), then commit the device, its lease and an audit
// event in one store transaction and render the site profile into the
// device's config. A device that repeats its request with the same key
// within the retry window gets the same answer again.
//
// [Fleet] applies operators' changes (sites, factory batches, revocations,
// reconfigurations) with validation and audit events; what touches many
// devices runs as a job of chunks (devices.Job) that a restart resumes
// ([Fleet.ResumeJobs]). [Rollouts] changes firmware targets, [Access] API
// tokens and server certificates. [ParseManifest] reads factory manifests.
// Every method that reaches the inventory takes a context.
//
// The package declares the small interfaces it needs ([Store], [Registry],
// [TokenStore], [RolloutStore], [Signer], [Clock], [Images]) and what it
// tells of its changes ([Notifier], [FleetEvents]); package devices and
// package pki implement the first, the server's front ends hear the rest.
// It links no storage engine and no CA library: the certificate profile it
// needs is package pki/profile.
//
// # Caveats
//
// Throttling state lives in memory: a restart forgets it, and several
// replicas throttle independently. Unknown serials and wrong tokens cost the
// same and answer the same ([ErrUnauthorized]).
package enroll
