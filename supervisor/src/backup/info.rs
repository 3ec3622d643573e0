//! What pgBackRest says of its repositories (`info --output=json`), in the
//! shape `phoenixctl backup list --json` prints. Pure.

use serde::{Deserialize, Serialize};

/// The annotation keys Phoenix puts on a backup.
pub const TRIGGER: &str = "phoenix-trigger";
pub const VERIFIED: &str = "phoenix-verified";
/// On a full in repo2 (S3): the local full it is the offsite copy of.
pub const COPY_OF: &str = "phoenix-copy-of";

/// One backup in one repository.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backup {
    pub label: String,
    /// full, diff or incr.
    #[serde(rename = "type")]
    pub kind: String,
    /// 1: the local repository; 2: S3.
    pub repo: u32,
    /// Unix seconds.
    pub started_at: i64,
    pub stopped_at: i64,
    /// The database's size at the backup.
    pub size_bytes: u64,
    /// What it takes in the repository (compressed; a diff or incr only its changes).
    pub repo_size_bytes: u64,
    /// The backup it builds on (none for a full).
    pub prior: Option<String>,
    /// The PostgreSQL timeline it was taken on (1 until the first restore).
    #[serde(default)]
    pub timeline: u32,
    /// Where its WAL ends (LSN as a number): a restore from it needs WAL from there.
    #[serde(default)]
    pub stop_lsn: u64,
    /// "schedule" or "operator".
    pub trigger: Option<String>,
    /// The outcome of the test restore, as annotated: "ok at …", "failed at …: why",
    /// "skipped at …: why"; none when not (yet) verified.
    pub verified: Option<String>,
    /// In repo2: the local full this one is the offsite copy of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_of: Option<String>,
}

impl Backup {
    pub fn verified_ok(&self) -> bool {
        self.verified
            .as_deref()
            .is_some_and(|v| v.starts_with("ok"))
    }
}

/// The stanza's backups (oldest first) and the WAL range it holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    /// pgBackRest's archive id (`15-1`): where WAL and timeline history live.
    #[serde(default)]
    pub archive_id: Option<String>,
    pub backups: Vec<Backup>,
    /// Oldest and newest WAL segment archived, per repository.
    pub wal: Vec<WalRange>,
    /// pgBackRest's own status message ("ok", "no valid backups", ...).
    pub status: String,
    /// Repositories that could not be read, with why (S3 down): what they
    /// hold is missing from this inventory.
    #[serde(default)]
    pub unreachable: Vec<String>,
    /// The system identifier of the cluster the stanza now backs up.
    #[serde(default)]
    pub system_id: Option<u64>,
}

