//! docs/migrating-from-harbor-hook.md lists every route the gateway serves, once, and no other:
//! a route added without telling migrating users what it is fails here.

use std::collections::BTreeSet;

#[test]
fn the_migration_guide_lists_exactly_the_served_routes() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/migrating-from-harbor-hook.md"
    );
    let text = std::fs::read_to_string(path).expect("the migration guide");
    let mut listed = Vec::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | `METHOD` | `path` | yes/new | note |
        if cells.len() >= 5
            && cells[1].starts_with('`')
            && cells[2].starts_with("`/")
            && ["yes", "new"].contains(&cells[3])
        {
            listed.push((
                cells[1].trim_matches('`').to_owned(),
                cells[2].trim_matches('`').to_owned(),
                cells[3] == "yes",
            ));
        }
    }
    let unique: BTreeSet<(String, String)> = listed
        .iter()
        .map(|(m, p, _)| (m.clone(), p.clone()))
        .collect();
    assert_eq!(unique.len(), listed.len(), "a route is listed twice");
    let served: BTreeSet<(String, String)> = ingest_gateway::ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(unique, served);
    // The seven routes of the replaced system (docs/api.md#compatibility) are marked as such.
    let kept = listed.iter().filter(|(_, _, old)| *old).count();
    assert_eq!(kept, 7);
}
