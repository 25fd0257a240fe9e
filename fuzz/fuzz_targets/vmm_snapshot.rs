// SPDX-License-Identifier: Apache-2.0
//! Fuzzes vmm::snapshot::fuzz_snapshot (see that function for the input format).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vmm::snapshot::fuzz_snapshot(data));
