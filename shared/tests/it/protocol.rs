//! The protocol's words written as SQL literals stay the words of its types: every delivery
//! status and dead-letter reason a query names is one `DeliveryStatus` / `DeadLetterReason`
//! knows, and the table's CHECK lists exactly the statuses the type has. (Queries keep some
//! literals on purpose: `status = 'dead_lettered'` matches the partial index of migration 0001,
//! which a bound parameter would not.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use shared::domain::DeliveryStatus;
use shared::records::DeadLetterReason;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Every `.rs` file of the workspace's crates (not `target/`).
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if path.is_dir() {
            if !name.starts_with('.') && name != "target" {
                sources(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

/// The quoted words after `column op` for each `op` in `ops`, e.g. `status <> 'delivered'`.
fn literals(text: &str, column: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (at, _) in text.match_indices(column) {
        // A whole word: not `d.status` is fine, `last_status` is not.
        let before = text[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = text[at + column.len()..].trim_start();
        let rest = ["<>", "!=", "="]
            .iter()
            .find_map(|op| rest.strip_prefix(op))
            .map(str::trim_start);
        if let Some(quoted) = rest.and_then(|r| r.strip_prefix('\''))
            && let Some(end) = quoted.find('\'')
        {
            found.push(quoted[..end].to_owned());
        }
    }
    found
}

#[test]
fn status_literals_in_queries_are_delivery_statuses() {
    let statuses: BTreeSet<&str> = DeliveryStatus::ALL.iter().map(|s| s.as_str()).collect();
    let reasons: BTreeSet<&str> = DeadLetterReason::ALL.iter().map(|r| r.as_str()).collect();
    let mut files = Vec::new();
    sources(&workspace(), &mut files);
    assert!(files.len() > 50, "found only {} sources", files.len());
    let (mut seen_status, mut seen_reason) = (0, 0);
    for file in &files {
        if file.ends_with("protocol.rs") {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("read source");
        for word in literals(&text, "status") {
            assert!(
                statuses.contains(word.as_str()),
                "{}: status '{word}' is not a DeliveryStatus",
                file.display()
            );
            seen_status += 1;
        }
        for word in literals(&text, "dead_letter_reason") {
            assert!(
                reasons.contains(word.as_str()),
                "{}: dead_letter_reason '{word}' is not a DeadLetterReason",
                file.display()
            );
            seen_reason += 1;
        }
    }
    // The scan finds the literals there are (so it cannot pass by finding nothing).
    assert!(seen_status >= 4, "{seen_status} status literals found");
    assert!(
        seen_reason >= 1,
        "{seen_reason} dead-letter reason literals found"
    );
}

#[test]
fn the_status_check_lists_exactly_the_delivery_statuses() {
    let sql = std::fs::read_to_string(workspace().join("schemas/sql/0001_initial.sql"))
        .expect("migration 0001");
    let at = sql.find("CHECK (status IN (").expect("the status CHECK");
    let list = &sql[at + "CHECK (status IN (".len()..];
    let list = &list[..list.find(')').expect("end of list")];
    let listed: BTreeSet<String> = list
        .split(',')
        .map(|w| w.trim().trim_matches('\'').to_owned())
        .collect();
    let known: BTreeSet<String> = DeliveryStatus::ALL
        .iter()
        .map(|s| s.as_str().to_owned())
        .collect();
    assert_eq!(listed, known);
}

#[test]
fn the_literal_scan_reads_sql_as_written() {
    let sql = "WHERE d.status = 'dead_lettered' AND last_status = 'x' AND status <> 'delivered'";
    assert_eq!(literals(sql, "status"), ["dead_lettered", "delivered"]);
}
