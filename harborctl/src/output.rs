//! How harborctl prints: aligned tables and `key: value` blocks for people, one JSON document
//! for scripts (`--json`), a progress line on a terminal for long operations.

#![allow(clippy::print_stdout, clippy::print_stderr)] // A CLI's output is its job.

use std::io::{IsTerminal as _, Write as _};
use std::time::Instant;

use serde_json::Value;

/// A cell's text: strings bare, null empty, everything else as JSON.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Columns `columns` of each object in `rows`, aligned.
pub fn table(columns: &[&str], rows: &[Value]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| columns.iter().map(|c| cell(&r[*c])).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|row| row[i].chars().count())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |items: Vec<String>| {
        items
            .iter()
            .zip(&widths)
            .map(|(s, w)| format!("{s:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = vec![line(columns.iter().map(|c| c.to_uppercase()).collect())];
    out.extend(cells.into_iter().map(line));
    out.join("\n")
}

/// An object as `key: value` lines.
pub fn block(v: &Value) -> String {
    match v.as_object() {
        Some(map) => {
            let width = map.keys().map(String::len).max().unwrap_or(0);
            map.iter()
                .map(|(k, v)| format!("{k:<width$}  {}", cell(v)))
                .collect::<Vec<_>>()
                .join("\n")
        }
        None => cell(v),
    }
}

/// Prints `value` as JSON with `--json`, else what `human` makes of it.
pub fn emit(json: bool, value: &Value, human: impl FnOnce(&Value) -> String) {
    if json {
        println!("{value}");
    } else {
        let text = human(value);
        if !text.is_empty() {
            println!("{text}");
        }
    }
}

/// A progress line rewritten in place on a terminal (stderr), silent otherwise and with
/// `--json`, so scripts see only the final document.
pub struct Progress {
    total: usize,
    done: usize,
    started: Instant,
    live: bool,
    last: Instant,
}

impl Progress {
    pub fn new(total: usize, json: bool) -> Self {
        Self {
            total,
            done: 0,
            started: Instant::now(),
            live: !json && std::io::stderr().is_terminal(),
            last: Instant::now(),
        }
    }

    pub fn advance(&mut self, n: usize) {
        self.done += n;
        if self.live && (self.last.elapsed().as_millis() >= 100 || self.done == self.total) {
            self.last = Instant::now();
            let width = 30;
            let filled = (self.done * width).checked_div(self.total).unwrap_or(width);
            let rate = self.done as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
            eprint!(
                "\r[{}{}] {}/{} ({rate:.0}/s)",
                "#".repeat(filled.min(width)),
                " ".repeat(width - filled.min(width)),
                self.done,
                self.total
            );
            let _ = std::io::stderr().flush();
        }
    }

    pub fn finish(&self) {
        if self.live {
            eprintln!();
        }
    }

    pub fn elapsed_secs(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_and_render_missing_cells_empty() {
        let rows = [json!({"id": "a", "n": 10}), json!({"id": "bbb", "n": null})];
        assert_eq!(table(&["id", "n"], &rows), "ID   N\na    10\nbbb");
    }
}
