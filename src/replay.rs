//! `courier replay`: the command around `courier-replay`: which queue and
//! store to use (the same `--kafka`/`--postgres`/`--data-dir` options as the
//! tiers), where the output goes, and the summary at the end.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use courier_queue::TopicReader;
use courier_queue::kafka::KafkaTopicReader;
use courier_queue::sqlite::SqliteTopicReader;
use courier_replay::Selection;
use courier_replay::report::{Progress, Summary};
use tokio_util::sync::CancellationToken;

use crate::tiers::Backends;

#[derive(Debug, Args)]
pub struct ReplayArgs {
    #[command(subcommand)]
    pub action: ReplayAction,
}

#[derive(Debug, Subcommand)]
pub enum ReplayAction {
    /// Write the selected messages as JSON lines, one object per message.
    Export(ExportArgs),
    /// Re-persist the selected messages into the history store (idempotent).
    Rebuild(RebuildArgs),
}

/// How the summary is shown.
#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
    /// The summary as JSON instead of a line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub selection: Selection,
    /// Write the messages to FILE (default: standard output).
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub report: ReportArgs,
    #[command(flatten)]
    pub backends: Backends,
}

#[derive(Debug, Args)]
pub struct RebuildArgs {
    #[command(flatten)]
    pub selection: Selection,
    #[command(flatten)]
    pub report: ReportArgs,
    #[command(flatten)]
    pub backends: Backends,
}

/// The queue's topics, read outside any group: Kafka when `--kafka` is
/// given, otherwise the embedded queue of the data directory, which must
/// exist (replay never creates one).
async fn reader(backends: &Backends) -> anyhow::Result<Box<dyn TopicReader>> {
    if let Some(brokers) = &backends.kafka {
        return Ok(Box::new(KafkaTopicReader::connect(brokers).context("connecting to Kafka")?));
    }
    let path = backends.data_dir.join("queue.sqlite");
    anyhow::ensure!(
        path.is_file(),
        "no queue to read: give --kafka BROKERS, or the --data-dir of a standalone installation ({} does not exist)",
        path.display()
    );
    Ok(Box::new(SqliteTopicReader::open(&path).await.context("opening the embedded queue")?))
}

/// Runs `courier replay`.
pub async fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            crate::shutdown_signal().await;
            stop.cancel();
        }
    });
    match args.action {
        ReplayAction::Export(args) => {
            let reader = reader(&args.backends).await?;
            let plan = courier_replay::plan(reader.as_ref(), &args.selection).await?;
            let mut out: Box<dyn std::io::Write + Send> = match &args.output {
                Some(path) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout())),
            };
            let progress = Progress::new(&plan, args.report.quiet);
            let summary =
                courier_replay::export::export(reader.as_ref(), &plan, &mut out, progress.clone(), stop).await;
            progress.finish();
            drop(out);
            report(&summary?, "exported", &args.report, args.output.is_none())
        }
        ReplayAction::Rebuild(args) => {
            let reader = reader(&args.backends).await?;
            let plan = courier_replay::plan(reader.as_ref(), &args.selection).await?;
            let (_, history) = args.backends.stores().await?;
            let progress = Progress::new(&plan, args.report.quiet);
            let summary =
                courier_replay::rebuild::rebuild(reader.as_ref(), &plan, Arc::clone(&history), progress.clone(), stop)
                    .await;
            progress.finish();
            report(&summary?, "persisted", &args.report, false)
        }
    }
}

/// Prints the summary: on standard error when the messages went to standard
/// output, else on standard output.
fn report(summary: &Summary, verb: &str, how: &ReportArgs, data_on_stdout: bool) -> anyhow::Result<()> {
    let text = if how.json { serde_json::to_string(summary)? } else { summary.line(verb) };
    if data_on_stdout {
        eprintln!("{text}");
    } else {
        let mut out = std::io::stdout().lock();
        // A closed pipe is not worth failing a finished replay for.
        let _ = writeln!(out, "{text}");
    }
    Ok(())
}
