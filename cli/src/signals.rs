//! SIGINT, SIGTERM and SIGHUP. The first one sets the process's stop flag ([`install`]): `run`
//! and `bench` finish the frame in hand and print their summary (a waiting run sees the flag
//! within [`edgefuse_runtime::pipeline::STOP_POLL`], whatever the source's pace). A command that
//! cannot stop cleanly on its own (`calibrate`) asks instead to exit on it
//! ([`exit_on_signal`]), removing its unfinished output first. A second signal exits at once
//! with the conventional code 128 + the signal number (130 for SIGINT, 143 for SIGTERM).
//!
//! Once a command asks for reloads ([`reload_on_hup`]: `run` with `--config`), SIGHUP no longer
//! stops it: each one runs the reload on the signal thread, as often as it comes.
//!
//! The handler itself only stores atomics and writes to a pipe (async-signal-safe); a thread
//! reading the pipe does the rest.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Mutex, MutexGuard, Once, PoisonError};

static STOP: AtomicBool = AtomicBool::new(false);
/// The first signal received (0: none yet).
static FIRST: AtomicI32 = AtomicI32::new(0);
/// The write end of the pipe to the signal thread (-1 until installed).
static PIPE: AtomicI32 = AtomicI32::new(-1);
/// SIGHUP reloads instead of stopping (see [`reload_on_hup`]).
static RELOAD_ON_HUP: AtomicBool = AtomicBool::new(false);

type ReloadFn = Box<dyn FnMut() + Send>;
static RELOAD: Mutex<Option<ReloadFn>> = Mutex::new(None);

/// What the signal thread does after setting the stop flag.
#[derive(Debug, Default)]
struct Action {
    /// Exit (128 + signal) instead of letting the command stop on its own.
    exit: bool,
    /// Removed before that exit: an unfinished output folder.
    remove: Option<PathBuf>,
}

static ACTION: Mutex<Action> = Mutex::new(Action {
    exit: false,
    remove: None,
});

fn action() -> MutexGuard<'static, Action> {
    ACTION.lock().unwrap_or_else(PoisonError::into_inner)
}

const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

extern "C" fn on_signal(sig: libc::c_int) {
    // SAFETY: only async-signal-safe calls (errno access, write, _exit) on static data.
    unsafe {
        let errno = *libc::__errno_location();
        if sig == libc::SIGHUP && RELOAD_ON_HUP.load(Ordering::SeqCst) {
            let fd = PIPE.load(Ordering::SeqCst);
            if fd >= 0 {
                let b = sig as u8;
                libc::write(fd, std::ptr::from_ref(&b).cast(), 1);
            }
            *libc::__errno_location() = errno;
            return;
        }
        if FIRST
            .compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            let msg = b"edgefuse: second signal: exiting at once\n";
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::_exit(128 + sig);
        }
        STOP.store(true, Ordering::SeqCst);
        let fd = PIPE.load(Ordering::SeqCst);
        if fd >= 0 {
            let b = sig as u8;
            libc::write(fd, std::ptr::from_ref(&b).cast(), 1);
        }
        *libc::__errno_location() = errno;
    }
}

/// The thread that acts on signals outside the signal handler: every reload, and the first
/// stop signal.
fn signal_thread(read_fd: libc::c_int) {
    let mut b = 0u8;
    loop {
        // SAFETY: reading one byte into a local from a pipe this module owns.
        let n = unsafe { libc::read(read_fd, std::ptr::from_mut(&mut b).cast(), 1) };
        if n == 1 {
            if i32::from(b) == libc::SIGHUP && FIRST.load(Ordering::SeqCst) != libc::SIGHUP {
                if let Some(reload) = RELOAD
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .as_mut()
                {
                    reload();
                }
                continue;
            }
            break;
        }
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        return;
    }
    let sig = i32::from(b);
    let a = action();
    if !a.exit {
        return;
    }
    let mut err = std::io::stderr().lock();
    match &a.remove {
        Some(p) if p.exists() => match remove_retrying(p) {
            Ok(()) => {
                let _ = writeln!(
                    err,
                    "\nedgefuse: stopped by {}; removed the unfinished {}",
                    name(sig),
                    p.display()
                );
            }
            Err(e) => {
                let _ = writeln!(
                    err,
                    "\nedgefuse: stopped by {}; could not remove the unfinished {}: {e}",
                    name(sig),
                    p.display()
                );
            }
        },
        _ => {
            let _ = writeln!(err, "\nedgefuse: stopped by {}", name(sig));
        }
    }
    drop(err);
    // The lock is held to the end: a commit waiting for it never runs.
    std::process::exit(128 + sig);
}

/// `remove_dir_all`, retried: the command goes on writing into the folder meanwhile.
fn remove_retrying(dir: &Path) -> std::io::Result<()> {
    let mut tries = 0;
    loop {
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound && tries < 10 => tries += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            r => return r,
        }
    }
}

fn name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

/// Install the handlers (once per process) and return the stop flag they set.
pub fn install() -> &'static AtomicBool {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        if let Err(e) = try_install() {
            log::warn!("cannot install the signal handlers ({e}); stop with SIGKILL");
        }
    });
    &STOP
}

fn try_install() -> std::io::Result<()> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills the two descriptors of a fresh pipe.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    PIPE.store(fds[1], Ordering::SeqCst);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || signal_thread(fds[0]))?;
    for sig in SIGNALS {
        // SAFETY: a zeroed sigaction with a plain handler and an empty mask is valid; the
        // handler only does async-signal-safe work.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// From now on SIGHUP runs `reload` (on the signal thread) instead of stopping the command.
pub fn reload_on_hup(reload: impl FnMut() + Send + 'static) {
    install();
    *RELOAD.lock().unwrap_or_else(PoisonError::into_inner) = Some(Box::new(reload));
    RELOAD_ON_HUP.store(true, Ordering::SeqCst);
}

/// Exit on the first signal (128 + its number) instead of setting the stop flag only, for a
/// command whose work cannot stop midway; see [`remove_on_signal`] for what it leaves behind.
pub fn exit_on_signal() {
    action().exit = true;
    install();
}

/// Until the returned guard is dropped or disarmed, a signal removes `dir` before exiting.
pub fn remove_on_signal(dir: &Path) -> RemoveGuard {
    action().remove = Some(dir.to_path_buf());
    RemoveGuard
}

/// See [`remove_on_signal`].
#[derive(Debug)]
pub struct RemoveGuard;

impl RemoveGuard {
    /// Run `commit` (which moves the folder into place) with signals held off: a signal during
    /// it waits for it, then exits without removing anything.
    pub fn commit<T>(self, commit: impl FnOnce() -> T) -> T {
        let mut a = action();
        let out = commit();
        a.remove = None;
        out
    }
}

impl Drop for RemoveGuard {
    fn drop(&mut self) {
        action().remove = None;
    }
}
