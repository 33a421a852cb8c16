//! What a namespace's stored objects can give back: its restorable *window* (every commit
//! from which frame_no and time to which), the gaps in it, and the objects a restore to a
//! given point applies. Pure functions of a listing: nothing here reads an object.
//!
//! A *run* starts at a base — a snapshot, a branch's origin, or the empty database at frame 0 when a segment
//! starts at frame 1 — and goes on through segments each starting at most one frame after
//! the previous one ends (see `layout::chain`). Every commit from the base to the run's end
//! restores exactly. The window is the union of the runs; what lies between two runs is a
//! gap (frames no object holds). A restore to a point uses the run of the newest base at or
//! before the point that reaches it: the fewest bytes.

use crate::error::{Error, Result};
use crate::storage::layout::{self, ObjectKind, StoredObject};

/// A point of a namespace's history to restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestorePoint {
    /// The newest state storage holds.
    #[default]
    Latest,
    /// The last commit at or before this frame_no.
    FrameNo(u64),
    /// The last commit made at or before this time (ms since the Unix epoch).
    Time(u64),
}

/// Reads a point in time as RFC 3339 (`2026-12-01T10:15:00.250Z`, or with an offset such
/// as `+01:00`): milliseconds since the Unix epoch. Finer than a millisecond is cut (times
/// are kept to the millisecond).
pub fn parse_time(text: &str) -> std::result::Result<u64, String> {
    let time = chrono::DateTime::parse_from_rfc3339(text.trim())
        .map_err(|e| format!("{text:?} is not an RFC 3339 time such as 2026-12-01T10:15:00.250Z: {e}"))?;
    u64::try_from(time.timestamp_millis()).map_err(|_| format!("{text:?} is before 1970"))
}

/// Reads a duration such as `90s`, `15m`, `24h`, `7d` (or combined: `1h 30m`).
pub fn parse_duration(text: &str) -> std::result::Result<std::time::Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration such as 90s, 15m, 24h or 7d: {e}"))
}

/// A stretch of frames that restores: `first_frame_no..=last_frame_no`, with the commit
/// times at its ends where known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// The run's base frame_no (a snapshot's), or the first frame of its first segment when
    /// it starts from the empty database (its first commit is at or after it).
    pub first_frame_no: u64,
    pub last_frame_no: u64,
    /// The time of the first commit that restores by timestamp (`None`: unknown, objects of
    /// format version 2 or a snapshot whose commit time was not recorded).
    pub first_time: Option<u64>,
    pub last_time: Option<u64>,
}

/// The restorable window of a namespace: its spans, oldest first, disjoint and separated by
/// gaps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Window {
    pub spans: Vec<Span>,
}

impl Window {
    pub fn first(&self) -> Option<&Span> {
        self.spans.first()
    }

    pub fn last(&self) -> Option<&Span> {
        self.spans.last()
    }

    /// The frames no object holds between two spans: `(after, before)`, exclusive.
    pub fn gaps(&self) -> Vec<(u64, u64)> {
        self.spans.windows(2).map(|w| (w[0].last_frame_no, w[1].first_frame_no)).collect()
    }

    /// "frames 1..=40 (2026-…Z .. 2026-…Z)[, gap, frames …]" for messages.
    pub fn describe(&self) -> String {
        if self.spans.is_empty() {
            return "nothing restorable".into();
        }
        let time = |t: Option<u64>| t.map_or("time unknown".to_string(), layout::format_unix_ms);
        let spans: Vec<String> = self
            .spans
            .iter()
            .map(|s| {
                format!(
                    "frames {}..={} ({} .. {})",
                    s.first_frame_no,
                    s.last_frame_no,
                    time(s.first_time),
                    time(s.last_time)
                )
            })
            .collect();
        format!("the restorable window is {}", spans.join(", then after a gap "))
    }
}

/// One base and the segments that continue it without a gap.
#[derive(Debug, Clone)]
struct Run {
    base: Option<StoredObject>,
    base_frame_no: u64,
    segments: Vec<StoredObject>,
    end_frame_no: u64,
}

