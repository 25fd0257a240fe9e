// SPDX-License-Identifier: Apache-2.0
//! Fuzzes devices::fuzzing::fuzz_bus (see that function for the input format).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| devices::fuzzing::fuzz_bus(data));
