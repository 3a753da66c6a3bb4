//! What a run sets up before it connects (the file limit, source addresses, the plan of rooms
//! and senders, the rooms themselves) and takes down after the account.

use std::sync::Arc;

use futures_util::stream::{self, StreamExt};
use serde_json::json;
use tokio::time::Instant;

use crate::admin::Admin;
use crate::args::Args;
use crate::progress::Counters;
use crate::recover::Slot;
use crate::stats::Receivers;
use crate::sys;

/// What every phase of a run reads: the arguments and what is fixed before the first connect.
pub struct Run {
    pub args: Args,
    /// Tokio worker threads: the generator's CPU use is judged against them.
    pub threads: usize,
    pub limits: Limits,
    /// In chat ids and clientMsgIds, so that runs never share rooms or message ids.
    pub run_id: String,
    pub plan: Plan,
    pub recv: Arc<Receivers>,
    pub counters: Arc<Counters>,
    /// The server API of one node; none for servers without fanout's API (then `--join`).
    pub admin: Option<Admin>,
}

/// The file-descriptor limit and the source addresses, for the connects and the report.
pub struct Limits {
    pub nofile: sys::NofileLimit,
    /// Ephemeral ports per source address.
    pub ports: u64,
    pub source_ips: u32,
}

impl Run {
    /// Checks the machine can hold the clients, plans the run and announces it on stderr.
    pub fn start(args: Args, threads: usize) -> Result<Run, String> {
        let limits = limits(&args)?;
        let run_id = args
            .run_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()[..8].to_owned());
        let recv = Arc::new(Receivers::new(&run_id));
        let plan = Plan::new(&args);
        let rooms = plan.members.len();
        let counters = Arc::new(Counters::default());
        let admin = match &args.admin_url {
            Some(url) => {
                let u = sys::parse_url(url)?;
                Some(Admin {
                    host: u.host,
                    port: u.port,
                    prefix: u.path,
                    api_key: args.api_key.clone(),
                })
            }
            None => None,
        };
        let (nofile, source_ips) = (limits.nofile, limits.source_ips);
        eprintln!(
            "fanout-bench: run {run_id}: {} clients over {} node(s), {rooms} rooms of {}, {} senders \
             at {} msg/s total, {} B payloads, warm-up {}s, measure {}s; nofile {}/{}, {source_ips} \
             source address(es), {threads} worker threads",
            args.clients,
            args.urls.len(),
            args.room_size,
            args.senders,
            args.rate,
            args.payload_bytes,
            args.warmup,
            args.duration,
            nofile.soft,
            nofile.hard
        );
        Ok(Run {
            args,
            threads,
            limits,
            run_id,
            plan,
            recv,
            counters,
            admin,
        })
    }
}

/// Raises RLIMIT_NOFILE for one descriptor per client, and spreads the clients over as many
/// loopback source addresses as their ephemeral ports need.
fn limits(args: &Args) -> Result<Limits, String> {
    let nofile = sys::raise_nofile(args.clients as u64 + 1024);
    if nofile.soft < args.clients as u64 + 64 {
        return Err(format!(
            "RLIMIT_NOFILE is {} (hard {}), too low for {} clients; raise the hard limit \
             (ulimit -Hn; needs CAP_SYS_RESOURCE) or lower --clients",
            nofile.soft, nofile.hard, args.clients
        ));
    }
    let ports = sys::ephemeral_ports();
    let usable = ports * 9 / 10;
    let source_ips = if args.source_ips == 0 {
        (args.clients as u64).div_ceil(usable).max(1) as u32
    } else {
        args.source_ips
    };
    if args.clients as u64 > u64::from(source_ips) * usable {
        eprintln!(
            "fanout-bench: warning: {} clients over {source_ips} source address(es) with {ports} \
             ephemeral ports each: connects will fail for lack of ports",
            args.clients
        );
    }
    Ok(Limits {
        nofile,
        ports,
        source_ips,
    })
}

/// Who is in which room and who sends where.
pub struct Plan {
    /// Client indexes of each room's members.
    pub members: Vec<Vec<u32>>,
    /// (client, room) of each sender.
    pub senders: Vec<(u32, u32)>,
    /// Rooms of each client (`members` inverted): what it joins with `--join`, and re-joins
    /// and recovers with `--recover`.
    pub rooms_of: Vec<Vec<u32>>,
}

