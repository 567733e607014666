//! `edgefuse models`: install, list, activate and roll back model bundles in the models folder
//! (`--models-dir`, default `$EDGEFUSE_MODELS_DIR` or `/var/lib/edgefuse/models`), whose `active`
//! bundle is the default model of `edgefuse run` and the services. The store itself, with its
//! atomic switch, is `edgefuse_models::store`; this file adds the test inference (the bundle's own
//! sample frames through the runtime pipeline) and the keys.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use edgefuse_models::store::{self, Store};
use edgefuse_models::Bundle;
use edgefuse_runtime::capture;
use edgefuse_runtime::frame::Frame;
use edgefuse_runtime::pipeline::{Pipeline, PipelineConfig};

use crate::output::{Escaped, Out};
use crate::paths::models_dir;
use crate::UsageError;

/// The public key used when `--public-key` is not given and this file exists: with it, every
/// bundle must be signed by the matching secret key.
pub const DEFAULT_PUBLIC_KEY: &str = "/etc/edgefuse/models.pub";
/// Fraction of a bundle's labelled sample frames its test inference must classify as labelled.
const MIN_SAMPLE_ACCURACY: f64 = 0.8;
/// Most sample frames a test inference runs.
const MAX_SAMPLES: usize = 64;

#[derive(Args, Debug)]
pub struct ModelsArgs {
    /// The models folder [default: $EDGEFUSE_MODELS_DIR, else /var/lib/edgefuse/models].
    #[arg(long, value_name = "DIR", global = true)]
    models_dir: Option<PathBuf>,
    #[command(subcommand)]
    action: ModelsAction,
}

