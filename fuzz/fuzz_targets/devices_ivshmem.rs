// SPDX-License-Identifier: Apache-2.0
//! Fuzzes devices::fuzzing::fuzz_ivshmem (see that function for the input format).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| devices::fuzzing::fuzz_ivshmem(data));
