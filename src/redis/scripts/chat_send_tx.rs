//! The common case of `lua/chat_send.lua` as an optimistic transaction: the same contract
//! (membership, dedup, offset, history append and publication, atomic on the chat's slot)
//! kept with `WATCH` … `MULTI` … `EXEC` on a connection of its own ([`crate::redis::Exclusive`])
//! instead of a script call.
//!
//! Why: Redis pays for a script call far more than for its commands when calls come paced, as
//! a gateway's do (a cold Lua VM and the bridge of every `redis.call`: ~40 µs per message
//! against ~15 µs for the same commands in a transaction, docs/benchmarks.md "The send path
//! without a script"), and issue 17 asks ≤ 25 µs.
//!
//! How the contract holds: the read phase `WATCH`es the members set and the meta hash, then
//! reads them and the dedup record; the write phase is one `MULTI`/`EXEC`. If a watched key
//! changed in between (another send took an offset, a member was removed, the chat was deleted),
//! Redis refuses the `EXEC` and nothing is written: the send reads again. The dedup record needs
//! no `WATCH` of its own: every step that writes one also writes meta (the script's `HINCRBY`,
//! the transaction's `HSET seq`), so a concurrent retry that got there first aborts this `EXEC`
//! through meta, and the next read finds its record. Offsets are taken as `seq + 1` of the watched `seq` and the `XADD` and the
//! publication run in the same `EXEC`, so publication order is offset order as with the script.
//! The rare cases go to the script, which stays the authority: a chat without epoch (first
//! message, lost sequence), a duplicate (its answer must write, so that a `WAIT` after it covers
//! the first attempt), repeated contention, a slot that moved. Script and transaction write the
//! same keys the same way (`seq`, `ttlp`, the log's TTL period, the dedup value), so either may
//! follow the other.

use redis::{Pipeline, Value};

use super::chat_send::{SendArgs, frame_parts, log_entry, log_ttl};
use super::{as_array, as_i64, as_string, as_u64};
use crate::redis::keys::ChatKeys;

/// What the read phase saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    /// The sender is in the members set.
    pub member: bool,
    /// meta's `epoch`.
    pub epoch: Option<String>,
    /// meta's `seq` (the last offset).
    pub seq: Option<u64>,
    /// meta's `ttlp` (the refresh period of the log's TTL last applied).
    pub ttlp: Option<String>,
    /// The dedup record, when the send has a `clientMsgId` and one exists.
    pub dedup: Option<String>,
}

/// What to do after the read phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Not a member: refused, nothing written.
    Forbidden,
    /// Run the script instead, for this reason (a metric label).
    Script(&'static str),
    /// Write the message at `offset` of `epoch`; `refresh`: a new period, set the log's TTL
    /// and `ttlp` (otherwise the TTL is set only if the log has none: `EXPIRE … NX`).
    Commit {
        /// The offset taken (`seq + 1`).
        offset: u64,
        /// The chat's epoch.
        epoch: String,
        /// The log's TTL is set in this write.
        refresh: bool,
    },
}

/// The read phase: `WATCH` members and meta, then `SISMEMBER`, `HMGET meta epoch seq ttlp`
/// (and `GET` of the dedup record). Not atomic and need not be: `EXEC` fails if a watched key
/// changed after the `WATCH`. The log is not read: whether it exists or has a TTL is settled in
/// the write phase (`EXPIRE … NX`), where it cannot change any more.
pub fn pipe_read(a: &SendArgs<'_>) -> Pipeline {
    let k = ChatKeys::new(a.chat_id);
    let mut pipe = redis::pipe();
    pipe.cmd("WATCH").arg(k.members()).arg(k.meta()).ignore();
    pipe.cmd("SISMEMBER").arg(k.members()).arg(a.sender);
    pipe.cmd("HMGET")
        .arg(k.meta())
        .arg("epoch")
        .arg("seq")
        .arg("ttlp");
    if let Some(cmid) = a.client_msg_id {
        pipe.cmd("GET").arg(k.dedup(a.sender, cmid));
    }
    pipe
}

