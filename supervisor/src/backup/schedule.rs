//! When the next backup is due, and of which type. Pure: the task gives it
//! the time.

use chrono::{DateTime, Utc};

use crate::config::{BackupKind, Schedule, parse_cron};

/// The parsed schedules of `[backup]`.
pub struct Timetable {
    entries: Vec<(BackupKind, croner::Cron)>,
}

impl Timetable {
    /// Schedules that do not parse are left out; the configuration check
    /// refused them already.
    pub fn new(schedules: &[Schedule]) -> Self {
        let entries = schedules
            .iter()
            .filter_map(|s| parse_cron(&s.cron).ok().map(|c| (s.kind, c)))
            .collect();
        Timetable { entries }
    }

    /// The first time strictly after `after` at which a backup is due, and
    /// its type. When schedules meet (02:00 is on the full and the hourly
    /// differential schedule), the bigger type is taken, once: a full
    /// makes the differential of the same minute pointless.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<(DateTime<Utc>, BackupKind)> {
        self.entries
            .iter()
            .filter_map(|(kind, cron)| {
                cron.find_next_occurrence(&after, false)
                    .ok()
                    .map(|t| (t, *kind))
            })
            // Earliest first; at the same time, the biggest type.
            .min_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn table(full: &str, diff: Option<&str>, incr: Option<&str>) -> Timetable {
        let mut s = vec![Schedule {
            kind: BackupKind::Full,
            cron: full.into(),
        }];
        s.extend(diff.map(|c| Schedule {
            kind: BackupKind::Diff,
            cron: c.into(),
        }));
        s.extend(incr.map(|c| Schedule {
            kind: BackupKind::Incr,
            cron: c.into(),
        }));
        Timetable::new(&s)
    }

    #[test]
    fn the_default_day_is_one_full_at_two_and_a_differential_every_other_hour_24_in_all() {
        let t = table("0 2 * * *", Some("0 * * * *"), None);
        let mut now = at("2026-12-01T00:30:00Z");
        let mut day = Vec::new();
        loop {
            let (when, kind) = t.next_after(now).unwrap();
            if when >= at("2026-12-02T00:30:00Z") {
                break;
            }
            day.push((when.format("%H:%M").to_string(), kind));
            now = when;
        }
        assert_eq!(day.len(), 24);
        assert_eq!(day[0], ("01:00".into(), BackupKind::Diff));
        assert_eq!(day[1], ("02:00".into(), BackupKind::Full));
        assert_eq!(day[2], ("03:00".into(), BackupKind::Diff));
        assert_eq!(
            day.iter().filter(|(_, k)| *k == BackupKind::Full).count(),
            1
        );
    }

    #[test]
    fn strictly_after_so_a_backup_is_not_taken_twice_for_one_minute() {
        let t = table("0 2 * * *", None, Some("*/15 * * * *"));
        let (when, kind) = t.next_after(at("2026-12-01T02:00:00Z")).unwrap();
        assert_eq!((when, kind), (at("2026-12-01T02:15:00Z"), BackupKind::Incr));
        let (when, kind) = t.next_after(at("2026-12-01T01:59:59Z")).unwrap();
        assert_eq!((when, kind), (at("2026-12-01T02:00:00Z"), BackupKind::Full));
    }

    #[test]
    fn weekly_fulls_and_rare_dates() {
        let t = table("30 3 * * 0", None, None);
        let (when, _) = t.next_after(at("2026-12-01T00:00:00Z")).unwrap();
        assert_eq!(when, at("2026-12-06T03:30:00Z"), "the next Sunday");
        let t = table("0 0 29 2 *", None, None);
        let (when, _) = t.next_after(at("2026-12-01T00:00:00Z")).unwrap();
        assert_eq!(when, at("2028-02-29T00:00:00Z"));
    }
}
