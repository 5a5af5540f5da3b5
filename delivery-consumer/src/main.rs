//! The `delivery-consumer` binary: configuration from the environment, then [`delivery_consumer::run`].

fn main() -> std::process::ExitCode {
    shared::service::main(delivery_consumer::NAME, delivery_consumer::run)
}
