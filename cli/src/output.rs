//! What `run` prints: one line per classified frame (text, or JSON written without allocating)
//! and the summary; and [`Out`], the stdout every
//! command prints through, whose write errors are values ([`StdoutError`]) and never a panic.

use std::fmt;
use std::io::{self, StdoutLock, Write};
use std::time::Duration;

use edgefuse_runtime::actuate::HardwareReport;
use edgefuse_runtime::decision::EventKind;
use edgefuse_runtime::pipeline::{FrameResult, RunSummary, STAGES};

/// Writing to stdout failed. A closed pipe (the reader went away, as after `| head`) ends the
/// command quietly with exit 0; any other write error is a runtime error (exit 1). See `main`.
#[derive(Debug, thiserror::Error)]
#[error("cannot write to stdout: {0}")]
pub struct StdoutError(pub io::Error);

impl StdoutError {
    /// Whether the reader of stdout has gone away (EPIPE): not an error of ours.
    pub fn is_closed_pipe(&self) -> bool {
        self.0.kind() == io::ErrorKind::BrokenPipe
    }
}

/// stdout for `write!`/`writeln!`: each call returns `Result<(), StdoutError>` (std's stdout is
/// line-buffered, so a failed line is reported by the `writeln!` that wrote it). Call
/// [`Out::finish`] at the end to flush a last partial line.
pub struct Out(StdoutLock<'static>);

impl Out {
    /// Lock stdout for this command.
    pub fn lock() -> Self {
        Self(io::stdout().lock())
    }

    /// What `write!`/`writeln!` call.
    pub fn write_fmt(&mut self, args: fmt::Arguments<'_>) -> Result<(), StdoutError> {
        self.0.write_fmt(args).map_err(StdoutError)
    }

    /// Flush what is buffered.
    pub fn finish(mut self) -> Result<(), StdoutError> {
        self.0.flush().map_err(StdoutError)
    }
}

/// A label, prompt or file name as text output shows it: control characters (newlines, the
/// ESC that starts a terminal escape sequence, C1 controls) and bidirectional overrides are
/// written as escapes (`\n`, `\r`, `\t`, `\x1b`, `\u{202e}`) so that a name can neither break a
/// line nor drive the terminal. Display writes it piece by piece: no allocation.
pub struct Escaped<'a>(pub &'a str);

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        let mut clean = 0;
        for (i, c) in s.char_indices() {
            if !needs_escape(c) {
                continue;
            }
            f.write_str(&s[clean..i])?;
            clean = i + c.len_utf8();
            match c {
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c if (c as u32) < 0x80 => write!(f, "\\x{:02x}", c as u32)?,
                c => write!(f, "\\u{{{:x}}}", c as u32)?,
            }
        }
        f.write_str(&s[clean..])
    }
}

fn write_json_str(w: &mut impl Write, s: &str) -> io::Result<()> {
    w.write_all(b"\"")?;
    for c in s.chars() {
        match c {
            '"' => w.write_all(b"\\\"")?,
            '\\' => w.write_all(b"\\\\")?,
            '\n' => w.write_all(b"\\n")?,
            '\r' => w.write_all(b"\\r")?,
            '\t' => w.write_all(b"\\t")?,
            c if (c as u32) < 0x20 => write!(w, "\\u{:04x}", c as u32)?,
            c => write!(w, "{c}")?,
        }
    }
    w.write_all(b"\"")
}

/// The `--json` line of one frame. Written field by field into the caller's buffered writer:
/// no allocation per frame.
pub fn write_json(
    w: &mut impl Write,
    r: &FrameResult<'_>,
    labels: &[String],
    uri: &str,
    latency: Option<Duration>,
) -> io::Result<()> {
    write!(w, "{{\"frame\":{},\"source\":", r.frame.seq)?;
    let source = if r.frame.source.is_empty() {
        uri
    } else {
        r.frame.source.as_str()
    };
    write_json_str(w, source)?;
    w.write_all(b",\"top\":[")?;
    for (i, (l, p)) in r.top.iter().enumerate() {
        if i > 0 {
            w.write_all(b",")?;
        }
        w.write_all(b"[")?;
        write_json_str(w, &labels[*l as usize])?;
        write!(w, ",{p:.6}]")?;
    }
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    write!(w, "],\"time_unix_ms\":{unix_ms},\"event\":")?;
    match r.events.iter().find(|e| e.kind == EventKind::Fire) {
        Some(e) => {
            w.write_all(b"{\"label\":")?;
            write_json_str(w, &labels[e.label as usize])?;
            write!(w, ",\"score\":{:.6}", e.score)?;
            if let Some(l) = latency {
                write!(
                    w,
                    ",\"trigger_to_actuator_ms\":{:.3}",
                    l.as_secs_f64() * 1000.0
                )?;
            }
            w.write_all(b"}")?;
        }
        None => w.write_all(b"null")?,
    }
    w.write_all(b",\"released\":[")?;
    for (i, e) in r
        .events
        .iter()
        .filter(|e| e.kind == EventKind::Release)
        .enumerate()
    {
        if i > 0 {
            w.write_all(b",")?;
        }
        write_json_str(w, &labels[e.label as usize])?;
    }
    w.write_all(b"],\"heads\":{\"clip\":")?;
    write_json_str(w, &labels[r.heads.clip as usize])?;
    w.write_all(b",\"qformer\":")?;
    match r.heads.qformer {
        Some(q) => write_json_str(w, &labels[q as usize])?,
        None => w.write_all(b"null")?,
    }
    w.write_all(b"},\"latency_ms\":{")?;
    for (i, name) in STAGES.iter().enumerate() {
        if i > 0 {
            w.write_all(b",")?;
        }
        write!(w, "\"{name}\":{:.3}", r.times.ms(i))?;
    }
    w.write_all(b"}}\n")
}

