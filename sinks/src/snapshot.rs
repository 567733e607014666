//! Snapshots: a JPEG of the frame that fired (and optionally the N frames before it) written to
//! a folder, crash-safely (temporary file, fsync, rename, fsync of the folder), with a cap on
//! the number of files and their total size (the oldest snapshots are deleted to make room).
//!
//! The inference thread's side ([`SnapshotCapture`]) copies frames into buffers it took from a
//! pool when the run started: each frame into a ring of the last N (only when N > 0), and on a
//! fire the ring's buffers are swapped (not copied) into a free job, the firing frame copied
//! after them. Every buffer is grown to the frame size on the first frame (warm-up); after
//! that this allocates nothing (unless the frames grow). A fire while every job is busy is counted and gets no snapshot. The
//! dispatcher thread ([`SnapshotWriter`]) converts to RGB (the status page's conversion), encodes
//! and writes.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use edgefuse_runtime::frame::Frame;

/// Jobs (fires waiting for the encoder) the pool holds.
const JOBS: usize = 4;

/// What to snapshot and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotConfig {
    /// The folder (created if missing).
    pub dir: PathBuf,
    /// Frames before the firing one also written (0..=8).
    pub before: usize,
    /// Most snapshot files kept; the oldest go first.
    pub max_files: u64,
    /// Most bytes of snapshot files kept; the oldest go first.
    pub max_bytes: u64,
    /// JPEG quality, 1..=100.
    pub quality: u8,
}

/// The snapshot folder cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("--snapshots {path}: {source}; create the folder and make it writable by this user, or choose another")]
pub struct SnapshotError {
    /// The folder.
    pub path: PathBuf,
    /// What failed.
    #[source]
    pub source: io::Error,
}

struct Job {
    frames: Vec<Frame>,
    used: usize,
}

struct Pool {
    jobs: VecDeque<Job>,
    spare: Vec<Job>,
    skipped: u64,
}

fn lock(m: &Mutex<Pool>) -> MutexGuard<'_, Pool> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The inference thread's side.
pub struct SnapshotCapture {
    /// Bytes every buffer has room for (grown on the first frame, and again only if the
    /// frames grow).
    reserved: usize,
    history: Vec<Frame>,
    next: usize,
    filled: usize,
    pool: Arc<Mutex<Pool>>,
}

/// The dispatcher thread's side.
pub struct SnapshotWriter {
    cfg: SnapshotConfig,
    pool: Arc<Mutex<Pool>>,
    written: u64,
    rgb: Vec<u8>,
    /// Snapshot files present, oldest first, with their sizes.
    files: VecDeque<(PathBuf, u64)>,
}

/// Check the folder (created if needed, must be writable) and build both sides.
pub fn open(cfg: &SnapshotConfig) -> Result<(SnapshotCapture, SnapshotWriter), SnapshotError> {
    let err = |source| SnapshotError {
        path: cfg.dir.clone(),
        source,
    };
    fs::create_dir_all(&cfg.dir).map_err(err)?;
    let probe = cfg.dir.join(".edgefuse-probe");
    File::create(&probe).map_err(err)?;
    let _ = fs::remove_file(&probe);
    let mut files: Vec<(PathBuf, u64)> = fs::read_dir(&cfg.dir)
        .map_err(err)?
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.starts_with("event-") && n.ends_with(".jpg")
        })
        .filter_map(|e| Some((e.path(), e.metadata().ok()?.len())))
        .collect();
    files.sort();
    let n = cfg.before + 1;
    let job = || Job {
        frames: (0..n).map(|_| Frame::with_capacity(0)).collect(),
        used: 0,
    };
    let pool = Arc::new(Mutex::new(Pool {
        jobs: VecDeque::with_capacity(JOBS),
        spare: (0..JOBS).map(|_| job()).collect(),
        skipped: 0,
    }));
    Ok((
        SnapshotCapture {
            reserved: 0,
            history: (0..cfg.before).map(|_| Frame::with_capacity(0)).collect(),
            next: 0,
            filled: 0,
            pool: pool.clone(),
        },
        SnapshotWriter {
            cfg: cfg.clone(),
            pool,
            written: 0,
            rgb: Vec::new(),
            files: files.into(),
        },
    ))
}

