//! The store-and-forward journal: every event is appended here before any publisher sends it,
//! and removed only when every publisher that reads it (MQTT, webhook) has it acknowledged.
//!
//! On disk, a folder of segment files `events-<first id>.log`, each a sequence of records
//! `[payload length u32 LE][CRC-32 u32 LE][id u64 LE][payload]` (the CRC covers id and
//! payload), appended and `fdatasync`ed once per batch. Each reader's acknowledged id is kept
//! in `acked-<reader>` (written to a temporary file, synced, renamed). Opening the folder reads
//! every segment: a torn or corrupt record (a crash mid-write, a bad sector) ends its segment:
//! the rest of that file is cut off with a warning and counted, never a crash. Records not yet
//! acknowledged by every reader are kept in memory too (the journal is bounded, so this is
//! bounded) and replayed in order at start and after every reconnect.
//!
//! Ids increase by one per event and survive restarts (the next id follows the largest id in
//! the segments or in any `acked-*` file): a record sent twice (sent, then the connection died
//! before its acknowledgement came) carries the same id both times. Delivery is at least once.
//!
//! The journal is bounded: when its segments exceed the limit, the oldest segment is deleted
//! and its records not yet acknowledged are counted as dropped. Without a folder the same
//! logic runs in memory (events survive a broker outage, not a restart).

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::stats::EventStats;

/// Largest record payload accepted (an event is a few hundred bytes; a longer length field is
/// corruption).
pub const MAX_RECORD: usize = 1 << 20;
const HEADER: usize = 16;

/// Why the journal cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The folder cannot be created, listed or written.
    #[error("journal {path}: {source}; check that the folder exists and is writable by this user, or pass another --journal DIR")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What failed.
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One record: its id and payload.
#[derive(Debug, Clone)]
pub struct Record {
    /// The record's id.
    pub id: u64,
    /// The payload (an event's JSON).
    pub payload: Vec<u8>,
}

#[derive(Debug)]
struct Segment {
    last: u64,
    bytes: u64,
    path: Option<PathBuf>,
}

/// Counters for the summary and the status topic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Records dropped unacknowledged because the journal was full.
    pub dropped: u64,
    /// Torn or corrupt records cut off when the journal was opened.
    pub torn: u64,
    /// Records that could not be written to disk (kept in memory and still sent).
    pub not_written: u64,
    /// Records replayed from disk at open (not yet acknowledged by some reader).
    pub replayed: u64,
}

/// The journal (see the module docs).
#[derive(Debug)]
pub struct Journal {
    dir: Option<PathBuf>,
    max_bytes: u64,
    segment_bytes: u64,
    segments: VecDeque<Segment>,
    file: Option<File>,
    /// Encoded records appended since the last sync.
    unsynced: Vec<u8>,
    records: VecDeque<Record>,
    next_id: u64,
    readers: Vec<(String, u64)>,
    cursor_dirty: bool,
    stats: JournalStats,
    /// The last write error, logged once until a write succeeds again.
    failing: bool,
    /// Live figures for the status server, when one reads them.
    live: Option<Arc<EventStats>>,
}

fn encode(id: u64, payload: &[u8], out: &mut Vec<u8>) {
    let mut h = crc32fast::Hasher::new();
    h.update(&id.to_le_bytes());
    h.update(payload);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Parse the records of one segment's bytes: the records and the length of the valid prefix.
fn decode(bytes: &[u8]) -> (Vec<Record>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= HEADER {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap());
        let id = u64::from_le_bytes(bytes[at + 8..at + 16].try_into().unwrap());
        if len > MAX_RECORD || bytes.len() - at - HEADER < len {
            break;
        }
        let payload = &bytes[at + HEADER..at + HEADER + len];
        let mut h = crc32fast::Hasher::new();
        h.update(&id.to_le_bytes());
        h.update(payload);
        if h.finalize() != crc || out.last().is_some_and(|r: &Record| r.id >= id) {
            break;
        }
        out.push(Record {
            id,
            payload: payload.to_vec(),
        });
        at += HEADER + len;
    }
    (out, at)
}