#[derive(Args, Debug, Clone, Default)]
struct KeyArg {
    /// Public key (hex, from `edgefuse models keygen`) that bundles must be signed with
    /// [default: /etc/edgefuse/models.pub when it exists; else signatures are not required].
    #[arg(long, value_name = "FILE")]
    public_key: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum ModelsAction {
    /// Unpack a bundle (folder, .tar or .tar.zst) into a new version, validate it completely
    /// (signature, manifest, checksums, a test inference on its sample frames) and make it active.
    Install {
        /// The bundle folder or archive.
        bundle: PathBuf,
        /// Version name [default: the manifest's name-version].
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        key: KeyArg,
    },
    /// List the installed versions (active and previous marked).
    List,
    /// Validate the installed version NAME again and make it active.
    Activate {
        /// The version's name (see `list`).
        name: String,
        #[command(flatten)]
        key: KeyArg,
    },
    /// Make the previously active version active again.
    Rollback {
        #[command(flatten)]
        key: KeyArg,
    },
    /// Sign a bundle folder's manifest (writes bundle.sig into it).
    Sign {
        /// The bundle folder.
        bundle: PathBuf,
        /// The secret key file (hex, from `keygen`).
        #[arg(long, value_name = "FILE")]
        secret_key: PathBuf,
    },
    /// Make a key pair: PREFIX.key (secret, mode 0600) and PREFIX.pub.
    Keygen {
        /// Path prefix of the two files.
        prefix: PathBuf,
    },
}

pub fn models(a: ModelsArgs) -> Result<()> {
    let store = Store::new(a.models_dir.unwrap_or_else(models_dir));
    match a.action {
        ModelsAction::Install { bundle, name, key } => {
            let key = public_key(&key)?;
            let r = store
                .install(&bundle, name.as_deref(), key.as_ref(), &mut test_inference)
                .map_err(classify)?;
            let mut out = Out::lock();
            writeln!(
                out,
                "installed {} ({} files, {} bytes{}) in {}",
                r.name,
                r.files,
                r.bytes,
                if r.signed { ", signature checked" } else { "" },
                r.dir.display()
            )?;
            writeln!(out, "test inference: {}", r.test)?;
            match r.replaced {
                Some(p) => writeln!(
                    out,
                    "active: {} (previous: {p}; `edgefuse models rollback` returns to it)",
                    r.name
                )?,
                None => writeln!(out, "active: {}", r.name)?,
            }
            writeln!(out, "{}", RESTART_NOTE)?;
        }
        ModelsAction::List => {
            let list = store.list().map_err(classify)?;
            let mut out = Out::lock();
            if list.is_empty() {
                writeln!(out, "no models installed in {}", store.dir().display())?;
            }
            for i in list {
                let mark = match (i.active, i.previous) {
                    (true, _) => "active",
                    (_, true) => "previous",
                    _ => "-",
                };
                writeln!(
                    out,
                    "{}\t{mark}\t{}",
                    Escaped(&i.name),
                    Escaped(&i.describe)
                )?;
            }
        }
        ModelsAction::Activate { name, key } => {
            let key = public_key(&key)?;
            let test = store
                .activate(&name, key.as_ref(), &mut test_inference)
                .map_err(classify)?;
            let mut out = Out::lock();
            writeln!(out, "test inference: {test}")?;
            writeln!(out, "active: {name}")?;
            writeln!(out, "{}", RESTART_NOTE)?;
        }
        ModelsAction::Rollback { key } => {
            let key = public_key(&key)?;
            let (name, test) = store
                .rollback(key.as_ref(), &mut test_inference)
                .map_err(classify)?;
            let mut out = Out::lock();
            writeln!(out, "test inference: {test}")?;
            writeln!(out, "active: {name} (rolled back)")?;
            writeln!(out, "{}", RESTART_NOTE)?;
        }
        ModelsAction::Sign { bundle, secret_key } => {
            let key = store::read_secret_key(&secret_key)?;
            // Sign only what validates: a signature vouches for a working bundle.
            Bundle::open(&bundle).with_context(|| format!("not signing {}", bundle.display()))?;
            let sig = store::sign_bundle(&bundle, &key)?;
            writeln!(Out::lock(), "wrote {}", sig.display())?;
        }
        ModelsAction::Keygen { prefix } => keygen(&prefix)?,
    }
    Ok(())
}

/// Asking for something that cannot be (a name that is not installed, nothing to roll back to, a
/// taken or unusable name, a bad key file) is a usage error (exit 2); the rest exit 1.
fn classify(e: store::StoreError) -> anyhow::Error {
    use store::StoreError as E;
    match e {
        E::NoSuchModel { .. }
        | E::NoPrevious { .. }
        | E::Exists { .. }
        | E::BadName { .. }
        | E::Key { .. } => UsageError(e.to_string()).into(),
        other => other.into(),
    }
}

const RESTART_NOTE: &str = "running services use it from their next start: sudo systemctl restart edgefuse (or edgefuse@NAME)";

fn public_key(k: &KeyArg) -> Result<Option<store::PublicKey>> {
    let path = match &k.public_key {
        Some(p) => p.clone(),
        None if Path::new(DEFAULT_PUBLIC_KEY).exists() => PathBuf::from(DEFAULT_PUBLIC_KEY),
        None => return Ok(None),
    };
    Ok(Some(
        store::read_public_key(&path).map_err(|e| UsageError(e.to_string()))?,
    ))
}

fn keygen(prefix: &Path) -> Result<()> {
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .context("cannot read /dev/urandom for the key")?;
    let (secret, public) = store::keypair_hex(&seed);
    let key = prefix.with_extension("key");
    let pubf = prefix.with_extension("pub");
    for p in [&key, &pubf] {
        if p.exists() {
            return Err(
                UsageError(format!("{} exists; not overwriting a key", p.display())).into(),
            );
        }
    }
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key)
            .with_context(|| format!("cannot create {}", key.display()))?;
        writeln!(f, "{secret}").with_context(|| format!("cannot write {}", key.display()))?;
    }
    std::fs::write(&pubf, format!("{public}\n"))
        .with_context(|| format!("cannot write {}", pubf.display()))?;
    writeln!(
        Out::lock(),
        "wrote {} (secret: keep it off the devices) and {} (copy to /etc/edgefuse/models.pub on each device)",
        key.display(),
        pubf.display()
    )?;
    Ok(())
}

