//! `harborctl`: the operator CLI. Output is a readable table or summary by default and JSON
//! with `--json`; exit codes: 0 success, 1 the operation failed, 2 bad usage or configuration,
//! 3 not found, 4 not authorised (docs/harborctl.md).

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand};
use shared::Config;

mod api;
mod bench;
mod config_check;
mod db;
mod dev;
mod dlq;
mod events_replay;
mod fleet;
mod migrate;
mod output;
mod pace;
mod produce;
mod receiver;
mod token;
mod topics;
mod verify;

/// A failure with what to do next; `code` is the exit code.
#[derive(Debug)]
pub struct CliError {
    pub message: String,
    pub hint: String,
    pub code: u8,
}

impl CliError {
    fn new(code: u8, message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            hint: hint.into(),
            code,
        }
    }
    pub fn failed(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self::new(1, message, hint)
    }
    pub fn usage(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self::new(2, message, hint)
    }
    pub fn not_found(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self::new(3, message, hint)
    }
    pub fn auth(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self::new(4, message, hint)
    }
    /// The command already said everything; only the exit code remains.
    pub fn silent(code: u8) -> Self {
        Self::new(code, "", "")
    }
}

impl From<anyhow::Error> for CliError {
    fn from(e: anyhow::Error) -> Self {
        Self::failed(format!("{e:#}"), "")
    }
}

impl From<tokio_postgres::Error> for CliError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::failed(
            format!("database: {}", shared::error_chain(&e)),
            "check that migrations are applied (`harborctl migrate`) and PostgreSQL is up",
        )
    }
}

impl From<shared::store::replay::ReplayError> for CliError {
    fn from(e: shared::store::replay::ReplayError) -> Self {
        use shared::store::replay::ReplayError as E;
        match &e {
            E::Text { field, .. } => Self::usage(
                e.to_string(),
                match *field {
                    "reason" => {
                        "pass --reason '…': a sentence or two of plain text (it is recorded)"
                    }
                    _ => "pass --by: a name, on one line",
                },
            ),
            E::Database(_) => Self::failed(
                format!("database: {}", shared::error_chain(&e)),
                "check that PostgreSQL is up; nothing after the last committed batch was replayed — run the same command again",
            ),
            E::Unavailable { .. } => Self::failed(
                shared::error_chain(&e),
                "the broker is unreachable; nothing after the last committed batch was replayed — run the same command again",
            ),
        }
    }
}

impl From<rdkafka::error::KafkaError> for CliError {
    fn from(e: rdkafka::error::KafkaError) -> Self {
        Self::failed(
            format!("kafka: {e}"),
            "check HARBORHOOK_KAFKA__BOOTSTRAP and that the broker is up (`harborctl dev status`)",
        )
    }
}

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
    #[command(flatten)]
    conn: api::Conn,
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
    /// Endpoints of a tenant (over the API).
    Endpoints {
        #[command(subcommand)]
        command: api::EndpointsCommand,
    },
    /// Subscriptions of a tenant (over the API).
    Subscriptions {
        #[command(subcommand)]
        command: api::SubscriptionsCommand,
    },
    /// Events: publish, list, get (API); produce raw, replay a time range (Kafka).
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// Deliveries and their attempts (over the API).
    Deliveries {
        #[command(subcommand)]
        command: api::DeliveriesCommand,
    },
    /// The dead-letter queue (PostgreSQL and Kafka, operator configuration).
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Development tokens, signed by the local key pair (never for production).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// The local development stack (PostgreSQL, the broker and the services).
    Dev {
        #[command(subcommand)]
        command: DevCommand,
    },
    /// Check a received webhook's signature, as a receiver should.
    VerifySignature {
        /// The endpoint's secret (`whsec_…`): checks the `v1` (or original-scheme) signature.
        #[arg(
            long,
            required_unless_present = "public_key",
            conflicts_with = "public_key"
        )]
        secret: Option<String>,
        /// The endpoint's public key (`whpk_…`, `endpoints public-key`): checks `v1a` instead.
        #[arg(long)]
        public_key: Option<String>,
        /// A received header, `Name: value` (repeatable): the id, timestamp and signature.
        #[arg(long = "header")]
        headers: Vec<String>,
        /// The raw body as received.
        #[arg(long)]
        body_file: std::path::PathBuf,
        /// Also require the timestamp within this much of now (e.g. `5m`).
        #[arg(long, value_parser = humantime::parse_duration)]
        tolerance: Option<std::time::Duration>,
    },
    /// Drive the running pipeline and measure it (operator token; see docs/performance.md).
    Bench {
        #[command(flatten)]
        args: bench::BenchArgs,
    },
    /// Run a local webhook receiver that verifies signatures and logs what it gets.
    Receiver {
        #[arg(long, default_value = "127.0.0.1:9200")]
        listen: std::net::SocketAddr,
        /// The endpoint's secret (`whsec_…`).
        #[arg(long)]
        secret: String,
    },
    /// Tenants (operator token).
    Tenants {
        #[command(subcommand)]
        command: api::TenantsCommand,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand)]
