//! The `fanout` node binary: parse the config, set up logging, run until SIGTERM/SIGINT.

use fanout::{Config, Listeners};
use tokio_util::sync::CancellationToken;

#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    raise_nofile();

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

/// Every socket is a file descriptor: lift the soft `RLIMIT_NOFILE` (often 1 024) to the hard
/// limit the operator granted, so a node takes as many connections as it was allowed to.
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    let raised = unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && {
            let soft = lim.rlim_cur;
            lim.rlim_cur = lim.rlim_max;
            soft == lim.rlim_max || libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0
        }
    };
    if raised {
        tracing::info!(nofile = lim.rlim_cur, "file descriptor limit");
    } else {
        tracing::warn!(
            nofile = lim.rlim_cur,
            "could not raise the file descriptor limit"
        );
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
