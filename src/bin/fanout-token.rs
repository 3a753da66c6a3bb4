//! `fanout-token`: mints an HS256 test token for a user, for local clusters and manual tests.

use clap::Parser;

/// Mints an HS256 JWT that a node configured with the same JWT_SECRET accepts.
#[derive(Parser)]
#[command(name = "fanout-token", version)]
struct Args {
    /// The node's JWT_SECRET.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    secret: String,
    /// The user id (`sub` claim).
    #[arg(long)]
    sub: String,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl_secs: u64,
    /// Optional `roleContextId` claim.
    #[arg(long)]
    role: Option<String>,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let exp = fanout::auth::now_secs() + args.ttl_secs;
    match fanout::auth::mint_hs256(&args.secret, &args.sub, exp, args.role.as_deref()) {
        Ok(token) => {
            println!("{token}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fanout-token: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
