// SPDX-License-Identifier: Apache-2.0
//! snapshot (in progress).
