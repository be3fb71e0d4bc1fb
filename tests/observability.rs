//! The observability files in `dashboards/` checked with Prometheus's own
//! tool: the alert rules parse and pass their unit tests (each alert fires on
//! a series made to trip it and stays quiet on a healthy one), and the example
//! scrape configuration is valid with its rule file.

use std::path::Path;
use std::process::Command;

/// Runs `promtool` with `args` in `dashboards/` and returns what it said; a
/// failure fails the test with that text.
fn promtool(args: &[&str]) -> Option<String> {
    let promtool = courier_testkit::tool("promtool")?;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards");
    let out = Command::new(promtool).args(args).current_dir(dir).output().expect("promtool runs");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?}:\n{said}");
    Some(said)
}

#[test]
fn alert_rules_parse_and_pass_their_unit_tests() {
    let Some(said) = promtool(&["check", "rules", "alerts.yml"]) else { return };
    assert!(said.contains("SUCCESS: 9 rules found"), "{said}");
    let Some(said) = promtool(&["test", "rules", "alerts_test.yml"]) else { return };
    assert!(said.contains("SUCCESS"), "{said}");
}

#[test]
fn the_example_scrape_configuration_is_valid() {
    let Some(said) = promtool(&["check", "config", "prometheus.yml"]) else { return };
    assert!(said.contains("1 rule files found"), "{said}");
}