impl SnapshotCapture {
    /// Give every buffer (the ring's and the idle jobs') room for `frame`: allocates on the
    /// first frame (warm-up), afterwards only if the frames grow.
    fn reserve(&mut self, frame: &Frame) {
        let need = frame.data.len();
        if need <= self.reserved {
            return;
        }
        let grow = |f: &mut Frame| f.data.reserve(need.saturating_sub(f.data.len()));
        self.history.iter_mut().for_each(grow);
        for job in &mut lock(&self.pool).spare {
            job.frames.iter_mut().for_each(grow);
        }
        self.reserved = need;
    }

    /// Keep a copy of a frame that did not fire, for the frames-before of the next fire.
    pub fn remember(&mut self, frame: &Frame) {
        self.reserve(frame);
        if self.history.is_empty() {
            return;
        }
        self.history[self.next].copy_from(frame);
        self.next = (self.next + 1) % self.history.len();
        self.filled = (self.filled + 1).min(self.history.len());
    }

    /// The frame fired: queue it (and the remembered frames before it) for the writer.
    /// `false` when every job is busy (counted).
    pub fn fire(&mut self, frame: &Frame) -> bool {
        self.reserve(frame);
        let mut pool = lock(&self.pool);
        let Some(mut job) = pool.spare.pop() else {
            pool.skipped += 1;
            return false;
        };
        drop(pool);
        let n = self.history.len();
        let start = (self.next + n - self.filled) % n.max(1);
        for k in 0..self.filled {
            std::mem::swap(&mut job.frames[k], &mut self.history[(start + k) % n]);
        }
        job.frames[self.filled].copy_from(frame);
        job.used = self.filled + 1;
        self.filled = 0;
        self.next = 0;
        let mut pool = lock(&self.pool);
        pool.jobs.push_back(job);
        true
    }
}

fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<PathBuf> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        let path = dir.join(name);
        fs::rename(&tmp, &path)?;
        File::open(dir)?.sync_all()?;
        Ok(path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

impl SnapshotWriter {
    /// Write the queued job of frame `seq` for event `id` decided at `unix_ms`:
    /// `event-<unix ms>-<id>.jpg` and, before it, `event-<unix ms>-<id>-before-<k>.jpg` (k = 1
    /// is the frame just before; the time keeps names unique and in order across runs whose
    /// ids restart, as they do without a journal folder). Returns the firing frame's
    /// path, `None` when there was no job (the fire was skipped) or writing failed (logged).
    pub fn write(&mut self, id: u64, seq: u64, unix_ms: u64) -> Option<String> {
        // Jobs of facts the queue had to drop are older than this one: recycle them.
        let job = loop {
            let mut pool = lock(&self.pool);
            let job = pool.jobs.pop_front()?;
            if job.used > 0 && job.frames[job.used - 1].seq == seq {
                break job;
            }
            pool.spare.push(job);
        };
        let mut path = None;
        for (k, frame) in job.frames[..job.used].iter().enumerate() {
            let back = job.used - 1 - k;
            let name = if back == 0 {
                format!("event-{unix_ms:013}-{id}.jpg")
            } else {
                format!("event-{unix_ms:013}-{id}-before-{back}.jpg")
            };
            match self.encode_and_write(frame, &name) {
                Ok(p) => {
                    if back == 0 {
                        path = Some(p.to_string_lossy().into_owned());
                    }
                }
                Err(e) => {
                    log::error!(
                        "snapshots: cannot write {}: {e}",
                        self.cfg.dir.join(&name).display()
                    );
                    break;
                }
            }
        }
        lock(&self.pool).spare.push(job);
        path
    }

    fn encode_and_write(&mut self, frame: &Frame, name: &str) -> io::Result<PathBuf> {
        // The status page's conversion (BT.601 limited range for the YUV formats).
        crate::http::snapshot::to_rgb(
            &frame.data,
            frame.width,
            frame.height,
            frame.format,
            &mut self.rgb,
        )
        .ok_or_else(|| io::Error::other("the frame is shorter than its format needs"))?;
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, self.cfg.quality)
            .encode(
                &self.rgb,
                frame.width,
                frame.height,
                image::ExtendedColorType::Rgb8,
            )
            .map_err(io::Error::other)?;
        let size = jpeg.len() as u64;
        // Make room: the oldest files go until this one fits both caps.
        while !self.files.is_empty()
            && (self.files.len() as u64 + 1 > self.cfg.max_files
                || self.files.iter().map(|f| f.1).sum::<u64>() + size > self.cfg.max_bytes)
        {
            let (old, _) = self.files.pop_front().expect("not empty");
            let _ = fs::remove_file(old);
        }
        let path = write_atomic(&self.cfg.dir, name, &jpeg)?;
        self.files.push_back((path.clone(), size));
        self.written += 1;
        Ok(path)
    }

    /// Files written, fires skipped (every job busy).
    pub fn counts(&self) -> (u64, u64) {
        (self.written, lock(&self.pool).skipped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgefuse_runtime::frame::PixelFormat;

    fn frame(seq: u64, format: PixelFormat, shade: u8) -> Frame {
        let mut f = Frame::with_capacity(0);
        f.reshape(64, 48, format);
        f.data.iter_mut().for_each(|b| *b = shade);
        f.seq = seq;
        f
    }

    #[test]
    fn fired_frames_become_complete_jpegs_with_the_frames_before() {
        let d = tempfile::tempdir().unwrap();
        let cfg = SnapshotConfig {
            dir: d.path().join("snaps"),
            before: 2,
            max_files: 100,
            max_bytes: 1 << 30,
            quality: 80,
        };
        let (mut c, mut w) = open(&cfg).unwrap();
        for (i, fmt) in PixelFormat::ALL.into_iter().enumerate() {
            c.remember(&frame(i as u64 * 10, fmt, 100));
            c.remember(&frame(i as u64 * 10 + 1, fmt, 150));
            assert!(c.fire(&frame(i as u64 * 10 + 2, fmt, 200)));
            let p = w
                .write(i as u64 + 1, i as u64 * 10 + 2, 7)
                .expect("written");
            assert!(
                p.ends_with(&format!("event-0000000000007-{}.jpg", i + 1)),
                "{p}"
            );
            for name in [
                p.clone(),
                p.replace(".jpg", "-before-1.jpg"),
                p.replace(".jpg", "-before-2.jpg"),
            ] {
                let bytes = fs::read(&name).unwrap();
                assert_eq!(&bytes[..2], [0xff, 0xd8], "{name}");
                assert_eq!(&bytes[bytes.len() - 2..], [0xff, 0xd9], "{name}: complete");
                let img = image::load_from_memory(&bytes).unwrap();
                assert_eq!((img.width(), img.height()), (64, 48));
            }
        }
        assert_eq!(w.counts(), (15, 0));
        let leftovers = fs::read_dir(&cfg.dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with('.')
            })
            .count();
        assert_eq!(leftovers, 0, "no temporary files left");
    }

    #[test]
    fn caps_delete_the_oldest_and_busy_fires_are_counted() {
        let d = tempfile::tempdir().unwrap();
        let cfg = SnapshotConfig {
            dir: d.path().to_path_buf(),
            before: 0,
            max_files: 3,
            max_bytes: 1 << 30,
            quality: 50,
        };
        let (mut c, mut w) = open(&cfg).unwrap();
        for i in 0..JOBS as u64 + 1 {
            assert_eq!(c.fire(&frame(i, PixelFormat::Grey, 9)), i < JOBS as u64);
        }
        for id in 1..=JOBS as u64 {
            assert!(w.write(id, id - 1, 1000 + id).is_some());
        }
        assert!(w.write(99, 99, 2000).is_none(), "no job left");
        let n = fs::read_dir(d.path()).unwrap().count();
        assert_eq!(n, 3);
        assert!(!d.path().join("event-0000000001001-1.jpg").exists());
        assert!(d.path().join("event-0000000001004-4.jpg").exists());
        assert_eq!(w.counts(), (JOBS as u64, 1));
    }

    #[test]
    fn an_unwritable_folder_is_a_clear_error() {
        let cfg = SnapshotConfig {
            dir: PathBuf::from("/proc/edgefuse-snaps"),
            before: 0,
            max_files: 1,
            max_bytes: 1,
            quality: 80,
        };
        let e = open(&cfg).err().unwrap().to_string();
        assert!(e.contains("--snapshots /proc/edgefuse-snaps"), "{e}");
    }
}