/// The test inference an install or activation must pass: the bundle's sample frames
/// (`samples/` in the bundle, with an optional `samples/labels.csv` of `file,label`) through the
/// runtime pipeline on the CPU. Every frame must give finite probabilities summing to 1, and at
/// least 80% of the labelled ones the labelled top-1. A bundle without samples gets one
/// synthetic frame (it must load and give finite probabilities; a warning says the labels were
/// not checked).
fn test_inference(bundle: &Bundle) -> Result<String, String> {
    let mut pipeline = Pipeline::new(bundle, PipelineConfig::default())
        .map_err(|e| format!("the pipeline cannot be built: {e}"))?;
    let samples = bundle.dir().join("samples");
    let (uri, truth) = if samples.is_dir() {
        (
            format!("file://{}", samples.display()),
            read_truth(&samples)?,
        )
    } else {
        log::warn!(
            "{}: no samples/ folder: test inference on one synthetic frame (the labels are not checked)",
            bundle.dir().display()
        );
        (
            "synthetic://?width=64&height=64&frames=1".to_string(),
            BTreeMap::new(),
        )
    };
    let mut source = capture::open(&uri).map_err(|e| format!("{uri}: {e}"))?;
    let mut frame = Frame::with_capacity(0);
    let (mut frames, mut labelled, mut right) = (0usize, 0usize, 0usize);
    let mut wrong = Vec::new();
    while frames < MAX_SAMPLES
        && source
            .next_frame(&mut frame)
            .map_err(|e| format!("{uri}: {e}"))?
    {
        let used = pipeline
            .process(&frame)
            .map_err(|e| format!("{}: {e}", frame.source))?
            .is_some();
        if !used {
            return Err(format!(
                "{}: the pipeline could not use the frame",
                frame.source
            ));
        }
        frames += 1;
        let probs = pipeline.probabilities();
        let sum: f32 = probs.iter().sum();
        if probs.iter().any(|p| !p.is_finite()) || (sum - 1.0).abs() > 1e-3 {
            return Err(format!(
                "{}: the probabilities are not a distribution (sum {sum})",
                frame.source
            ));
        }
        let file = Path::new(&frame.source)
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(want) = truth.get(&file) {
            labelled += 1;
            let best = probs
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| pipeline.labels()[i].as_str())
                .unwrap_or("");
            if best == want {
                right += 1;
            } else if wrong.len() < 3 {
                wrong.push(format!("{file}: {best} instead of {want}"));
            }
        }
    }
    if frames == 0 {
        return Err(format!("{uri} gave no frames"));
    }
    if labelled > 0 && (right as f64) < MIN_SAMPLE_ACCURACY * labelled as f64 {
        return Err(format!(
            "{right} of {labelled} sample frames classified as labelled (at least {:.0}% needed; {})",
            MIN_SAMPLE_ACCURACY * 100.0,
            wrong.join(", ")
        ));
    }
    Ok(if labelled > 0 {
        format!(
            "{right}/{labelled} sample frames classified as labelled, on {}",
            pipeline.device()
        )
    } else {
        format!(
            "{frames} frame(s) ran, labels not checked, on {}",
            pipeline.device()
        )
    })
}

/// `samples/labels.csv` (`file,label` lines; a header line is skipped) as file → label; empty
/// when there is none.
fn read_truth(samples: &Path) -> Result<BTreeMap<String, String>, String> {
    let path = samples.join("labels.csv");
    if !path.exists() {
        return Ok(BTreeMap::new());
    }
    let text = edgefuse_models::files::read_text_limited(&path, 1 << 20)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || (i == 0 && line == "file,label") {
            continue;
        }
        let (file, label) = line
            .split_once(',')
            .ok_or_else(|| format!("{}:{}: expected `file,label`", path.display(), i + 1))?;
        out.insert(file.trim().to_string(), label.trim().to_string());
    }
    Ok(out)
}