impl Inventory {
    /// This inventory with another repository's added.
    pub fn with(mut self, other: Inventory) -> Inventory {
        self.backups.extend(other.backups);
        self.backups.sort_by_key(|b| (b.stopped_at, b.repo));
        self.wal.extend(other.wal);
        self.archive_id = self.archive_id.or(other.archive_id);
        self.unreachable.extend(other.unreachable);
        self.system_id = self.system_id.or(other.system_id);
        self
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WalRange {
    pub repo: u32,
    pub min: String,
    pub max: String,
}

#[derive(Deserialize)]
struct Stanza {
    #[serde(default)]
    archive: Vec<Archive>,
    #[serde(default)]
    db: Vec<Db>,
    #[serde(default)]
    backup: Vec<RawBackup>,
    status: Status,
}

#[derive(Deserialize)]
struct Db {
    id: u32,
    #[serde(rename = "system-id")]
    system_id: u64,
}

#[derive(Deserialize)]
struct Status {
    message: String,
}

#[derive(Deserialize)]
struct Archive {
    id: Option<String>,
    database: Database,
    min: Option<String>,
    max: Option<String>,
}

#[derive(Deserialize)]
struct Database {
    #[serde(rename = "repo-key")]
    repo_key: u32,
}

#[derive(Deserialize)]
struct RawBackup {
    label: String,
    #[serde(rename = "type")]
    kind: String,
    database: Database,
    timestamp: Timestamps,
    info: Sizes,
    prior: Option<String>,
    #[serde(default)]
    annotation: std::collections::BTreeMap<String, String>,
    archive: Option<WalSpan>,
    lsn: Option<LsnSpan>,
    #[serde(default)]
    error: bool,
}

#[derive(Deserialize)]
struct WalSpan {
    start: Option<String>,
}

#[derive(Deserialize)]
struct LsnSpan {
    stop: Option<String>,
}

/// `0/3000050` as a number.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// The timeline of a WAL segment name (its first eight hex digits).
pub fn timeline_of(segment: &str) -> Option<u32> {
    u32::from_str_radix(segment.get(..8)?, 16).ok()
}

#[derive(Deserialize)]
struct Timestamps {
    start: i64,
    stop: i64,
}

#[derive(Deserialize)]
struct Sizes {
    size: u64,
    repository: RepoSize,
}

#[derive(Deserialize)]
struct RepoSize {
    delta: u64,
}

/// Reads `pgbackrest info --output=json` for one stanza. Backups pgBackRest
/// marks with an error (a page checksum it could not read) are left out of
/// what can be restored.
pub fn parse(json: &[u8]) -> Result<Inventory, String> {
    let stanzas: Vec<Stanza> =
        serde_json::from_slice(json).map_err(|e| format!("pgbackrest info: {e}"))?;
    let Some(stanza) = stanzas.into_iter().next() else {
        return Err("pgbackrest info: no stanza".into());
    };
    let mut backups: Vec<Backup> = stanza
        .backup
        .into_iter()
        .filter(|b| !b.error)
        .map(|b| Backup {
            timeline: b
                .archive
                .as_ref()
                .and_then(|a| a.start.as_deref())
                .and_then(timeline_of)
                .unwrap_or(1),
            stop_lsn: b
                .lsn
                .as_ref()
                .and_then(|l| l.stop.as_deref())
                .and_then(parse_lsn)
                .unwrap_or(0),
            trigger: b.annotation.get(TRIGGER).cloned(),
            verified: b.annotation.get(VERIFIED).cloned(),
            copy_of: b.annotation.get(COPY_OF).cloned(),
            label: b.label,
            kind: b.kind,
            repo: b.database.repo_key,
            started_at: b.timestamp.start,
            stopped_at: b.timestamp.stop,
            size_bytes: b.info.size,
            repo_size_bytes: b.info.repository.delta,
            prior: b.prior,
        })
        .collect();
    backups.sort_by_key(|b| (b.stopped_at, b.repo));
    let archive_id = stanza.archive.iter().find_map(|a| a.id.clone());
    let system_id = stanza.db.iter().max_by_key(|d| d.id).map(|d| d.system_id);
    let wal = stanza
        .archive
        .into_iter()
        .filter_map(|a| {
            Some(WalRange {
                repo: a.database.repo_key,
                min: a.min?,
                max: a.max?,
            })
        })
        .collect();
    Ok(Inventory {
        archive_id,
        backups,
        wal,
        status: stanza.status.message,
        unreachable: Vec::new(),
        system_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As pgBackRest 2.45 prints it (one full, one diff on top, and one it
    /// marked with an error).
    const INFO: &str = r#"[{"archive":[{"database":{"id":1,"repo-key":1},"id":"15-1","max":"000000010000000000000005","min":"000000010000000000000001"}],
      "backup":[
        {"annotation":{"phoenix-trigger":"schedule","phoenix-verified":"ok at 2026-12-01T02:03:00Z"},"archive":{"start":"000000010000000000000002","stop":"000000010000000000000003"},"backrest":{"format":5,"version":"2.45"},"database":{"id":1,"repo-key":1},"error":false,"info":{"delta":22992156,"repository":{"delta":2811904,"size":2811904},"size":22992156},"label":"20261201-020242F","lsn":{"start":"0/2000028","stop":"0/3000050"},"prior":null,"reference":null,"timestamp":{"start":1796090562,"stop":1796090565},"type":"full"},
        {"archive":{"start":"000000010000000000000004","stop":"000000010000000000000004"},"backrest":{"format":5,"version":"2.45"},"database":{"id":1,"repo-key":1},"error":false,"info":{"delta":8192,"repository":{"delta":1024,"size":2811904},"size":22992156},"label":"20261201-020242F_20261201-030000D","lsn":{"start":"0/4000028","stop":"0/4000100"},"prior":"20261201-020242F","reference":["20261201-020242F"],"timestamp":{"start":1796094000,"stop":1796094002},"type":"diff"},
        {"database":{"id":1,"repo-key":1},"error":true,"info":{"delta":1,"repository":{"delta":1,"size":1},"size":1},"label":"20261201-040000F","prior":null,"timestamp":{"start":1796097600,"stop":1796097601},"type":"full"}],
      "cipher":"none","db":[{"id":1,"repo-key":1,"system-id":7714150211966788100,"version":"15"}],"name":"phoenix","repo":[{"cipher":"none","key":1,"status":{"code":0,"message":"ok"}}],"status":{"code":0,"lock":{"backup":{"held":false}},"message":"ok"}}]"#;

    #[test]
    fn reads_backups_sizes_annotations_and_the_wal_range() {
        let inv = parse(INFO.as_bytes()).unwrap();
        assert_eq!(inv.status, "ok");
        assert_eq!(inv.backups.len(), 2, "the one with an error is left out");
        let full = &inv.backups[0];
        assert_eq!(
            (full.label.as_str(), full.kind.as_str(), full.repo),
            ("20261201-020242F", "full", 1)
        );
        assert_eq!((full.size_bytes, full.repo_size_bytes), (22992156, 2811904));
        assert_eq!(full.trigger.as_deref(), Some("schedule"));
        assert!(full.verified_ok());
        let diff = &inv.backups[1];
        assert_eq!(diff.prior.as_deref(), Some("20261201-020242F"));
        assert_eq!(diff.repo_size_bytes, 1024);
        assert!(!diff.verified_ok());
        assert_eq!(inv.wal[0].max, "000000010000000000000005");
        assert_eq!((full.timeline, full.stop_lsn), (1, 0x3000050));
        assert_eq!(inv.archive_id.as_deref(), Some("15-1"));
        assert_eq!(inv.system_id, Some(7714150211966788100));
        assert_eq!(parse_lsn("1A/0000FF00"), Some((0x1a << 32) | 0xff00));
        assert_eq!(timeline_of("0000000300000000000000A1"), Some(3));
    }

    #[test]
    fn a_new_stanza_has_no_backups_and_says_so() {
        let json = r#"[{"archive":[],"backup":[],"name":"phoenix","status":{"code":2,"message":"no valid backups"}}]"#;
        let inv = parse(json.as_bytes()).unwrap();
        assert!(inv.backups.is_empty());
        assert_eq!(inv.status, "no valid backups");
        assert!(
            parse(b"not json")
                .unwrap_err()
                .starts_with("pgbackrest info:")
        );
        assert!(parse(b"[]").is_err());
    }
}
