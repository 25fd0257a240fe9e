// SPDX-License-Identifier: Apache-2.0
//! api (in progress).
