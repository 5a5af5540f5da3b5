//! The platform-wide tests: end to end, chaos, hostile input, the deployment manifests and
//! monitoring — everything that needs more than one service, or the repository as a whole.

use platform_tests as common;

mod bench;
mod catch_up;
mod chaos;
mod deploy;
mod direct_producers;
mod dockerfile;
mod e2e;
mod headers;
mod hostile;
mod monitoring;
mod reads;
mod signatures;
mod workloads;
