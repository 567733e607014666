//! The Jetson header tables against an independent transcription of NVIDIA's Jetson.GPIO pin
//! data (tests/fixtures/jetson_pins_reference.json, generated from gpio_pin_data.py).

use edgefuse_board::jetson::Board;
use edgefuse_board::jetson_pins::Direction;

#[test]
fn tables_match_nvidia_pin_data() {
    let text = include_str!("fixtures/jetson_pins_reference.json");
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    let mut checked = 0;
    for b in Board::ALL {
        let rows = v["boards"][b.name()]
            .as_array()
            .unwrap_or_else(|| panic!("{b} missing"));
        let pins = b.pins();
        assert_eq!(pins.len(), rows.len(), "{b}: pin count");
        for (p, r) in pins.iter().zip(rows) {
            let pin = r["pin"].as_u64().unwrap() as u8;
            assert_eq!(p.board, pin, "{b}: order");
            assert_eq!(p.chip, r["chip"].as_str().unwrap(), "{b} pin {pin}: chip");
            assert_eq!(
                u64::from(p.line),
                r["line"].as_u64().unwrap(),
                "{b} pin {pin}: line"
            );
            assert_eq!(p.pwm, r["pwm"].as_bool().unwrap(), "{b} pin {pin}: pwm");
            assert_eq!(
                u64::from(p.pinmux_reg),
                r["pinmux_reg"].as_u64().unwrap(),
                "{b} pin {pin}: pinmux register"
            );
            let want = match r["direction"].as_str().unwrap() {
                "input-only" => Direction::InputOnly,
                "output-only" => Direction::OutputOnly,
                _ => Direction::Both,
            };
            assert_eq!(p.direction, want, "{b} pin {pin}: direction");
            checked += 1;
        }
        let compat: Vec<&str> = v["compatible"][b.name()]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert_eq!(b.compatible(), compat.as_slice(), "{b}: compatible");
    }
    println!(
        "jetson header tables: {checked} pins on {} boards match NVIDIA's pin data",
        Board::ALL.len()
    );
}

#[test]
fn detection_on_fixture_device_trees_of_every_board() {
    // Real-world compatible properties (most specific first, then the SoC).
    let cases: [(&[u8], Board); 6] = [
        (
            b"nvidia,p3450-0000\0nvidia,jetson-nano\0nvidia,tegra210\0",
            Board::Nano,
        ),
        (
            b"nvidia,p3509-0000+p3668-0001\0nvidia,tegra194\0",
            Board::XavierNx,
        ),
        (b"nvidia,p2972-0000\0nvidia,tegra194\0", Board::AgxXavier),
        (
            b"nvidia,p3768-0000+p3767-0005\0nvidia,p3767-0005\0nvidia,tegra234\0",
            Board::OrinNano,
        ),
        (
            b"nvidia,p3768-0000+p3767-0000\0nvidia,p3767-0000\0nvidia,tegra234\0",
            Board::OrinNx,
        ),
        (
            b"nvidia,p3737-0000+p3701-0005\0nvidia,p3701-0005\0nvidia,tegra234\0",
            Board::AgxOrin,
        ),
    ];
    for (raw, want) in cases {
        assert_eq!(
            Board::detect(raw),
            Some(want),
            "{}",
            String::from_utf8_lossy(raw)
        );
    }
}
