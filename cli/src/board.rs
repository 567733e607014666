//! `edgefuse board`: the Jetson 40-pin header maps and board detection.

use std::path::Path;

use anyhow::Result;
use clap::{Args, Subcommand};
use serde::Serialize;

use edgefuse_board::jetson::Board;
use edgefuse_board::jetson_numbering::Numbering;
use edgefuse_board::jetson_pins::Direction;
use edgefuse_board::linux::{chips, non_gpio_pins, numbering_of, read_board};

use crate::options::BoardName;
use crate::output::Out;
use crate::UsageError;

#[derive(Args, Debug)]
pub struct BoardArgs {
    #[command(subcommand)]
    action: BoardAction,
}

#[derive(Subcommand, Debug)]
enum BoardAction {
    /// Print the header's GPIO pins: BOARD number, chip label, line offset, SoC name.
    Pins {
        /// nano, xavier-nx, agx-xavier, orin-nano, orin-nx or agx-orin [default: detected].
        #[arg(long, value_name = "NAME")]
        board: Option<BoardName>,
        /// A JSON array of {pin, chip, line, soc_name, pwm, direction, numbering} objects.
        #[arg(long)]
        json: bool,
        /// Line numbering: r35 (JetPack 5+) or r32 (JetPack 4.6; differs on Xavier)
        /// [default: read from this machine's GPIO chips, else r35].
        #[arg(long, value_name = "r32|r35")]
        numbering: Option<String>,
    },
    /// Print the board this machine is, from the device tree.
    Detect,
}

/// One header pin in `board pins --json`.
#[derive(Debug, Serialize)]
struct PinRow<'a> {
    pin: u8,
    chip: &'a str,
    line: u32,
    soc_name: &'a str,
    pwm: bool,
    direction: &'static str,
    numbering: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pinmux: Option<&'a str>,
}

/// The numbering `board pins` shows: `--numbering`, else this machine's (Tegra194 boards), else
/// the current one; with a note on where it came from.
fn numbering_for(b: Board, asked: Option<&str>) -> Result<(Numbering, String)> {
    match asked {
        Some("r32") => return Ok((Numbering::L4tR32, "as asked".into())),
        Some("r35") => return Ok((Numbering::Current, "as asked".into())),
        Some(other) => {
            return Err(UsageError(format!(
                "--numbering {other:?}: use r32 (JetPack 4.6) or r35 (JetPack 5+)"
            ))
            .into())
        }
        None => {}
    }
    if !b.is_tegra194() {
        return Ok((Numbering::Current, "the only one for this board".into()));
    }
    Ok(match numbering_of(b, &chips()) {
        Ok(n) => (n, "read from this machine's GPIO chips".into()),
        Err(e) => (
            Numbering::Current,
            format!("not read from this machine ({e}); --numbering r32 shows JetPack 4.6's"),
        ),
    })
}

fn direction(d: Direction) -> &'static str {
    match d {
        Direction::Both => "both",
        Direction::InputOnly => "input-only",
        Direction::OutputOnly => "output-only",
    }
}

fn detect(root: &Path) -> Result<(Board, String)> {
    read_board(root).map_err(|e| UsageError(e.to_string()).into())
}

pub fn board(a: BoardArgs) -> Result<()> {
    let root = Path::new("/");
    let mut out = Out::lock();
    match a.action {
        BoardAction::Detect => {
            let (b, model) = detect(root)?;
            writeln!(out, "{}\t{}\t{model}", b.name(), b.title())?;
            let (n, how) = numbering_for(b, None)?;
            writeln!(out, "lines\t{}\t{how}", n.describe())?;
            Ok(out.finish()?)
        }
        BoardAction::Pins {
            board,
            json,
            numbering,
        } => {
            let b = match board {
                Some(n) => n.0,
                None => detect(root)?.0,
            };
            let (n, how) = numbering_for(b, numbering.as_deref())?;
            let table = b.pins_for(n).map_err(|e| UsageError(e.to_string()))?;
            // Pinmux state is only readable by root with debugfs; report it when it is.
            let muxed = non_gpio_pins(root, b);
            let mux_of = |pin: u8| -> Option<&str> {
                muxed
                    .as_ref()
                    .and_then(|m| m.iter().find(|(p, _)| *p == pin).map(|(_, f)| f.as_str()))
            };
            if json {
                let rows: Vec<PinRow<'_>> = table
                    .iter()
                    .map(|p| PinRow {
                        pin: p.board,
                        chip: p.chip,
                        line: p.line,
                        soc_name: p.soc_name,
                        pwm: p.pwm,
                        direction: direction(p.direction),
                        numbering: n.name(),
                        pinmux: mux_of(p.board),
                    })
                    .collect();
                writeln!(out, "{}", serde_json::to_string(&rows)?)?;
                return Ok(out.finish()?);
            }
            writeln!(
                out,
                "{} ({}), 40-pin header, BOARD numbering; lines: {} ({how})",
                b.title(),
                b.name(),
                n.describe()
            )?;
            writeln!(
                out,
                "{:>4}  {:<18} {:>5}  {:<10} {:<4} direction",
                "pin", "chip", "line", "soc", "pwm"
            )?;
            for p in table {
                let note = match mux_of(p.board) {
                    Some(f) => format!("  pinmux: {f} (not GPIO; set the pinmux with jetson-io)"),
                    None => String::new(),
                };
                writeln!(
                    out,
                    "{:>4}  {:<18} {:>5}  {:<10} {:<4} {}{note}",
                    p.board,
                    p.chip,
                    p.line,
                    p.soc_name,
                    if p.pwm { "yes" } else { "" },
                    direction(p.direction)
                )?;
            }
            if muxed.is_none() && b.is_orin() {
                writeln!(out, "(pinmux state not readable: run as root with debugfs mounted to see pins muxed away from GPIO)")?;
            }
            Ok(out.finish()?)
        }
    }
}
