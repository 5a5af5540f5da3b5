//! The `retry-scheduler` binary: configuration from the environment, then [`retry_scheduler::run`].

fn main() -> std::process::ExitCode {
    shared::service::main(retry_scheduler::NAME, retry_scheduler::run)
}
