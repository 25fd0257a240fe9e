// SPDX-License-Identifier: Apache-2.0
//! Host unit tests of the test guest's pure modules (their `#[cfg(test)]`
//! modules): the guest itself is `no_std`/`no_main` and cannot run them.
//! The module tree mirrors the guest's so `crate::mem` resolves the same.

// Guest code the tests do not call would warn here; in the guest it is used.
#![allow(dead_code)]

#[path = "guest/src/acpi.rs"]
mod acpi;
#[path = "guest/src/cmdline.rs"]
mod cmdline;
#[path = "guest/src/mem.rs"]
mod mem;
