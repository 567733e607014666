//! Tests of `run`'s options: the config file and the command line share one grammar.

use super::*;
use edgefuse_board::jetson::Board;

fn parse(s: &str) -> Result<RunOptions, ConfigError> {
    RunOptions::parse(s, Path::new("/etc/edgefuse/edgefuse.toml"))
}

#[test]
fn every_run_option_parses() {
    let c = parse(
        r#"
model = "/usr/share/edgefuse/default"
source = "v4l2:///dev/video0?width=640&height=480"
trigger = "motion:threshold=0.1,area=0.02"
top_k = 5
threshold = 0.6
fire_wins = 2
window = 3
release = 2
cooldown_ms = 1500
frames = 100
json = true
board = "orin-nano"
status_led = "pin:12"

[label_thresholds]
"seven" = 0.9

[on]
"seven" = "pin:11,pulse=200ms"
"#,
    )
    .unwrap();
    assert_eq!(c.top_k, Some(Ranged(5)));
    assert_eq!(c.threshold, Some(Unit(0.6)));
    assert_eq!(c.window, Some(Ranged(3)));
    assert_eq!(c.cooldown_ms, Some(Ranged(1500)));
    assert_eq!(c.frames, Some(Ranged(100)));
    assert_eq!(c.json, Some(true));
    assert!(matches!(c.trigger, Some(TriggerSpec::Motion { .. })));
    assert_eq!(c.label_thresholds.len(), 1);
    assert_eq!(
        (
            c.label_thresholds[0].label.as_str(),
            c.label_thresholds[0].value
        ),
        ("seven", 0.9)
    );
    assert_eq!(
        c.on,
        vec![ActuatorSpec::parse("seven", "pin:11,pulse=200ms").unwrap()]
    );
    assert_eq!(c.board, Some(BoardName(Board::OrinNano)));
    assert_eq!(c.status_led, Some("pin:12".parse().unwrap()));
}

#[test]
fn the_file_and_the_command_line_share_one_grammar() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        o: RunOptions,
    }
    let cli = |args: &[&str]| {
        Cmd::try_parse_from(std::iter::once("run").chain(args.iter().copied())).map(|c| c.o)
    };
    // The same value through both doors gives the same option.
    let f = parse("trigger = \"interval:2s\"\ntop_k = 4\nthreshold = 0.25\ndevice = \"CPU\"\n")
        .unwrap();
    let c = cli(&[
        "--trigger",
        "interval:2s",
        "--top-k",
        "4",
        "--threshold",
        "0.25",
        "--device",
        "CPU",
    ])
    .unwrap();
    assert_eq!(f.trigger, c.trigger);
    assert_eq!(
        (f.top_k, f.threshold, f.device),
        (c.top_k, c.threshold, c.device)
    );
    // The same bad value is refused by both, with the same reason.
    let fe = parse("top_k = 17\n").unwrap_err().to_string();
    let ce = cli(&["--top-k", "17"]).err().unwrap().to_string();
    assert!(
        fe.contains("allowed 1..=16") && ce.contains("allowed 1..=16"),
        "{fe}\n{ce}"
    );
    // `frames = 0` has one meaning through both doors: refused (no run of zero frames, and
    // "no limit" is leaving the option out), the same for the CPU threads' range and engine.
    let fe = parse("frames = 0\n").unwrap_err().to_string();
    let ce = cli(&["--frames", "0"]).err().unwrap().to_string();
    assert!(
        fe.contains("allowed 1..") && ce.contains("allowed 1.."),
        "{fe}\n{ce}"
    );
    assert_eq!(
        parse("threads = 3\n").unwrap().threads,
        cli(&["--threads", "3"]).unwrap().threads
    );
    let fe = parse("cpu_engine = \"onnx\"\n").unwrap_err().to_string();
    let ce = cli(&["--cpu-engine", "onnx"]).err().unwrap().to_string();
    assert!(fe.contains("use auto, plan or tract") && ce.contains("use auto, plan or tract"));
    let fe = parse("board = \"pi\"\n").unwrap_err().to_string();
    let ce = cli(&["--board", "pi"]).err().unwrap().to_string();
    assert!(fe.contains("unknown board `pi`") && ce.contains("unknown board `pi`"));
    // The region of interest: one grammar through both doors, errors naming the value.
    assert_eq!(
        parse("roi = \"0.25,0.0,0.5,1.0\"\n").unwrap().roi,
        cli(&["--roi", "25%,0%,50%,100%"]).unwrap().roi
    );
    let fe = parse("roi = \"1,2,3\"\n").unwrap_err().to_string();
    let ce = cli(&["--roi", "1,2,3"]).err().unwrap().to_string();
    assert!(
        fe.contains("roi `1,2,3`") && ce.contains("roi `1,2,3`") && fe.contains("x,y,w,h"),
        "{fe}\n{ce}"
    );
    // The stall timeout: one duration grammar and range through both doors.
    assert_eq!(
        parse("stall_timeout = \"2s\"\n").unwrap().stall_timeout,
        cli(&["--stall-timeout", "2000ms"]).unwrap().stall_timeout
    );
    let fe = parse("stall_timeout = \"5ms\"\n").unwrap_err().to_string();
    let ce = cli(&["--stall-timeout", "5ms"]).err().unwrap().to_string();
    assert!(
        fe.contains("from 100ms to 3600s") && ce.contains("from 100ms to 3600s"),
        "{fe}\n{ce}"
    );
    assert_eq!(
        cli(&["--stall-timeout", "1s"])
            .unwrap()
            .open_options()
            .stall_timeout,
        Duration::from_secs(1)
    );
    assert_eq!(
        RunOptions::default().open_options(),
        edgefuse_runtime::capture::OpenOptions::default()
    );
    // --json alone means true; --json=false overrides a file's json = true.
    assert_eq!(cli(&["--json"]).unwrap().json, Some(true));
    let over = cli(&["--json=false"])
        .unwrap()
        .over(parse("json = true\n").unwrap());
    assert!(!over.json());
}