enum EventsCommand {
    /// Write event envelopes (JSON lines on standard input) to the events topic, as a direct
    /// producer would.
    Produce,
    /// Publish one event through the API.
    Publish {
        #[arg(long = "type")]
        event_type: String,
        /// The payload, a JSON object.
        #[arg(long)]
        data: String,
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    List {
        #[arg(long = "type")]
        event_type: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
        #[arg(long)]
        cursor: Option<String>,
    },
    Get {
        id: String,
    },
    /// Re-fan-out the events of a time range to current subscriptions (or one endpoint).
    Replay {
        #[command(flatten)]
        replay: ReplayArgs,
        /// From (RFC 3339, or a duration ago such as `2h`).
        #[arg(long, value_parser = pace::parse_time)]
        since: chrono::DateTime<chrono::Utc>,
        /// Until, exclusive (default: now).
        #[arg(long, value_parser = pace::parse_time)]
        until: Option<chrono::DateTime<chrono::Utc>>,
        #[arg(long = "tenant-id")]
        tenant_id: Option<shared::ids::TenantId>,
        #[arg(long = "type")]
        event_type: Option<String>,
        /// Send only to this endpoint (of the event's tenant).
        #[arg(long)]
        endpoint: Option<shared::ids::EndpointId>,
    },
}

/// What every replay takes.
#[derive(Debug, Clone, clap::Args)]
struct ReplayArgs {
    /// Count and show a sample; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Most records per second.
    #[arg(long)]
    rate: Option<f64>,
    /// Send again what an earlier replay of the same selection already sent.
    #[arg(long)]
    force: bool,
    /// Why (recorded with the replay; required unless --dry-run).
    #[arg(long, default_value = "")]
    reason: String,
    /// Who (recorded; default $USER).
    #[arg(long)]
    by: Option<String>,
}

impl ReplayArgs {
    fn by(&self) -> String {
        self.by
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "harborctl".into())
    }
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Dead-lettered deliveries, oldest first.
    List {
        #[command(flatten)]
        filter: dlq::Filter,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// One dead letter with its whole history.
    Show { id: shared::ids::DeliveryId },
    /// Send the selected dead letters again (same webhook-id), once each.
    Replay {
        #[command(flatten)]
        filter: dlq::Filter,
        #[command(flatten)]
        replay: ReplayArgs,
        /// At most this many.
        #[arg(long)]
        limit: Option<i64>,
    },
}

#[derive(Subcommand)]
enum DevCommand {
    /// Start (or reuse) PostgreSQL and the broker, migrate, create topics, start the four
    /// services in the background and wait until they are ready.
    Up,
    /// Stop the services and what `up` started of the stack.
    Down,
    /// What runs, where, and where its logs are.
    Status,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create the development key pair and JWKS file if missing; print the JWKS path.
    Init {
        #[arg(long, default_value = ".stack/auth")]
        keys_dir: std::path::PathBuf,
    },
    /// Print a token for a tenant, or with the operator scope.
    /// The tenant it is bound to is the global `--tenant` (or `HARBORHOOK_TENANT`).
    Issue {
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
    /// The topics as the broker has them, and each service group's lag per partition.
    Describe,
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
    match runtime.block_on(dispatch(cli, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !e.message.is_empty() {
                eprintln!("harborctl: {}", e.message);
            }
            if !e.hint.is_empty() {
                eprintln!("hint: {}", e.hint);
            }
            ExitCode::from(e.code)
        }
    }
}

async fn dispatch(cli: Cli, config: Config) -> Result<(), CliError> {
    let json = cli.json;
    let api = || api::Api::new(&cli.conn);
    match cli.command {
        Command::Migrate => Ok(migrate::migrate(&config, json).await?),
        Command::Topics { command } => match command {
            TopicsCommand::Ensure => Ok(topics::ensure(&config, json).await?),
            TopicsCommand::List => Ok(topics::list_topics(&config, json)?),
            TopicsCommand::Describe => topics::describe(&config, json).await,
        },
        Command::Config {
            command: ConfigCommand::Check,
        } => Ok(config_check::check_config(&config, json)?),
        Command::Endpoints { command } => api::endpoints(&api()?, json, command).await,
        Command::Subscriptions { command } => api::subscriptions(&api()?, json, command).await,
        Command::Deliveries { command } => api::deliveries(&api()?, json, command).await,
        Command::Events { command } => match command {
            EventsCommand::Produce => Ok(produce::produce(&config, json).await?),
            EventsCommand::Publish {
                event_type,
                data,
                idempotency_key,
            } => api::publish(&api()?, json, event_type, data, idempotency_key).await,
            EventsCommand::List {
                event_type,
                limit,
                cursor,
            } => api::list_events(&api()?, json, event_type, limit, cursor).await,
            EventsCommand::Get { id } => api::get_event(&api()?, json, &id).await,
            EventsCommand::Replay {
                replay,
                since,
                until,
                tenant_id,
                event_type,
                endpoint,
            } => {
                let r = events_replay::EventsReplay {
                    since,
                    until: until.unwrap_or_else(chrono::Utc::now),
                    tenant: tenant_id,
                    event_type,
                    endpoint,
                    dry_run: replay.dry_run,
                    rate: replay.rate,
                    force: replay.force,
                    by: replay.by(),
                    reason: replay.reason,
                };
                events_replay::events(&config, json, r).await
            }
        },
        Command::Dlq { command } => match command {
            DlqCommand::List { filter, limit } => dlq::list(&config, json, &filter, limit).await,
            DlqCommand::Show { id } => dlq::show(&config, json, id).await,
            DlqCommand::Replay {
                filter,
                replay,
                limit,
            } => {
                let opts = dlq::ReplayOptions {
                    dry_run: replay.dry_run,
                    rate: replay.rate,
                    force: replay.force,
                    by: replay.by(),
                    reason: replay.reason,
                    limit,
                };
                dlq::replay(&config, json, &filter, opts).await
            }
        },
        Command::Token { command } => Ok(match command {
            TokenCommand::Init { keys_dir } => token::init(&keys_dir, json),
            TokenCommand::Issue {
                operator,
                ttl,
                subject,
                keys_dir,
            } => {
                let tenant = cli
                    .conn
                    .tenant
                    .as_deref()
                    .map(str::parse::<shared::ids::TenantId>)
                    .transpose()
                    .map_err(|e| CliError::usage(format!("--tenant: {e}"), "pass a ten_… id"))?;
                token::issue(&config, &keys_dir, tenant, operator, ttl, &subject, json)
            }
        }?),
        Command::Dev { command } => dev::dev(match command {
            DevCommand::Up => "up",
            DevCommand::Down => "down",
            DevCommand::Status => "status",
        }),
        Command::VerifySignature {
            secret,
            public_key,
            headers,
            body_file,
            tolerance,
        } => {
            let body = std::fs::read(&body_file).map_err(|e| {
                CliError::usage(
                    format!("{}: {e}", body_file.display()),
                    "pass the raw body as a file",
                )
            })?;
            let key = match (secret, public_key) {
                (Some(s), _) => verify::Key::Secret(s),
                (None, Some(k)) => verify::Key::Public(k),
                // clap requires one of the two.
                (None, None) => verify::Key::Secret(String::new()),
            };
            verify::verify(json, &key, &headers, &body, tolerance)
        }
        Command::Bench { args } => bench::run(&api()?, &config, json, args).await,
        Command::Receiver { listen, secret } => receiver::run(listen, &secret, json).await,
        Command::Tenants { command } => api::tenants(&api()?, json, command).await,
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "harborctl",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// Global flags and subcommand flags share one namespace of ids in clap; a clash only
    /// shows when the value is read, so read every filter once.
    #[test]
    fn filters_and_global_flags_do_not_collide() {
        let t = shared::ids::TenantId::new().to_string();
        let cli = Cli::try_parse_from([
            "harborctl",
            "--tenant",
            &t,
            "dlq",
            "list",
            "--tenant-id",
            &t,
        ])
        .expect("parses");
        let Command::Dlq {
            command: DlqCommand::List { filter, .. },
        } = cli.command
        else {
            panic!("dlq list");
        };
        assert_eq!(filter.tenant_id.map(|x| x.to_string()), Some(t.clone()));
        assert_eq!(cli.conn.tenant, Some(t.clone()));
        let cli = Cli::try_parse_from(["harborctl", "token", "issue", "--tenant", &t])
            .expect("token issue --tenant parses");
        assert_eq!(cli.conn.tenant, Some(t));
    }
}