/// The objects a restore applies, in order, and where it stops.
#[derive(Debug, Clone)]
pub struct RestorePlan {
    pub snapshot: Option<StoredObject>,
    pub segments: Vec<StoredObject>,
    /// The restore lands on the last commit at or before this frame_no...
    pub frame_no: u64,
    /// ...and, for a point in time, made at or before this time: found in the last segment
    /// when its commits straddle the time.
    pub time: Option<u64>,
    /// The namespace's restorable window, for the refusal of a point the objects show to be
    /// before the first commit (among the first transaction's frames).
    pub window: Window,
}

impl RestorePlan {
    pub fn objects(&self) -> impl Iterator<Item = &StoredObject> {
        self.snapshot.iter().chain(self.segments.iter())
    }

    pub fn bytes(&self) -> u64 {
        self.objects().map(|o| o.size).sum()
    }
}

fn segment_range(object: &StoredObject) -> Option<(u64, u64)> {
    object.frames()
}

/// Every run: from the empty database (if a segment starts at frame 1) and from each
/// snapshot, ordered by base frame_no.
fn runs(objects: &[StoredObject]) -> Vec<Run> {
    let mut segments: Vec<&StoredObject> = objects.iter().filter(|o| segment_range(o).is_some()).collect();
    // Reaching furthest first; at equal ranges a pack first (fewer objects to fetch).
    segments.sort_by_key(|o| {
        let (start, end) = segment_range(o).expect("segments only");
        (start, u64::MAX - end, !matches!(o.kind, ObjectKind::Pack { .. }), o.key.clone())
    });
    let mut snapshots: Vec<&StoredObject> = objects.iter().filter(|o| o.is_base()).collect();
    // One base per frame_no: a snapshot rather than a branch's origin (no parent to read).
    snapshots.sort_by_key(|o| (o.end_frame_no(), matches!(o.kind, ObjectKind::Origin { .. }), o.key.clone()));
    snapshots.dedup_by_key(|o| o.end_frame_no());
    let mut bases: Vec<Option<&StoredObject>> = Vec::new();
    if segments.first().and_then(|s| segment_range(s)).is_some_and(|(start, _)| start == 1) {
        bases.push(None);
    }
    bases.extend(snapshots.into_iter().map(Some));
    bases
        .into_iter()
        .map(|base| {
            let base_frame_no = base.map_or(0, StoredObject::end_frame_no);
            let mut run = Run { base: base.cloned(), base_frame_no, segments: Vec::new(), end_frame_no: base_frame_no };
            for segment in &segments {
                let (start, end) = segment_range(segment).expect("segments only");
                if end <= run.end_frame_no {
                    continue;
                }
                if start > run.end_frame_no + 1 {
                    break;
                }
                run.segments.push((*segment).clone());
                run.end_frame_no = end;
            }
            run
        })
        .collect()
}

fn first_commit_time(object: &StoredObject) -> Option<u64> {
    object.commit_times().map(|t| t.first)
}

fn last_commit_time(object: &StoredObject) -> Option<u64> {
    object.commit_times().map(|t| t.last)
}

/// The restorable window of a namespace's objects.
pub fn window(objects: &[StoredObject]) -> Window {
    let mut spans: Vec<Span> = Vec::new();
    for run in runs(objects) {
        let first_frame_no = match &run.base {
            Some(_) => run.base_frame_no,
            None => run.segments.first().and_then(segment_range).map_or(1, |(start, _)| start),
        };
        let last_object = run.segments.last().or(run.base.as_ref());
        let first_object = run.base.as_ref().or(run.segments.first());
        // A snapshot of unknown time restores by frame_no only: by time the run starts at
        // its first segment's first commit.
        let first_time =
            first_object.and_then(first_commit_time).or_else(|| run.segments.first().and_then(first_commit_time));
        let span = Span {
            first_frame_no,
            last_frame_no: run.end_frame_no,
            first_time,
            last_time: last_object.and_then(last_commit_time),
        };
        match spans.last_mut() {
            Some(last) if span.first_frame_no <= last.last_frame_no + 1 => {
                if span.last_frame_no > last.last_frame_no {
                    last.last_frame_no = span.last_frame_no;
                    last.last_time = span.last_time;
                }
            }
            _ => spans.push(span),
        }
    }
    Window { spans }
}

