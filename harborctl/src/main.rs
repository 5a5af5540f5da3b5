//! `harborctl`: the operator CLI. Output is a readable table or summary by default and JSON
//! with `--json`; the exit code is 0 on success, 1 when the operation failed, 2 for bad
//! configuration or usage.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shared::Config;

mod produce;
mod stack;
mod token;

#[derive(Parser)]
#[command(
    name = "harborctl",
    version,
    about = "Operate a Harborhook installation"
)]
struct Cli {
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply the database migrations this build knows (safe to run from several places at once).
    Migrate,
    /// Kafka topics of the catalog.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// The configuration, as the services would load it.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Events on Kafka.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// Development tokens, signed by the local key pair (never for production).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Subcommand)]
enum EventsCommand {
    /// Write event envelopes (JSON lines on standard input) to the events topic, as a direct
    /// producer would.
    Produce,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create the development key pair and JWKS file if missing; print the JWKS path.
    Init {
        #[arg(long, default_value = ".stack/auth")]
        keys_dir: std::path::PathBuf,
    },
    /// Print a token for a tenant, or with the operator scope.
    Issue {
        /// Tenant id (`ten_…`) the token is bound to.
        #[arg(long)]
        tenant: Option<shared::ids::TenantId>,
        /// Add the operator scope (act across tenants).
        #[arg(long)]
        operator: bool,
        /// Lifetime, e.g. `1h`, `30m`.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        #[arg(long, default_value = "harborctl")]
        subject: String,
        #[arg(long, default_value = ".stack/auth")]
        keys_dir: std::path::PathBuf,
    },
}

#[derive(Subcommand)]
enum TopicsCommand {
    /// Create every missing topic; report partition counts that differ from the configuration.
    Ensure,
    /// List the topics the configuration implies, with partitions and retention.
    List,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Load and validate the configuration; print the non-secret parts.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("harborctl: {e}");
            eprintln!("hint: see docs/configuration.md for every key and its environment variable");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("harborctl: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Migrate => stack::migrate(&config, cli.json).await,
            Command::Topics {
                command: TopicsCommand::Ensure,
            } => stack::ensure(&config, cli.json).await,
            Command::Topics {
                command: TopicsCommand::List,
            } => stack::list_topics(&config, cli.json),
            Command::Config {
                command: ConfigCommand::Check,
            } => stack::check_config(&config, cli.json),
            Command::Events {
                command: EventsCommand::Produce,
            } => produce::produce(&config, cli.json).await,
            Command::Token {
                command: TokenCommand::Init { keys_dir },
            } => token::init(&keys_dir, cli.json),
            Command::Token {
                command:
                    TokenCommand::Issue {
                        tenant,
                        operator,
                        ttl,
                        subject,
                        keys_dir,
                    },
            } => token::issue(
                &config, &keys_dir, tenant, operator, ttl, &subject, cli.json,
            ),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("harborctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
