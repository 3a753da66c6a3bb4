//! `fanout-bench`: a load generator for a fanout cluster, speaking Engine.IO v4 / Socket.IO over
//! websocket through [`fanout_client`] (tokio-tungstenite underneath, no heavy client crate).
//!
//! One run: create rooms through the server API (`POST /api/v1/chats`, fresh chat ids per run),
//! connect `--clients` sockets round-robin over `--url`s (spread over source addresses of
//! 127.0.0.0/8 when there are more than one source port range can hold), let `--senders` of them
//! send `chat:send` with an ACK at a total `--rate`, and let every client account for the
//! `chat:message` events it receives. Each message's content carries its sender, sequence
//! number and send time, so receivers measure end-to-end latency and count lost, duplicated and
//! reordered messages per (sender, room). Messages sent during `--warmup` are excluded from the
//! figures. Traffic goes only to loopback URLs unless `--allow-remote`.
//!
//! Output: a progress line per second on stderr, a human summary on stdout, and with `--out`
//! a JSON file with every figure and the exact command line.

mod account;
mod admin;
mod args;
mod connect;
mod measure;
mod progress;
mod recover;
mod refresh;
mod report;
mod sender;
mod setup;
mod stats;
mod sys;

use std::process::ExitCode;

use clap::Parser;

use args::{Args, validate};
use progress::Progress;
use setup::Run;
use stats::now_us;

/// Exits with 2 on bad arguments (before anything was touched), 1 when the run failed.
fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = validate(&args) {
        eprintln!("fanout-bench: {e}");
        return ExitCode::from(2);
    }
    let threads = args.threads.unwrap_or_else(sys::nproc).max(1);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fanout-bench: runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(args, threads)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fanout-bench: {e}");
            ExitCode::from(1)
        }
    }
}

/// One run, phase by phase: each phase takes what the earlier ones produced and returns what
/// it did. A phase that fails ends the run there; a failed room creation first deletes the
/// rooms it did create.
async fn run(args: Args, threads: usize) -> Result<(), String> {
    now_us(); // fixes the time base
    let started = report::Started::now();
    let run = Run::start(args, threads)?;
    let progress = Progress::spawn(&run.counters, &run.recv, run.args.clients);
    let rooms = match setup::create_rooms(&run).await {
        Ok(rooms) => rooms,
        Err(failed) => {
            progress.cancel();
            if let Some(admin) = &run.admin {
                setup::delete_rooms(admin, &run.recv, &failed.created).await;
            }
            return Err(failed.error);
        }
    };
    let clients = connect::connect(&run).await;
    let joins = connect::join(&run, &clients).await;
    let supervisors = connect::supervise(&run, &clients);
    let refresher = refresh::Refresher::spawn(&run, &clients);
    let sent = measure::send(&run, &clients).await?;
    let totals = account::account(&run, &clients, supervisors, &sent).await;
    let refreshes = match refresher {
        Some(r) => Some(r.stop().await),
        None => None,
    };
    progress.stop().await;
    let close_secs = setup::close(&run, &clients.slots, &rooms.created).await;
    report::report(
        &run,
        report::Outcome {
            started,
            rooms: &rooms,
            clients: &clients,
            joins: &joins,
            sent: &sent,
            totals: &totals,
            refreshes: refreshes.as_deref(),
            close_secs,
        },
    )
}