/// The objects to apply to restore `point`, or why it cannot be: before the window, after
/// its end, or in a gap (the error names the window). `now_ms` bounds a time: the state at
/// a time still to come is not known.
pub fn plan(objects: &[StoredObject], point: RestorePoint, now_ms: u64, namespace: &str) -> Result<RestorePlan> {
    let window = window(objects);
    let runs = runs(objects);
    let Some(last) = window.last() else {
        let first = objects.iter().map(StoredObject::first_frame_no).min().unwrap_or(1);
        return Err(Error::Restore(format!(
            "namespace {namespace} has a gap: frames 1..={} are in no stored object, so nothing before the gap \
             can be restored",
            first.saturating_sub(1)
        )));
    };
    let refuse = |what: String| Error::Restore(format!("{what}: {} of namespace {namespace}", window.describe()));
    // `base_max`: the base must come at or before it (for a time inside an object, before
    // that object: the landing commit is somewhere in it).
    let (frame_no, time, base_max) = match point {
        RestorePoint::Latest => (last.last_frame_no, None, last.last_frame_no),
        RestorePoint::FrameNo(n) if n > last.last_frame_no && !objects.iter().any(|o| o.end_frame_no() >= n) => {
            return Err(refuse(format!("frame_no {n} is after the end of what storage holds")));
        }
        RestorePoint::FrameNo(n) => (n, None, n),
        RestorePoint::Time(t) if t > now_ms => {
            return Err(refuse(format!("{} is in the future", layout::format_unix_ms(t))));
        }
        RestorePoint::Time(t) => {
            let (bound, inside_from) = frame_bound_for_time(objects, &window, t).map_err(refuse)?;
            // A base committed by `t` is at or before the landing commit too (commit times
            // never go back), even inside the object.
            let known = objects
                .iter()
                .filter(|o| o.is_base() && o.commit_times().is_some_and(|c| c.last <= t))
                .map(StoredObject::end_frame_no)
                .filter(|&f| f <= bound)
                .max();
            let before_object = inside_from.map_or(bound, |start| start - 1);
            (bound, Some(t), before_object.max(known.unwrap_or(0)))
        }
    };
    let run = runs
        .iter()
        .filter(|r| r.base_frame_no <= base_max && frame_no <= r.end_frame_no)
        .filter(|r| r.base.is_some() || frame_no >= r.segments.first().and_then(segment_range).map_or(1, |s| s.0))
        .max_by_key(|r| r.base_frame_no)
        .ok_or_else(|| {
            let what = match point {
                RestorePoint::Time(t) => layout::format_unix_ms(t),
                _ => format!("frame_no {frame_no}"),
            };
            let first = window.first().map_or(0, |s| s.first_frame_no);
            // Past the window's end, yet held by stored segments: those follow a gap and no
            // base after it (stranded), which is what to say, not that storage ends before.
            let stranded_after = objects
                .iter()
                .filter_map(segment_range)
                .map(|(start, _)| start)
                .filter(|&start| start > last.last_frame_no + 1)
                .min();
            match stranded_after {
                _ if frame_no < first || base_max < first => refuse(format!("{what} is before the window")),
                Some(next) if frame_no > last.last_frame_no => {
                    let missing = format!("frames {}..={} are in no stored object", last.last_frame_no + 1, next - 1);
                    if frame_no < next {
                        refuse(format!("{what} is in a gap: {missing}"))
                    } else {
                        refuse(format!(
                            "{what} is after a gap: {missing}, and no snapshot after them is a base for the objects \
                             that follow"
                        ))
                    }
                }
                _ => refuse(format!("{what} is in a gap (frames no stored object holds)")),
            }
        })?;
    let mut segments = Vec::new();
    for segment in &run.segments {
        if frame_no <= run.base_frame_no {
            break;
        }
        let (start, _) = segment_range(segment).expect("segments only");
        if start > frame_no {
            break;
        }
        segments.push(segment.clone());
        if segment.end_frame_no() >= frame_no {
            break;
        }
    }
    Ok(RestorePlan { snapshot: run.base.clone(), segments, frame_no, time, window })
}

