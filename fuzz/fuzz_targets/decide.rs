//! `WorkloadPolicy::decide` on arbitrary request facts against fixed,
//! realistic configs: Calico's YAO Bank tutorial (as `control` compiles it) and
//! a generated one with 100 rules over 10,000 pod addresses.
//!
//! Facts are drawn from the configs' own vocabulary as well as at random:
//! known pod addresses (also as IPv4-mapped IPv6), their neighbours, rule
//! CIDRs, arbitrary v4/v6; plaintext or mTLS with the owner's SPIFFE id, a
//! variation of it, someone else's, or arbitrary URI SANs; known or arbitrary
//! methods and paths. Every decision must keep the invariants in
//! `krites_fuzz::check_decision`.
#![no_main]

use krites_fuzz::decide::{run, Input};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: Input| run(&input));