fn segment_name(first: u64) -> String {
    format!("events-{first:020}.log")
}

/// Write `text` to `path` crash-safely: temporary file, fsync, rename, fsync of the folder.
fn write_atomic(dir: &Path, name: &str, text: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(text)?;
    f.sync_data()?;
    fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

impl Journal {
    /// Open (or create) the journal in `dir` (`None`: in memory) for `readers`, bounded to
    /// `max_bytes` of records. Existing segments are read back: records some reader has not
    /// acknowledged are kept for replay, torn tails are cut off with a warning.
    pub fn open(
        dir: Option<&Path>,
        max_bytes: u64,
        readers: &[&str],
    ) -> Result<Self, JournalError> {
        let max_bytes = max_bytes.max(4096);
        let mut j = Journal {
            dir: dir.map(Path::to_path_buf),
            max_bytes,
            segment_bytes: (max_bytes / 8).clamp(4096, 8 << 20),
            segments: VecDeque::new(),
            file: None,
            unsynced: Vec::new(),
            records: VecDeque::new(),
            next_id: 1,
            readers: readers.iter().map(|r| (r.to_string(), u64::MAX)).collect(),
            cursor_dirty: false,
            stats: JournalStats::default(),
            failing: false,
            live: None,
        };
        if let Some(dir) = dir {
            j.load(dir)?;
        }
        for r in &mut j.readers {
            if r.1 == u64::MAX {
                // A reader without a cursor yet gets everything the journal still holds.
                r.1 = j.records.front().map_or(j.next_id - 1, |r| r.id - 1);
            }
        }
        j.trim();
        j.stats.replayed = j.records.len() as u64;
        Ok(j)
    }

    fn load(&mut self, dir: &Path) -> Result<(), JournalError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        // Can we write here at all? Say so now, not at the first event.
        let probe = dir.join(".probe");
        File::create(&probe).map_err(io_err(dir))?;
        let _ = fs::remove_file(&probe);
        let mut names = Vec::new();
        let mut high = 0u64;
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(first) = name
                .strip_prefix("events-")
                .and_then(|s| s.strip_suffix(".log"))
                .and_then(|s| s.parse::<u64>().ok())
            {
                names.push((first, entry.path()));
            } else if let Some(reader) = name.strip_prefix("acked-") {
                let p = entry.path();
                let text = fs::read_to_string(&p).map_err(io_err(&p))?;
                let Ok(id) = text.trim().parse::<u64>() else {
                    log::warn!(
                        "journal {}: not a record id ({:?}); the reader starts from the oldest record",
                        p.display(),
                        text.trim()
                    );
                    continue;
                };
                high = high.max(id);
                if let Some(r) = self.readers.iter_mut().find(|r| r.0 == reader) {
                    r.1 = id;
                }
            }
        }
        names.sort();
        for (first, path) in names {
            let mut bytes = Vec::new();
            File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(io_err(&path))?;
            let (records, valid) = decode(&bytes);
            if valid < bytes.len() {
                self.stats.torn += 1;
                log::warn!(
                    "journal {}: torn or corrupt record at byte {valid} (a crash during a write?); \
                     dropping the last {} bytes of this segment",
                    path.display(),
                    bytes.len() - valid
                );
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_len(valid as u64).and_then(|()| f.sync_all()))
                    .map_err(io_err(&path))?;
            }
            let Some(last) = records.last().map(|r| r.id) else {
                let _ = fs::remove_file(&path);
                continue;
            };
            high = high.max(last);
            let _ = first;
            self.segments.push_back(Segment {
                last,
                bytes: valid as u64,
                path: Some(path),
            });
            self.records.extend(records);
        }
        self.next_id = high + 1;
        Ok(())
    }

    /// Keep `live` up to date from now on (pending records, size, losses): stored on every
    /// append, acknowledgement and write.
    pub fn set_live(&mut self, live: Arc<EventStats>) {
        EventStats::set(&live.journal_limit_bytes, self.max_bytes);
        self.live = Some(live);
        self.publish();
    }

    fn publish(&self) {
        let Some(l) = &self.live else {
            return;
        };
        EventStats::set(&l.journal_pending, self.records.len() as u64);
        EventStats::set(&l.journal_bytes, self.bytes());
        EventStats::set(&l.journal_dropped, self.stats.dropped);
        EventStats::set(&l.journal_not_written, self.stats.not_written);
    }

    /// Bytes of the segments (records not yet trimmed, headers included): what counts against
    /// the bound.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// The id the next record gets.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Counters so far.
    pub fn stats(&self) -> JournalStats {
        self.stats
    }

    /// Records not yet acknowledged by every reader.
    pub fn pending(&self) -> usize {
        self.records.len()
    }

    /// The id reader `r` (index in the list given to `open`) has acknowledged up to.
    pub fn acked(&self, r: usize) -> u64 {
        self.readers[r].1
    }

    /// Records after `id`, in order.
    pub fn after(&self, id: u64) -> impl Iterator<Item = &Record> {
        let start = self.records.partition_point(|r| r.id <= id);
        self.records.range(start..)
    }

    /// Append a record (written at the next [`Journal::sync`]); returns its id.
    pub fn append(&mut self, payload: Vec<u8>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let len = (HEADER + payload.len()) as u64;
        let rotate = self
            .segments
            .back()
            .is_none_or(|s| s.bytes + len > self.segment_bytes && s.bytes > 0);
        if rotate {
            self.flush();
            self.file = None;
            let path = self.dir.as_ref().map(|d| d.join(segment_name(id)));
            self.segments.push_back(Segment {
                last: id,
                bytes: 0,
                path,
            });
        }
        let seg = self
            .segments
            .back_mut()
            .expect("a segment was just ensured");
        seg.last = id;
        seg.bytes += len;
        if self.dir.is_some() {
            encode(id, &payload, &mut self.unsynced);
        }
        self.records.push_back(Record { id, payload });
        self.enforce_limit();
        self.publish();
        id
    }

    /// Drop the oldest segments while the journal is over its limit (never the one being
    /// written), counting their records not yet acknowledged by every reader.
    fn enforce_limit(&mut self) {
        while self.segments.len() > 1
            && self.segments.iter().map(|s| s.bytes).sum::<u64>() > self.max_bytes
        {
            let s = self.segments.pop_front().expect("len > 1");
            let min = self.readers.iter().map(|r| r.1).min().unwrap_or(s.last);
            let lost = self
                .records
                .iter()
                .take_while(|r| r.id <= s.last)
                .filter(|r| r.id > min)
                .count() as u64;
            if lost > 0 {
                if self.stats.dropped == 0 {
                    log::warn!(
                        "journal full ({} bytes): dropping the oldest unsent events (counted in the summary); raise --journal-max-mb or restore the connection",
                        self.max_bytes
                    );
                }
                self.stats.dropped += lost;
            }
            while self.records.front().is_some_and(|r| r.id <= s.last) {
                self.records.pop_front();
            }
            for r in &mut self.readers {
                if r.1 < s.last {
                    r.1 = s.last;
                    self.cursor_dirty = true;
                }
            }
            if let Some(p) = &s.path {
                let _ = fs::remove_file(p);
            }
        }
    }

    /// Write what was appended since the last sync and `fdatasync` it. A failure (full disk,
    /// I/O error) is logged once until writing works again and counted; the records stay in
    /// memory and are still sent.
    pub fn sync(&mut self) {
        self.flush();
        if self.cursor_dirty {
            self.save_cursors();
        }
        self.publish();
    }

    fn flush(&mut self) {
        if self.unsynced.is_empty() {
            return;
        }
        let Some(seg) = self.segments.back() else {
            return;
        };
        let Some(path) = seg.path.clone() else {
            self.unsynced.clear();
            return;
        };
        let result = (|| {
            if self.file.is_none() {
                let f = OpenOptions::new().create(true).append(true).open(&path)?;
                if let Some(d) = &self.dir {
                    File::open(d)?.sync_all()?;
                }
                self.file = Some(f);
            }
            let f = self.file.as_mut().expect("opened above");
            let before = f.metadata()?.len();
            if let Err(e) = f.write_all(&self.unsynced).and_then(|()| f.sync_data()) {
                // Leave no torn record behind if the file can still be cut back.
                let _ = f.set_len(before);
                return Err(e);
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                if self.failing {
                    log::warn!("journal {}: writing works again", path.display());
                }
                self.failing = false;
            }
            Err(e) => {
                let (n, _) = decode(&self.unsynced);
                self.stats.not_written += n.len() as u64;
                if !self.failing {
                    log::error!(
                        "journal {}: cannot write ({e}); events are kept in memory and still sent, \
                         but would not survive a restart (counted in the summary); free space in the journal folder",
                        path.display()
                    );
                }
                self.failing = true;
                self.file = None;
            }
        }
        self.unsynced.clear();
    }

    /// Reader `r` has every record up to `id` acknowledged. Records every reader has are
    /// removed from memory; whole segments of them from disk.
    pub fn ack(&mut self, r: usize, id: u64) {
        if id > self.readers[r].1 {
            self.readers[r].1 = id;
            self.cursor_dirty = true;
            self.trim();
            self.publish();
        }
    }

    fn trim(&mut self) {
        let min = self.readers.iter().map(|r| r.1).min().unwrap_or(u64::MAX);
        while self.records.front().is_some_and(|r| r.id <= min) {
            self.records.pop_front();
        }
        while self.segments.len() > 1 && self.segments[0].last <= min {
            let s = self.segments.pop_front().expect("len > 1");
            if let Some(p) = &s.path {
                // The cursor goes first: a crash between the two replays nothing twice.
                self.save_cursors();
                let _ = fs::remove_file(p);
            }
        }
    }

    /// Persist the readers' cursors if an acknowledgement moved one since the last save.
    pub fn save_cursors_if_changed(&mut self) {
        if self.cursor_dirty {
            self.save_cursors();
        }
    }

    /// Persist the readers' cursors (also done by [`Journal::sync`]).
    pub fn save_cursors(&mut self) {
        let Some(dir) = self.dir.clone() else {
            self.cursor_dirty = false;
            return;
        };
        for (name, id) in &self.readers {
            if let Err(e) =
                write_atomic(&dir, &format!("acked-{name}"), format!("{id}\n").as_bytes())
            {
                log::warn!(
                    "journal {}: cannot save the {name} cursor ({e}); acknowledged events may be sent again after a restart",
                    dir.display()
                );
            }
        }
        self.cursor_dirty = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payloads(j: &Journal, after: u64) -> Vec<(u64, String)> {
        j.after(after)
            .map(|r| (r.id, String::from_utf8(r.payload.clone()).unwrap()))
            .collect()
    }

    #[test]
    fn records_survive_reopen_and_acked_ones_do_not_come_back() {
        let d = tempfile::tempdir().unwrap();
        let mut j = Journal::open(Some(d.path()), 1 << 20, &["mqtt"]).unwrap();
        for i in 0..5 {
            j.append(format!("e{i}").into_bytes());
        }
        j.sync();
        j.ack(0, 2);
        j.sync();
        drop(j);
        let mut j = Journal::open(Some(d.path()), 1 << 20, &["mqtt"]).unwrap();
        assert_eq!(j.acked(0), 2);
        assert_eq!(
            payloads(&j, j.acked(0)),
            [(3, "e2".into()), (4, "e3".into()), (5, "e4".into())]
        );
        assert_eq!(j.stats().replayed, 3);
        assert_eq!(
            j.append(b"next".to_vec()),
            6,
            "ids continue after a restart"
        );
        j.ack(0, 6);
        j.sync();
        drop(j);
        // Everything acknowledged: ids still continue (from the cursor file).
        let j = Journal::open(Some(d.path()), 1 << 20, &["mqtt"]).unwrap();
        assert_eq!(j.pending(), 0);
        assert_eq!(j.next_id(), 7);
    }

    #[test]
    fn a_torn_tail_is_cut_off_with_a_count_not_a_crash() {
        let d = tempfile::tempdir().unwrap();
        let mut j = Journal::open(Some(d.path()), 1 << 20, &["mqtt"]).unwrap();
        for i in 0..3 {
            j.append(format!("event {i}").into_bytes());
        }
        j.sync();
        drop(j);
        let seg = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().ends_with(".log"))
            .unwrap();
        let full = fs::read(&seg).unwrap();
        // Every cut inside the last record, and a flipped byte in it, lose only that record.
        let last_start = full.len() - (HEADER + "event 2".len());
        for cut in (last_start + 1..full.len()).chain([usize::MAX]) {
            let mut bytes = full.clone();
            if cut == usize::MAX {
                let n = bytes.len();
                bytes[n - 1] ^= 0x40;
            } else {
                bytes.truncate(cut);
            }
            fs::write(&seg, &bytes).unwrap();
            let j = Journal::open(Some(d.path()), 1 << 20, &["mqtt"]).unwrap();
            assert_eq!(j.stats().torn, 1, "cut at {cut}");
            assert_eq!(
                payloads(&j, 0),
                [(1, "event 0".into()), (2, "event 1".into())]
            );
            assert_eq!(fs::metadata(&seg).unwrap().len() as usize, last_start);
            drop(j);
            fs::write(&seg, &full).unwrap();
        }
    }

    #[test]
    fn a_full_journal_drops_the_oldest_unsent_records_and_counts_them() {
        for dir in [true, false] {
            let d = tempfile::tempdir().unwrap();
            let mut j =
                Journal::open(dir.then(|| d.path()), 4096 * 4, &["mqtt", "webhook"]).unwrap();
            let payload = vec![b'x'; 1000];
            for _ in 0..100 {
                j.append(payload.clone());
                j.sync();
            }
            let s = j.stats();
            let kept = j.pending() as u64;
            assert!(s.dropped > 0 && kept > 0, "{s:?}");
            assert_eq!(
                s.dropped + kept,
                100,
                "every record is either kept or counted"
            );
            // The survivors are the newest, in order, and the readers skip the dropped ones.
            let ids: Vec<u64> = j.after(j.acked(0)).map(|r| r.id).collect();
            assert_eq!(ids, ((101 - kept)..=100).collect::<Vec<_>>());
            if dir {
                let on_disk: u64 = fs::read_dir(d.path())
                    .unwrap()
                    .map(|e| e.unwrap())
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
                    .map(|e| e.metadata().unwrap().len())
                    .sum();
                assert!(on_disk <= 4096 * 4, "{on_disk}");
            }
        }
    }

    #[test]
    fn records_stay_until_every_reader_has_them() {
        let mut j = Journal::open(None, 1 << 20, &["mqtt", "webhook"]).unwrap();
        for i in 0..4 {
            j.append(vec![i]);
        }
        j.ack(0, 4);
        assert_eq!(j.pending(), 4);
        assert_eq!(j.after(j.acked(1)).count(), 4);
        j.ack(1, 2);
        assert_eq!(j.pending(), 2);
        assert_eq!(j.after(j.acked(0)).count(), 0);
    }

    #[test]
    fn an_unwritable_folder_is_a_clear_error() {
        let e = Journal::open(
            Some(Path::new("/proc/edgefuse-journal")),
            1 << 20,
            &["mqtt"],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("/proc/edgefuse-journal") && e.contains("--journal"),
            "{e}"
        );
    }
}
