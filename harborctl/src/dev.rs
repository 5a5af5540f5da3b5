//! `dev up|down|status`: the local stack and services, through the checkout's own scripts.

/// `dev up|down|status`: the stack script of the checkout harborctl runs in (found from the
/// working directory upwards), so the two never disagree.
pub fn dev(action: &str) -> Result<(), crate::CliError> {
    let cwd = std::env::current_dir().map_err(|e| crate::CliError::failed(e.to_string(), ""))?;
    let script = cwd
        .ancestors()
        .map(|d| d.join("scripts/stack.sh"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            crate::CliError::usage(
                "scripts/stack.sh not found here or above",
                "run `harborctl dev` inside a Harborhook checkout",
            )
        })?;
    // `up` starts the services too (detached); `down` stops them and the stack.
    let (script, action) = if action == "up" {
        (script.with_file_name("dev.sh"), "--detach")
    } else {
        (script, action)
    };
    let status = std::process::Command::new("bash")
        .arg(&script)
        .arg(action)
        .status()
        .map_err(|e| crate::CliError::failed(format!("running {}: {e}", script.display()), ""))?;
    if status.success() {
        Ok(())
    } else {
        Err(crate::CliError::failed(
            format!("{} {action} failed", script.display()),
            "its log lines above (and .stack/logs/) say why",
        ))
    }
}
