//! The PostgreSQL connection of the commands that read or write the database directly (`dlq`,
//! `events replay`): one client, with the configured schema as its search path.

use secrecy::ExposeSecret as _;
use shared::Config;

use crate::CliError;

pub async fn connect(config: &Config) -> Result<tokio_postgres::Client, CliError> {
    let mut pg: tokio_postgres::Config =
        config.database.url.expose_secret().parse().map_err(|_| {
            CliError::usage(
                "database.url is not a PostgreSQL URL",
                "see docs/configuration.md",
            )
        })?;
    if let Some(schema) = &config.database.schema {
        pg.options(format!("-csearch_path={schema}"));
    }
    let (client, connection) = pg.connect(tokio_postgres::NoTls).await.map_err(|e| {
        CliError::failed(
            format!("cannot connect to PostgreSQL: {}", shared::error_chain(&e)),
            "check HARBORHOOK_DATABASE__URL (and that the database is up: `harborctl dev status`)",
        )
    })?;
    tokio::spawn(connection);
    Ok(client)
}