/// The highest frame_no whose commit is known to be at or before `t`: a snapshot or a whole
/// segment committed by then (its end), or the end of a segment whose commits straddle `t`
/// (the restore then looks for the last commit at or before `t` inside it). Refused when
/// the commits right after that frame lie in a gap or have no recorded time: the last
/// commit before `t` could be among them. With the bound, the first frame of the object
/// the landing lies inside, if it does.
fn frame_bound_for_time(
    objects: &[StoredObject],
    window: &Window,
    t: u64,
) -> std::result::Result<(u64, Option<u64>), String> {
    let when = layout::format_unix_ms(t);
    // (frame_no, the first frame of the object when its own commits go past `t`: then the
    // landing is inside it). At equal frame_nos an object ending there wholly before `t` wins.
    let mut bound: Option<(u64, Option<u64>)> = None;
    for object in objects {
        let reaches = match object.kind {
            ObjectKind::Snapshot { commit_unix_ms: Some(c), frame_no, .. }
            | ObjectKind::Origin { commit_unix_ms: Some(c), frame_no, .. }
                if c <= t =>
            {
                Some((frame_no, None))
            }
            ObjectKind::Segment { end_frame_no, commit_times: Some(times), .. }
            | ObjectKind::Pack { end_frame_no, commit_times: times, .. }
                if times.first <= t =>
            {
                Some((end_frame_no, (times.last > t).then(|| object.first_frame_no())))
            }
            _ => None,
        };
        bound = match (bound, reaches) {
            (Some(b), Some(r)) if r.0 == b.0 => Some((b.0, b.1.and(r.1))),
            (b, r) => b.max(r),
        };
    }
    let untimed = objects.iter().any(|o| matches!(o.kind, ObjectKind::Segment { commit_times: None, .. }));
    let Some(bound) = bound else {
        return Err(if untimed {
            format!(
                "{when} may fall among commits whose times were not recorded (objects of format version 2); use --frame-no"
            )
        } else {
            format!("{when} is before the window")
        });
    };
    let (bound, inside_from) = bound;
    let last = window.last().map_or(0, |s| s.last_frame_no);
    if inside_from.is_some() || bound >= last {
        return Ok((bound, inside_from));
    }
    // What comes right after `bound` must be a stored commit known to be after `t`.
    let next = objects
        .iter()
        .filter_map(|o| segment_range(o).map(|r| (o, r)))
        .find(|(_, (s, e))| *s <= bound + 1 && bound < *e);
    match next {
        Some((object, _)) if first_commit_time(object).is_some_and(|f| f > t) => Ok((bound, None)),
        Some(_) => Err(format!(
            "{when} falls among commits after frame_no {bound} whose times were not recorded (objects of format \
             version 2); use --frame-no"
        )),
        None => Err(format!("{when} is in a gap: the commits right after frame_no {bound} are in no stored object")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::layout::{CommitTimes, segment_key, snapshot_key};

    fn segment(start: u64, end: u64, first: u64, last: u64) -> StoredObject {
        let times = CommitTimes { first, last };
        StoredObject {
            key: segment_key("ns", start, end, times),
            size: (end - start + 1) * 4128,
            kind: ObjectKind::Segment { start_frame_no: start, end_frame_no: end, commit_times: Some(times) },
        }
    }

    fn snapshot(frame_no: u64, commit: Option<u64>) -> StoredObject {
        StoredObject {
            key: snapshot_key("ns", frame_no, commit.unwrap_or(0), 1),
            size: 4096,
            kind: ObjectKind::Snapshot { frame_no, commit_unix_ms: commit, taken_unix_ms: 1 },
        }
    }

    fn keys(plan: &RestorePlan) -> Vec<u64> {
        plan.objects().map(StoredObject::end_frame_no).collect()
    }

    #[test]
    fn times_and_durations_read_as_documented() {
        assert_eq!(parse_time("1970-01-01T00:00:01.250Z"), Ok(1250));
        assert_eq!(parse_time("1970-01-01T01:00:01.250+01:00"), Ok(1250));
        assert_eq!(
            parse_time("2026-12-01T10:15:00.250Z").map(layout::format_unix_ms).unwrap(),
            "2026-12-01T10:15:00.250Z"
        );
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("1969-12-31T23:59:59Z").is_err());
        for (text, secs) in [("90s", 90), ("15m", 900), ("24h", 86_400), ("7d", 604_800)] {
            assert_eq!(parse_duration(text), Ok(std::time::Duration::from_secs(secs)));
        }
        assert!(parse_duration("7 fortnights").is_err());
    }

    #[test]
    fn the_window_spans_contiguous_objects_and_names_its_gaps() {
        let objects = [segment(1, 10, 100, 200), segment(11, 20, 300, 400), segment(31, 40, 700, 800)];
        let window = window(&objects);
        assert_eq!(window.spans.len(), 1, "31..40 follows a gap and has no base: not restorable");
        assert_eq!(
            window.spans[0],
            Span { first_frame_no: 1, last_frame_no: 20, first_time: Some(100), last_time: Some(400) }
        );
        let with_base = [segment(1, 10, 100, 200), snapshot(30, Some(650)), segment(31, 40, 700, 800)];
        let window = super::window(&with_base);
        assert_eq!(window.gaps(), vec![(10, 30)]);
        assert_eq!(window.spans[1].first_time, Some(650));
        assert!(window.describe().contains("frames 30..=40"), "{}", window.describe());
    }

    #[test]
    fn a_point_uses_the_newest_base_at_or_before_it() {
        let objects =
            [segment(1, 10, 100, 200), segment(11, 20, 300, 400), snapshot(20, Some(400)), segment(21, 30, 500, 600)];
        let latest = plan(&objects, RestorePoint::Latest, u64::MAX, "ns").unwrap();
        assert_eq!((keys(&latest), latest.frame_no), (vec![20, 30], 30));
        let early = plan(&objects, RestorePoint::FrameNo(15), u64::MAX, "ns").unwrap();
        assert_eq!((keys(&early), early.frame_no), (vec![10, 20], 15));
        let at_snapshot = plan(&objects, RestorePoint::FrameNo(20), u64::MAX, "ns").unwrap();
        assert_eq!(keys(&at_snapshot), vec![20]);
        assert!(plan(&objects, RestorePoint::FrameNo(31), u64::MAX, "ns").is_err(), "after the end");
    }

    #[test]
    fn a_time_lands_on_the_last_commit_at_or_before_it() {
        let objects = [segment(1, 10, 100, 200), segment(11, 20, 300, 400), segment(21, 30, 500, 600)];
        let at = |t| plan(&objects, RestorePoint::Time(t), 10_000, "ns");
        let between = at(250).unwrap();
        assert_eq!((keys(&between), between.frame_no, between.time), (vec![10], 10, Some(250)));
        let inside = at(350).unwrap();
        assert_eq!((keys(&inside), inside.frame_no), (vec![10, 20], 20), "found inside 11..=20 by time");
        assert_eq!(at(5_000).unwrap().frame_no, 30, "after the last commit: the last commit");
        let before = at(99).unwrap_err().to_string();
        assert!(before.contains("before the window") && before.contains("frames 1..=30"), "{before}");
        assert!(at(20_000).unwrap_err().to_string().contains("future"));
    }

    #[test]
    fn a_time_in_a_gap_is_refused() {
        let objects = [segment(1, 10, 100, 200), snapshot(30, Some(650)), segment(31, 40, 700, 800)];
        let gap = plan(&objects, RestorePoint::Time(400), 10_000, "ns").unwrap_err().to_string();
        assert!(gap.contains("gap"), "{gap}");
        assert_eq!(plan(&objects, RestorePoint::Time(660), 10_000, "ns").unwrap().frame_no, 30);
        assert_eq!(plan(&objects, RestorePoint::Time(150), 10_000, "ns").unwrap().frame_no, 10);
        let frame_gap = plan(&objects, RestorePoint::FrameNo(20), 10_000, "ns").unwrap_err().to_string();
        assert!(frame_gap.contains("gap"), "{frame_gap}");
    }

    #[test]
    fn a_time_inside_an_object_never_takes_a_base_after_its_start() {
        // The snapshot at 20 is the state after the object's last commit: a time inside the
        // object must be rebuilt from before it, whatever base is newest.
        let objects = [segment(1, 10, 100, 200), segment(11, 20, 300, 400), snapshot(20, Some(400))];
        let inside = plan(&objects, RestorePoint::Time(350), 10_000, "ns").unwrap();
        assert_eq!((keys(&inside), inside.frame_no), (vec![10, 20], 20));
        assert!(inside.snapshot.is_none());
        let after = plan(&objects, RestorePoint::Time(450), 10_000, "ns").unwrap();
        assert_eq!(keys(&after), vec![20], "past the object: the snapshot alone");
    }

    /// A snapshot at the end of the segment whose commits straddle the time comes after the
    /// landing commit: the restore starts from a base before it.
    #[test]
    fn a_time_inside_a_segment_never_starts_from_a_snapshot_at_its_end() {
        let objects =
            [segment(1, 10, 100, 200), segment(11, 20, 300, 400), snapshot(20, Some(400)), segment(21, 30, 500, 600)];
        let inside = plan(&objects, RestorePoint::Time(350), 10_000, "ns").unwrap();
        assert_eq!((keys(&inside), inside.frame_no, inside.snapshot.is_none()), (vec![10, 20], 20, true));
        // At or after the snapshot's commit, the snapshot is the base.
        let at = plan(&objects, RestorePoint::Time(450), 10_000, "ns").unwrap();
        assert_eq!(keys(&at), vec![20]);
        // A snapshot committed before the time, inside a pack that straddles it, is a base.
        let times = CommitTimes { first: 100, last: 600 };
        let pack = StoredObject {
            key: crate::storage::layout::pack_key("ns", 1, 30, times),
            size: 10,
            kind: ObjectKind::Pack { start_frame_no: 1, end_frame_no: 30, commit_times: times },
        };
        let objects = [pack.clone(), snapshot(20, Some(400)), snapshot(30, Some(600))];
        assert_eq!(keys(&plan(&objects, RestorePoint::Time(450), 10_000, "ns").unwrap()), vec![20, 30]);
        assert_eq!(keys(&plan(&objects, RestorePoint::Time(350), 10_000, "ns").unwrap()), vec![30]);
        // With no base left before the landing, the time is before the window.
        let objects = [segment(21, 30, 500, 600), snapshot(30, Some(600))];
        let refused = plan(&objects, RestorePoint::Time(550), 10_000, "ns").unwrap_err().to_string();
        assert!(refused.contains("before the window"), "{refused}");
    }

    #[test]
    fn a_point_past_a_gap_without_a_base_is_refused_as_after_the_gap() {
        // 21..=30 is missing; 31..=40 is stranded: no snapshot after the gap.
        let objects = [segment(1, 10, 100, 200), segment(11, 20, 300, 400), segment(31, 40, 700, 800)];
        for point in [RestorePoint::FrameNo(35), RestorePoint::FrameNo(40), RestorePoint::Time(750)] {
            let error = plan(&objects, point, 10_000, "ns").unwrap_err().to_string();
            assert!(error.contains("after a gap: frames 21..=30 are in no stored object"), "{point:?}: {error}");
            assert!(error.contains("the restorable window is frames 1..=20"), "{point:?}: {error}");
        }
        let time = plan(&objects, RestorePoint::Time(750), 10_000, "ns").unwrap_err().to_string();
        assert!(time.starts_with("restore: 1970-01-01T00:00:00.750Z is after a gap"), "the point asked for: {time}");
        let inside = plan(&objects, RestorePoint::FrameNo(25), 10_000, "ns").unwrap_err().to_string();
        assert!(inside.contains("frame_no 25 is in a gap: frames 21..=30"), "{inside}");
        let past = plan(&objects, RestorePoint::FrameNo(41), 10_000, "ns").unwrap_err().to_string();
        assert!(past.contains("frame_no 41 is after the end of what storage holds"), "{past}");
    }

    #[test]
    fn objects_without_times_restore_by_frame_only() {
        let mut old = segment(1, 10, 0, 0);
        old.kind = ObjectKind::Segment { start_frame_no: 1, end_frame_no: 10, commit_times: None };
        let objects = [old, segment(11, 20, 300, 400)];
        assert_eq!(plan(&objects, RestorePoint::FrameNo(5), 10_000, "ns").unwrap().frame_no, 5);
        assert_eq!(plan(&objects, RestorePoint::Time(350), 10_000, "ns").unwrap().frame_no, 20);
        let unknown = plan(&objects, RestorePoint::Time(250), 10_000, "ns").unwrap_err().to_string();
        assert!(unknown.contains("--frame-no"), "{unknown}");
    }
}
