//! `migrate`: applies the SQL migrations of this build (shared::db) and says which ran.

#![allow(clippy::print_stdout)] // A CLI's output is its job.

use anyhow::Context as _;
use serde_json::json;
use shared::Config;

fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub async fn migrate(config: &Config, json: bool) -> anyhow::Result<()> {
    let pool = shared::db::pool(&config.database)?;
    let report = shared::db::migrate(&pool, config.database.schema.as_deref())
        .await
        .context("applying migrations (is PostgreSQL running? see `scripts/stack.sh status`)")?;
    if json {
        return print_json(&json!(report));
    }
    if report.applied.is_empty() {
        println!(
            "database is up to date ({} migrations)",
            report.already.len()
        );
    } else {
        println!(
            "applied migrations {:?}; {} were already applied",
            report.applied,
            report.already.len()
        );
    }
    Ok(())
}