/// The read phase's replies (the `WATCH` reply ignored).
pub fn parse_read(replies: &[Value], with_dedup: bool) -> Option<Read> {
    let member = as_i64(replies.first()?)? == 1;
    let meta = as_array(replies.get(1)?)?;
    let opt = |v: &Value| match v {
        Value::Nil => Some(None),
        v => as_string(v).map(Some),
    };
    let epoch = opt(meta.first()?)?;
    let seq = match meta.get(1)? {
        Value::Nil => None,
        v => Some(as_u64(v)?),
    };
    let ttlp = opt(meta.get(2)?)?;
    let dedup = if with_dedup {
        opt(replies.get(2)?)?
    } else {
        None
    };
    let expected = if with_dedup { 3 } else { 2 };
    (replies.len() == expected).then_some(Read {
        member,
        epoch,
        seq,
        ttlp,
        dedup,
    })
}

/// The script's rules on what was read: membership first, then the epoch, then the dedup
/// record (one of the current epoch is a duplicate; one of an older epoch is replaced).
pub fn decide(read: &Read, a: &SendArgs<'_>) -> Decision {
    if !read.member {
        return Decision::Forbidden;
    }
    let (Some(epoch), Some(seq)) = (&read.epoch, read.seq) else {
        return Decision::Script("new_epoch");
    };
    if let Some(record) = &read.dedup {
        let mut parts = record.split(' ');
        let same_epoch = parts.next().is_some_and(|o| o.parse::<u64>().is_ok())
            && parts.next() == Some(epoch.as_str());
        if same_epoch {
            return Decision::Script("duplicate");
        }
    }
    let (_, period) = log_ttl(a.history_ttl_secs, a.now_secs);
    let refresh = read.ttlp.as_deref() != Some(period.to_string().as_str());
    Decision::Commit {
        offset: seq + 1,
        epoch: epoch.clone(),
        refresh,
    }
}

/// The write phase, one `MULTI`/`EXEC`: `HSET meta seq` (and `ttlp`), the dedup record,
/// `XADD` at `0-<offset>`, the log's `EXPIRE` (on a new period; else `EXPIRE … NX`, which
/// gives a log the `XADD` just created its TTL and leaves any other alone), and the frame
/// published (the same bytes the script publishes).
pub fn pipe_commit(
    a: &SendArgs<'_>,
    offset: u64,
    epoch: &str,
    refresh: bool,
) -> Result<Pipeline, serde_json::Error> {
    let k = ChatKeys::new(a.chat_id);
    let [head, mid, tail] = frame_parts(a)?;
    let (ttl, period) = log_ttl(a.history_ttl_secs, a.now_secs);
    let offset_s = offset.to_string();
    let mut pipe = redis::pipe();
    pipe.atomic();
    let hset = pipe.cmd("HSET").arg(k.meta()).arg("seq").arg(&offset_s);
    if refresh {
        hset.arg("ttlp").arg(period);
    }
    hset.ignore();
    if let Some(cmid) = a.client_msg_id {
        let record = format!("{offset} {epoch} {} {}", a.message_id, a.created_at);
        pipe.cmd("SET")
            .arg(k.dedup(a.sender, cmid))
            .arg(record)
            .arg("EX")
            .arg(a.dedup_ttl_secs)
            .ignore();
    }
    pipe.cmd("XADD")
        .arg(k.log())
        .arg("MAXLEN")
        .arg("~")
        .arg(a.history_maxlen)
        .arg(format!("0-{offset}"))
        .arg("m")
        .arg(log_entry(a)?);
    let expire = pipe.cmd("EXPIRE").arg(k.log()).arg(ttl);
    if !refresh {
        expire.arg("NX");
    }
    expire.ignore();
    pipe.cmd(a.publish.as_str())
        .arg(k.channel())
        .arg(format!("{head}{offset}{mid}{epoch}{tail}"))
        .ignore();
    Ok(pipe)
}

