//! CPU features the binary was compiled for versus those the running CPU has.
//!
//! A Jetson build tuned for Orin (`-C target-cpu=cortex-a78ae`) uses instructions (LSE atomics,
//! dot product, fp16 arithmetic) that a Nano's Cortex-A57 lacks; run there, it would die with
//! SIGILL somewhere inside the first allocation. The binary checks at start, before `main`, and
//! says which build to install instead.

/// The target features this binary was compiled with, each with whether the CPU has it.
/// Only features that the compiler may use implicitly (via `target-cpu` or `target-feature`)
/// are listed; on other architectures the list is empty.
pub fn compiled_features() -> heapless::Vec<(&'static str, bool), 32> {
    #[allow(unused_mut)]
    let mut v = heapless::Vec::new();
    // `$detect` is the standard library's run-time detection macro for this architecture.
    #[allow(unused_macros)]
    macro_rules! check {
        ($detect:ident: $($f:tt),*) => {$(
            if cfg!(target_feature = $f) {
                let _ = v.push(($f, std::arch::$detect!($f)));
            }
        )*};
    }
    #[cfg(target_arch = "aarch64")]
    check!(is_aarch64_feature_detected:
        "lse", "rdm", "dotprod", "fp16", "fhm", "rcpc", "rcpc2", "crc", "aes", "sha2", "sha3",
        "sm4", "sve", "sve2", "i8mm", "bf16", "jsconv", "fcma", "dpb", "dpb2", "flagm",
        "frintts", "ssbs", "sb", "dit", "paca", "pacg", "lse2"
    );
    #[cfg(target_arch = "x86_64")]
    check!(is_x86_feature_detected:
        "sse3", "ssse3", "sse4.1", "sse4.2", "popcnt", "avx", "avx2", "fma", "bmi1", "bmi2",
        "f16c", "lzcnt", "movbe", "avx512f", "avx512bw", "avx512vl", "avx512vnni"
    );
    v
}

/// Write the explanation when `features` (compiled-for, present) has missing entries; returns
/// whether anything was missing. Does not allocate: it runs before `main`, where a tuned
/// binary's allocator may already use instructions this CPU lacks.
pub fn write_mismatch(
    features: &[(&'static str, bool)],
    w: &mut impl std::io::Write,
) -> std::io::Result<bool> {
    let mut missing = features.iter().filter(|(_, has)| !has).map(|(f, _)| *f);
    let Some(first) = missing.next() else {
        return Ok(false);
    };
    write!(
        w,
        "edgefuse: this binary was built for a newer CPU: it uses {first}"
    )?;
    for f in missing {
        write!(w, ", {f}")?;
    }
    writeln!(
        w,
        " which this CPU lacks. Install the generic package (edgefuse_<version>_arm64.deb, not a \
         build tuned for another board) or rebuild with `scripts/package-deb --cpu generic` or the \
         --cpu of this board (nano, xavier, orin); see docs/DEPLOY.md."
    )?;
    Ok(true)
}

/// [`write_mismatch`] into a string; `None` when nothing is missing.
pub fn mismatch_message(features: &[(&'static str, bool)]) -> Option<String> {
    let mut buf = Vec::new();
    match write_mismatch(features, &mut buf) {
        Ok(true) => Some(String::from_utf8_lossy(&buf).into_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_cpu_has_what_this_test_binary_was_built_for() {
        // If it did not, this process would not have got this far; the check must agree.
        assert_eq!(mismatch_message(&compiled_features()), None);
    }

    #[test]
    fn missing_features_are_named() {
        let m = mismatch_message(&[("lse", true), ("dotprod", false), ("fp16", false)]).unwrap();
        assert!(m.contains("dotprod, fp16"), "{m}");
        assert!(!m.contains("lse,"), "{m}");
        assert!(m.contains("--cpu generic"), "{m}");
        assert_eq!(mismatch_message(&[("lse", true)]), None);
        assert_eq!(mismatch_message(&[]), None);
    }
}
