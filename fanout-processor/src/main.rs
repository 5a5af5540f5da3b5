//! The `fanout-processor` binary: configuration from the environment, then [`fanout_processor::run`].

fn main() -> std::process::ExitCode {
    shared::service::main(fanout_processor::NAME, fanout_processor::run)
}
