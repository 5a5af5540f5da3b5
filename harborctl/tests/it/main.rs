//! harborctl's integration tests: the binary run as a process against the real PostgreSQL and
//! broker (the world of `platform_tests`).

use platform_tests as common;

mod api;
mod ops;
