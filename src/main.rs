//! The `fanout` node binary: parse the config, set up logging, run until SIGTERM/SIGINT.

use fanout::{Config, Listeners};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let mut config = match Config::load() {
        Ok(c) => c,
        Err(line) => {
            eprintln!("fanout: {line}");
            return std::process::ExitCode::from(2);
        }
    };
    // Chosen here, not in `run`, so every log line carries it from the first one.
    let node_id = config
        .node_id
        .get_or_insert_with(|| uuid::Uuid::new_v4().to_string())
        .clone();
    fanout::logging::init(config.log_format, &node_id);

    let listeners = match Listeners::bind(&config).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "fanout: cannot listen on {}:{}/{}: {e}",
                config.bind_addr, config.port, config.admin_port
            );
            return std::process::ExitCode::from(1);
        }
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    match fanout::run(config, listeners, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fanout: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn cancel_on_signal(token: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    token.cancel();
}