#[test]
fn the_command_line_wins_and_defaults_come_from_the_runtime() {
    let file = parse(
        "threshold = 0.9\nwindow = 4\n[label_thresholds]\n\"1\" = 0.3\n[on]\n\"1\" = \"pin:11\"\n\"2\" = \"pin:13\"\n",
    )
    .unwrap();
    let cli = RunOptions {
        threshold: Some(Unit(0.7)),
        on: vec![ActuatorSpec::parse("2", "pin:15,hold").unwrap()],
        label_thresholds: vec!["1=0.6".parse().unwrap()],
        ..Default::default()
    };
    let o = cli.over(file);
    let labels: Vec<String> = (0..3).map(|i| i.to_string()).collect();
    let d = o.decision(&labels).unwrap();
    let def = DecisionConfig::default();
    assert_eq!(d.threshold, 0.7);
    assert_eq!(d.window, 4);
    assert_eq!(d.fire_wins, def.fire_wins);
    assert_eq!(
        d.label_thresholds,
        vec![(1, 0.6)],
        "the later (command-line) value wins"
    );
    assert_eq!(o.on.len(), 2);
    assert_eq!(o.on[1].mode, edgefuse_board::ActuatorMode::Hold);
    let p = RunOptions::default().pipeline(&labels).unwrap();
    assert_eq!(p.top_k, PipelineConfig::default().top_k);
    assert_eq!(p.device, DeviceChoice::default());
}

#[test]
fn empty_file_sets_nothing() {
    let c = parse("# nothing\n").unwrap();
    assert!(c.model.is_none() && c.top_k.is_none() && c.on.is_empty());
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let e = parse("top_k = 3\n\nthreshhold = 0.4\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(
            "/etc/edgefuse/edgefuse.toml:3:1: key `threshhold`: unknown field `threshhold`"
        ),
        "{e}"
    );
    assert!(e.contains("threshold"), "lists the valid keys: {e}");
}

#[test]
fn bad_values_name_line_and_key() {
    let e = parse("json = false\ntop_k = 99\n").unwrap_err().to_string();
    assert!(e.contains(":2:") && e.contains("key `top_k`"), "{e}");
    assert!(e.contains("allowed 1..=16"), "{e}");

    let e = parse("threshold = 1.5\n").unwrap_err().to_string();
    assert!(e.contains(":1:") && e.contains("between 0 and 1"), "{e}");

    let e = parse("trigger = \"sometimes\"\n").unwrap_err().to_string();
    assert!(
        e.contains("key `trigger`") && e.contains("sometimes"),
        "{e}"
    );

    let e = parse("window = \"three\"\n").unwrap_err().to_string();
    assert!(
        e.contains("key `window`") && e.contains("an integer in 1..=32"),
        "{e}"
    );

    let e = parse("[label_thresholds]\nseven = 2\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains(":2:") && e.contains("key `seven`"), "{e}");
}

#[test]
fn broken_toml_names_the_line() {
    let e = parse("top_k = 3\nsource = \"v4l2://\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains(":2:"), "{e}");
}

#[test]
fn missing_file_names_the_path() {
    let e = RunOptions::load(Path::new("/nonexistent/edgefuse.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/edgefuse.toml"), "{e}");
}

/// The config file under the fuzzer (`edgefuse_tests::fuzz`, corpus
/// `tests/fuzz/corpus/config/`): parsing, then everything `run` derives from the options.
#[test]
fn fuzz_config() {
    fn target(data: &[u8]) {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let Ok(o) = RunOptions::parse(text, Path::new("fuzz.toml")) else {
            return;
        };
        let o = RunOptions::default().over(o);
        let labels: Vec<String> = (0..10).map(|i| i.to_string()).collect();
        let _ = o.pipeline(&labels);
        let _ = o.trigger();
        let wiring = o.wiring();
        let _ = wiring.resolve(Some(edgefuse_board::jetson::Board::OrinNano), &labels);
        let _ = wiring.resolve(None, &labels);
        let _ = o.json();
    }
    let dict: &[&[u8]] = &[
        b"source = \"",
        b"trigger = \"",
        b"top_k = ",
        b"threshold = ",
        b"fire_wins = ",
        b"window = ",
        b"release = ",
        b"cooldown_ms = ",
        b"frames = ",
        b"threads = ",
        b"[label_thresholds]\n",
        b"[on]\n",
        b"status_led = \"pin:",
        b"stall_timeout = \"",
    ];
    let r = edgefuse_tests::fuzz::run("config", dict, 1 << 16, target);
    assert!(r.crashes.is_empty(), "{:?}", r.crashes);
}

#[test]
fn help_shows_the_runtime_defaults() {
    use clap::CommandFactory;
    let mut cmd = help_with_defaults(crate::Cli::command());
    let run = cmd.find_subcommand_mut("run").expect("run");
    let help = run.render_help().to_string();
    let d = DecisionConfig::default();
    for want in [
        format!(
            "Minimum probability for a label to win a frame [default: {}]",
            d.threshold
        ),
        format!("[default: {}]", PipelineConfig::default().top_k),
        format!("[default: {}]", DeviceChoice::default()),
        "cuda:tract".to_string(),
    ] {
        assert!(help.contains(&want), "{want:?} not in\n{help}");
    }
}
