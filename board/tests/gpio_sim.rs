//! The Linux GPIO layer against the kernel's GPIO simulator (gpio-sim, configured through
//! configfs): output levels reach the line, kernel edge events reach the watcher, a busy line is
//! reported with its holder. Needs root, configfs and the gpio-sim module; skips with the reason
//! otherwise (CI containers have none of them).
#![cfg(feature = "linux")]

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use edgefuse_board::jetson::Board;
use edgefuse_board::jetson_numbering::Numbering;
use edgefuse_board::linux::{
    check_line_name, chips, find_chip, numbering_of, EdgeWatcher, GpioError, LineOutput,
};
use edgefuse_board::Edge;
use embedded_hal::digital::OutputPin;

const CONFIGFS: &str = "/sys/kernel/config/gpio-sim";

/// A simulated chip; removed on drop.
struct SimChip {
    dir: PathBuf,
    sysfs: PathBuf,
}

impl SimChip {
    fn create(label: &str, lines: u32) -> Result<Self, String> {
        Self::create_named(label, lines, &[])
    }

    /// A chip with `names` given to some of its lines (`(offset, name)`).
    fn create_named(label: &str, lines: u32, names: &[(u32, &str)]) -> Result<Self, String> {
        let dir = Path::new(CONFIGFS).join(format!("edgefuse-test-{}-{label}", std::process::id()));
        let w = |p: PathBuf, v: &str| {
            std::fs::write(&p, v).map_err(|e| format!("{}: {e}", p.display()))
        };
        std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        // Created first so that a failure below removes what was made.
        let mut chip = SimChip {
            dir: dir.clone(),
            sysfs: PathBuf::new(),
        };
        std::fs::create_dir(dir.join("bank0")).map_err(|e| e.to_string())?;
        w(dir.join("bank0/num_lines"), &lines.to_string())?;
        w(dir.join("bank0/label"), label)?;
        for (line, name) in names {
            let l = dir.join(format!("bank0/line{line}"));
            std::fs::create_dir(&l).map_err(|e| format!("{}: {e}", l.display()))?;
            w(l.join("name"), name)?;
        }
        w(dir.join("live"), "1")?;
        let dev = std::fs::read_to_string(dir.join("dev_name")).map_err(|e| e.to_string())?;
        let name =
            std::fs::read_to_string(dir.join("bank0/chip_name")).map_err(|e| e.to_string())?;
        chip.sysfs = Path::new("/sys/devices/platform")
            .join(dev.trim())
            .join(name.trim());
        Ok(chip)
    }

    fn value(&self, line: u32) -> String {
        std::fs::read_to_string(self.sysfs.join(format!("sim_gpio{line}/value")))
            .unwrap()
            .trim()
            .to_string()
    }

    fn pull(&self, line: u32, pull: &str) {
        std::fs::write(self.sysfs.join(format!("sim_gpio{line}/pull")), pull).unwrap();
    }
}

impl Drop for SimChip {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("live"), "0");
        if let Ok(rd) = std::fs::read_dir(self.dir.join("bank0")) {
            for e in rd.flatten().filter(|e| e.path().is_dir()) {
                let _ = std::fs::remove_dir(e.path());
            }
        }
        let _ = std::fs::remove_dir(self.dir.join("bank0"));
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[test]
fn outputs_edges_and_busy_lines_on_gpio_sim() {
    if !Path::new(CONFIGFS).is_dir() {
        println!(
            "SKIP gpio-sim test: {CONFIGFS} does not exist (needs configfs mounted and `modprobe gpio-sim`, as root)"
        );
        return;
    }
    let label = format!("edgefuse-sim-{}", std::process::id());
    let sim = match SimChip::create(&label, 4) {
        Ok(s) => s,
        Err(e) => {
            println!("SKIP gpio-sim test: cannot create a simulated chip ({e}); run as root");
            return;
        }
    };
    let path = find_chip(&label).expect("the simulated chip is found by its label");

    // Output: the level we drive is the line's value.
    let mut out = LineOutput::request(&path, 0, "edgefuse-test", false).unwrap();
    assert_eq!(sim.value(0), "0");
    out.set_high().unwrap();
    assert_eq!(sim.value(0), "1");
    out.set_low().unwrap();
    assert_eq!(sim.value(0), "0");

    // A second request of the same line is busy, naming the holder.
    match LineOutput::request(&path, 0, "edgefuse-other", false) {
        Err(GpioError::Busy { consumer, .. }) => assert_eq!(consumer, "edgefuse-test"),
        other => panic!("expected Busy, got {other:?}"),
    }

    // Edges: pulling line 1 up is a rising edge the watcher reports; pulling it down is not.
    sim.pull(1, "pull-down");
    let (tx, rx) = mpsc::channel();
    let watcher = EdgeWatcher::start(
        &path,
        1,
        Edge::Rising,
        Duration::from_millis(5),
        "edgefuse-test",
        move |t| {
            let _ = tx.send(t);
        },
    )
    .unwrap();
    sim.pull(1, "pull-up");
    rx.recv_timeout(Duration::from_secs(2))
        .expect("a rising edge event");
    sim.pull(1, "pull-down");
    assert!(
        rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "falling edge must not trigger"
    );
    drop(watcher);
    println!(
        "gpio-sim: output levels, busy detection and edge events verified on {}",
        path.display()
    );
}

/// Simulated Tegra194 main chips of both sizes: 224 lines picks the L4T r32 numbering, 169 the
/// current one; on the 169-line chip the line named `PQ.06` passes the pad check for AGX Xavier
/// pin 7 (line 106) and a line named otherwise is refused.
#[test]
fn numbering_and_line_names_on_simulated_tegra194_chips() {
    if !Path::new(CONFIGFS).is_dir() {
        println!(
            "SKIP gpio-sim numbering test: {CONFIGFS} does not exist (needs configfs mounted and `modprobe gpio-sim`, as root); \
             the same selection is tested on fixture chip lists in the crate's unit tests"
        );
        return;
    }
    let board = Board::AgxXavier;
    for (lines, want) in [(224, Numbering::L4tR32), (169, Numbering::Current)] {
        let sim = match SimChip::create_named(
            "tegra194-gpio",
            lines,
            &[(106, "PQ.06"), (105, "PQ.05")],
        ) {
            Ok(s) => s,
            Err(e) => {
                println!("SKIP gpio-sim numbering test: cannot create a simulated chip ({e}); run as root");
                return;
            }
        };
        assert_eq!(
            numbering_of(board, &chips()).unwrap(),
            want,
            "{lines} lines"
        );
        let path = find_chip("tegra194-gpio").unwrap();
        check_line_name(&path, 106, "PQ.06").unwrap();
        let e = check_line_name(&path, 105, "PQ.06").unwrap_err();
        assert!(matches!(e, GpioError::WrongLine { .. }), "{e}");
        drop(sim);
    }
    println!(
        "gpio-sim: 224-line chip -> r32 numbering, 169-line chip -> current; line names checked"
    );
}