impl Plan {
    pub fn new(a: &Args) -> Plan {
        let rooms = a.rooms.unwrap_or(a.clients.div_ceil(a.room_size));
        let members: Vec<Vec<u32>> = (0..rooms)
            .map(|r| {
                (0..a.room_size)
                    .map(|j| ((r * a.room_size + j) % a.clients) as u32)
                    .collect()
            })
            .collect();
        let senders = (0..a.senders)
            .map(|k| {
                let room = k % rooms;
                // Shifted by k so that consecutive senders sit on different nodes (clients are
                // spread round-robin over the URLs), and distinct within a room.
                let j = (k / rooms + k) % a.room_size;
                ((((room * a.room_size) + j) % a.clients) as u32, room as u32)
            })
            .collect();
        let mut rooms_of: Vec<Vec<u32>> = vec![Vec::new(); a.clients];
        for (r, members) in members.iter().enumerate() {
            for &m in members {
                rooms_of[m as usize].push(r as u32);
            }
        }
        Plan {
            members,
            senders,
            rooms_of,
        }
    }
}

/// The user a client connects as (its token's subject), and is a member as.
pub fn user_id(client: u32) -> String {
    format!("bench-u{client}")
}

/// The rooms the run created, and how long that took.
pub struct Rooms {
    pub created: Vec<u32>,
    pub secs: f64,
}

/// A room that could not be created: the run stops, and first deletes the rooms it did create.
pub struct RoomsFailed {
    pub created: Vec<u32>,
    pub error: String,
}

/// Creates the rooms with their members through the server API (without `--admin-url`, none).
pub async fn create_rooms(run: &Run) -> Result<Rooms, RoomsFailed> {
    let (admin, recv, plan) = (&run.admin, &run.recv, &run.plan);
    let rooms = plan.members.len();
    let setup_start = Instant::now();
    let created: Vec<Result<u32, String>> = stream::iter(
        admin
            .iter()
            .flat_map(|a| (0..rooms as u32).map(move |r| (a, r))),
    )
    .map(|(admin, r)| {
        let recv = &recv;
        let plan = &plan;
        async move {
            let members: Vec<String> = plan.members[r as usize]
                .iter()
                .map(|&c| user_id(c))
                .collect();
            let body = json!({ "chatId": recv.chat_id(r), "members": members });
            match admin.call("POST", "/api/v1/chats", Some(&body)).await {
                Ok((201, _)) => Ok(r),
                Ok((status, body)) => Err(format!("create room {r}: {status} {body}")),
                Err(e) => Err(format!("create room {r}: {e}")),
            }
        }
    })
    .buffer_unordered(16)
    .collect()
    .await;
    let created_rooms: Vec<u32> = created
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    if let Some(Err(e)) = created.iter().find(|r| r.is_err()) {
        return Err(RoomsFailed {
            created: created_rooms,
            error: e.clone(),
        });
    }
    Ok(Rooms {
        created: created_rooms,
        secs: setup_start.elapsed().as_secs_f64(),
    })
}

/// Closes the connections and, unless `--keep-rooms`, deletes the rooms; returns the seconds
/// the closes took.
pub async fn close(run: &Run, slots: &[Arc<Slot>], created_rooms: &[u32]) -> f64 {
    let close_start = Instant::now();
    stream::iter(slots.iter().filter_map(|s| s.take()))
        .for_each_concurrent(512, |c| async move {
            if let Ok(c) = Arc::try_unwrap(c) {
                c.close().await;
            }
        })
        .await;
    let close_secs = close_start.elapsed().as_secs_f64();
    if let (false, Some(admin)) = (run.args.keep_rooms, &run.admin) {
        delete_rooms(admin, &run.recv, created_rooms).await;
    }
    close_secs
}

/// Deletes rooms; one left behind is only a warning, since chat ids are fresh per run and it
/// disturbs no later run.
pub async fn delete_rooms(admin: &Admin, recv: &Receivers, rooms: &[u32]) {
    let failed: usize = stream::iter(rooms.iter().copied())
        .map(|r| async move {
            let path = format!("/api/v1/chats/{}", recv.chat_id(r));
            match admin.call("DELETE", &path, None).await {
                Ok((s, _)) if (200..300).contains(&s) || s == 404 => 0,
                _ => 1,
            }
        })
        .buffer_unordered(16)
        .fold(0, |a, b| async move { a + b })
        .await;
    if failed > 0 {
        eprintln!("fanout-bench: warning: {failed} room(s) could not be deleted");
    }
}
