//! The journal on a disk that fills up: simulated with `RLIMIT_FSIZE` (writes past the limit
//! fail as a full disk does, with `EFBIG` instead of `ENOSPC`: the same error path). Its own
//! test binary because the limit is process-wide. A failed batch is cut back (no torn record
//! on disk), counted as not written, kept in memory to be sent; nothing panics; reopened, the
//! journal holds exactly the records that were written.

use edgefuse_sinks::journal::Journal;

#[test]
fn a_full_disk_is_counted_and_leaves_only_whole_records() {
    let dir = tempfile::tempdir().unwrap();
    let limit: u64 = 8 * 1024;
    // SAFETY: plain libc calls on this process: ignore SIGXFSZ (so a write past the limit
    // fails with EFBIG instead of killing the process) and lower the file-size limit.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let r = libc::rlimit {
            rlim_cur: limit,
            rlim_max: libc::RLIM_INFINITY,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &r), 0);
    }
    let mut j = Journal::open(Some(dir.path()), 1 << 20, &["mqtt"]).unwrap();
    let n = 20u64;
    for i in 0..n {
        j.append(format!("{i:04}{}", "x".repeat(996)).into_bytes());
        j.sync();
    }
    let s = j.stats();
    assert!(s.not_written > 0, "{s:?}");
    assert_eq!(j.pending() as u64, n, "kept in memory, still sent");
    drop(j);
    // SAFETY: as above, raising the limit again.
    unsafe {
        let r = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &r), 0);
    }
    let j = Journal::open(Some(dir.path()), 1 << 20, &["mqtt"]).unwrap();
    assert_eq!(j.stats().torn, 0, "no torn record was left behind");
    let ids: Vec<u64> = j.after(0).map(|r| r.id).collect();
    assert_eq!(ids.len() as u64, n - s.not_written, "{s:?}");
    assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>());
    for r in j.after(0) {
        assert_eq!(
            &r.payload[..4],
            format!("{:04}", r.id - 1).as_bytes(),
            "whole records"
        );
    }
}
