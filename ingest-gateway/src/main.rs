//! The `ingest-gateway` binary: configuration from the environment, then [`ingest_gateway::run`].

fn main() -> std::process::ExitCode {
    shared::service::main(ingest_gateway::NAME, ingest_gateway::run)
}
