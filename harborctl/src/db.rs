//! The PostgreSQL connection of the commands that read or write the database directly (`dlq`,
//! `events replay`): one client, with the configured schema as its search path.

use shared::Config;

use crate::CliError;

pub async fn connect(config: &Config) -> Result<tokio_postgres::Client, CliError> {
    let (mut pg, tls) = shared::db::connect_config(&config.database).map_err(|e| {
        CliError::usage(
            format!("database: {}", shared::error_chain(&e)),
            "see docs/configuration.md",
        )
    })?;
    if let Some(schema) = &config.database.schema {
        pg.options(format!("-csearch_path={schema}"));
    }
    let (client, connection) = shared::db::connect(&pg, &tls).await.map_err(|e| {
        CliError::failed(
            format!("cannot connect to PostgreSQL: {}", shared::error_chain(&e)),
            "check HARBORHOOK_DATABASE__URL (and that the database is up: `harborctl dev status`)",
        )
    })?;
    tokio::spawn(connection);
    Ok(client)
}