/// The `EXEC` reply (the non-ignored results: the `XADD`'s id): `None` when Redis refused the
/// `EXEC` because a watched key changed, `Some(true)` when the entry went in at `0-<offset>`.
pub fn parse_commit(reply: &Value, offset: u64) -> Option<bool> {
    match reply {
        Value::Nil => None,
        Value::Array(items) => Some(
            items.len() == 1 && as_string(&items[0]).is_some_and(|id| id == format!("0-{offset}")),
        ),
        _ => Some(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::scripts::test_values::{arr, bulk};

    fn args(cmid: Option<&str>) -> SendArgs<'_> {
        SendArgs {
            history_ttl_secs: 600,
            now_secs: 6000,
            ..crate::redis::scripts::chat_send::tests::args("hi", cmid)
        }
    }

    fn read(dedup: Option<&str>) -> Read {
        Read {
            member: true,
            epoch: Some("ab".into()),
            seq: Some(4),
            ttlp: Some("100".into()),
            dedup: dedup.map(Into::into),
        }
    }

    #[test]
    fn the_read_replies_parse_and_bad_shapes_are_none() {
        let meta = arr(vec![bulk("ab"), bulk("4"), Value::Nil]);
        let got = parse_read(&[Value::Int(1), meta.clone()], false);
        assert_eq!(
            got,
            Some(Read {
                member: true,
                epoch: Some("ab".into()),
                seq: Some(4),
                ttlp: None,
                dedup: None
            })
        );
        let with = parse_read(&[Value::Int(0), meta.clone(), bulk("1 ab m t")], true);
        assert_eq!(
            with.map(|r| (r.member, r.dedup)),
            Some((false, Some("1 ab m t".into())))
        );
        assert_eq!(parse_read(&[Value::Int(1)], false), None);
        assert_eq!(parse_read(&[Value::Int(1), meta.clone()], true), None);
        assert_eq!(parse_read(&[Value::Int(1), bulk("x")], false), None);
        let bad_seq = arr(vec![bulk("ab"), bulk("four"), Value::Nil]);
        assert_eq!(parse_read(&[Value::Int(1), bad_seq], false), None);
    }

    #[test]
    fn the_decision_follows_the_script_rules() {
        let a = args(Some("k"));
        // ttlp "100" is the current period (6000 / 60): no refresh.
        assert_eq!(
            decide(&read(None), &a),
            Decision::Commit {
                offset: 5,
                epoch: "ab".into(),
                refresh: false
            }
        );
        let not_member = Read {
            member: false,
            ..read(None)
        };
        assert_eq!(decide(&not_member, &a), Decision::Forbidden);
        let no_epoch = Read {
            epoch: None,
            ..read(None)
        };
        assert_eq!(decide(&no_epoch, &a), Decision::Script("new_epoch"));
        assert_eq!(
            decide(&read(Some("3 ab m t")), &a),
            Decision::Script("duplicate")
        );
        // A record of an older epoch (or unreadable) is replaced, as the script does.
        for old in ["3 zz m t", "junk"] {
            assert!(matches!(
                decide(&read(Some(old)), &a),
                Decision::Commit { offset: 5, .. }
            ));
        }
        for ttlp in [Some("99"), None] {
            let r = Read {
                ttlp: ttlp.map(Into::into),
                ..read(None)
            };
            assert!(
                matches!(decide(&r, &a), Decision::Commit { refresh: true, .. }),
                "{ttlp:?}"
            );
        }
    }

    #[test]
    fn the_exec_reply_tells_aborted_written_and_wrong() {
        assert_eq!(parse_commit(&Value::Nil, 5), None);
        assert_eq!(parse_commit(&arr(vec![bulk("0-5")]), 5), Some(true));
        assert_eq!(parse_commit(&arr(vec![bulk("0-6")]), 5), Some(false));
        assert_eq!(parse_commit(&arr(vec![]), 5), Some(false));
        assert_eq!(parse_commit(&Value::Int(1), 5), Some(false));
    }
}