/// The text line of one frame.
pub fn write_text(
    w: &mut impl Write,
    r: &FrameResult<'_>,
    labels: &[String],
    latency: Option<Duration>,
) -> io::Result<()> {
    write!(
        w,
        "frame {:>6}  {}  ",
        r.frame.seq,
        Escaped(&r.frame.source)
    )?;
    for (i, (l, p)) in r.top.iter().enumerate() {
        if i > 0 {
            w.write_all(b", ")?;
        }
        write!(w, "{} {:.3}", Escaped(&labels[*l as usize]), p)?;
    }
    for e in r.events.iter() {
        let label = Escaped(&labels[e.label as usize]);
        match e.kind {
            EventKind::Fire => write!(w, "  FIRE {label} ({:.3})", e.score)?,
            EventKind::Release => write!(w, "  release {label}")?,
        }
    }
    if let Some(l) = latency {
        write!(w, "  (edge→actuator {:.1} ms)", l.as_secs_f64() * 1000.0)?;
    }
    writeln!(w, "  [{:.1} ms]", r.times.ms(STAGES.len() - 1))
}

/// The run summary (and the GPIO latency line), on stderr when stdout carries JSON (a failing
/// stderr is ignored: there is nowhere left to report it).
pub fn print_summary(
    s: &RunSummary,
    gpio: Option<&HardwareReport>,
    to_stderr: bool,
) -> Result<(), StdoutError> {
    let mut text = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(
        text,
        "summary: {} frames classified, {} not triggered, {} dropped (inference behind capture), {} broken frames, \
         {} files skipped as non-images, {} images undecodable, {} events",
        s.frames,
        s.not_triggered,
        s.dropped,
        s.broken,
        s.source.skipped_non_images,
        s.source.skipped_broken,
        s.events
    );
    if s.source.outages > 0 {
        let _ = writeln!(
            text,
            "  source outages: {} (the source failed or stalled and was reopened each time)",
            s.source.outages
        );
    }
    for (name, h) in STAGES.iter().zip(&s.stages) {
        let _ = writeln!(
            text,
            "  {name:<11} p50 {:>8.3} ms   p99 {:>8.3} ms",
            h.quantile_ms(0.5),
            h.quantile_ms(0.99)
        );
    }
    if let Some(g) = gpio {
        let _ = writeln!(
            text,
            "  trigger→actuator: {} events, p50 {:.3} ms, p99 {:.3} ms; {} pin errors",
            g.events, g.p50_ms, g.p99_ms, g.pin_errors
        );
    }
    print_report(&text, to_stderr)
}

/// Summary text where summaries go: stderr when stdout carries JSON (a failing stderr is
/// ignored: there is nowhere left to report it), else stdout.
pub fn print_report(text: &str, to_stderr: bool) -> Result<(), StdoutError> {
    if to_stderr {
        let _ = io::stderr().write_all(text.as_bytes());
        Ok(())
    } else {
        let mut out = Out::lock();
        write!(out, "{text}")?;
        out.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::Escaped;

    #[test]
    fn names_are_escaped_so_they_cannot_break_a_line_or_drive_the_terminal() {
        for (raw, shown) in [
            ("cat", "cat"),
            ("a photo\nof a cat", "a photo\\nof a cat"),
            ("\x1b[2J\x1b]0;pwned\x07x", "\\x1b[2J\\x1b]0;pwned\\x07x"),
            ("tab\there\r", "tab\\there\\r"),
            ("\u{9b}31m", "\\u{9b}31m"),
            ("abc\u{202e}gnp.exe", "abc\\u{202e}gnp.exe"),
            ("ünïcødé 猫 \\ ok", "ünïcødé 猫 \\ ok"),
            ("\x7f", "\\x7f"),
        ] {
            assert_eq!(Escaped(raw).to_string(), shown, "{raw:?}");
        }
    }
}
