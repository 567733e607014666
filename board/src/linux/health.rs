//! Board health readable without root: thermal zones with their throttling trip points, and
//! the nvpmodel power mode.

use std::path::{Path, PathBuf};

/// One thermal zone.
#[derive(Debug, Clone, PartialEq)]
pub struct Zone {
    /// The zone's type, e.g. `cpu-thermal`.
    pub name: String,
    /// Temperature in °C.
    pub celsius: f32,
    /// The lowest passive or hot trip point (where the kernel starts throttling), in °C.
    pub throttle_at: Option<f32>,
}

/// Board health as readable without root.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Health {
    /// Thermal zones with a valid temperature.
    pub zones: Vec<Zone>,
    /// The nvpmodel power mode (`id NAME`) when readable.
    pub power_mode: Option<String>,
}

impl Health {
    /// Read from `root` (`/` on the device).
    pub fn read(root: &Path) -> Self {
        let mut zones = Vec::new();
        if let Ok(dir) = std::fs::read_dir(root.join("sys/class/thermal")) {
            let mut entries: Vec<PathBuf> = dir
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("thermal_zone"))
                })
                .collect();
            entries.sort();
            for z in entries {
                let read = |f: &str| std::fs::read_to_string(z.join(f)).ok();
                let Some(milli) = read("temp").and_then(|t| t.trim().parse::<i64>().ok()) else {
                    continue;
                };
                // Some zones report a sentinel (-40 °C or less, or > 200 °C) when offline.
                if !(-40_000..=200_000).contains(&milli) || milli == -40_000 {
                    continue;
                }
                let mut throttle_at: Option<f32> = None;
                for i in 0..16 {
                    let (Some(kind), Some(t)) = (
                        read(&format!("trip_point_{i}_type")),
                        read(&format!("trip_point_{i}_temp")),
                    ) else {
                        continue;
                    };
                    let kind = kind.trim();
                    if kind == "passive" || kind == "hot" {
                        if let Ok(t) = t.trim().parse::<i64>() {
                            let c = t as f32 / 1000.0;
                            throttle_at = Some(throttle_at.map_or(c, |x: f32| x.min(c)));
                        }
                    }
                }
                zones.push(Zone {
                    name: read("type")
                        .map(|s| s.trim().to_string())
                        .unwrap_or_default(),
                    celsius: milli as f32 / 1000.0,
                    throttle_at,
                });
            }
        }
        Health {
            zones,
            power_mode: power_mode(root),
        }
    }

    /// Zones at or above their throttling trip point.
    pub fn throttling(&self) -> impl Iterator<Item = &Zone> {
        self.zones
            .iter()
            .filter(|z| z.throttle_at.is_some_and(|t| z.celsius >= t))
    }
}

/// `id NAME` of the active nvpmodel mode: `/var/lib/nvpmodel/status` holds `pmode:0002 …`,
/// `/etc/nvpmodel.conf` names the modes (`< POWER_MODEL ID=2 NAME=15W >`).
fn power_mode(root: &Path) -> Option<String> {
    let status = std::fs::read_to_string(root.join("var/lib/nvpmodel/status")).ok()?;
    let id: u32 = status
        .split_whitespace()
        .find_map(|w| w.strip_prefix("pmode:"))?
        .parse()
        .ok()?;
    let name = std::fs::read_to_string(root.join("etc/nvpmodel.conf"))
        .ok()
        .and_then(|conf| {
            conf.lines().find_map(|l| {
                let l = l.trim();
                if !l.starts_with("< POWER_MODEL") {
                    return None;
                }
                let field = |k: &str| {
                    l.split_whitespace()
                        .find_map(|w| w.strip_prefix(k))
                        .map(str::to_string)
                };
                (field("ID=")?.parse::<u32>().ok()? == id)
                    .then(|| field("NAME="))
                    .flatten()
            })
        });
    Some(match name {
        Some(n) => format!("{id} {n}"),
        None => id.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linux::tests::write;

    #[test]
    fn health_reads_zones_trip_points_and_power_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        write(r, "sys/class/thermal/thermal_zone0/type", b"cpu-thermal\n");
        write(r, "sys/class/thermal/thermal_zone0/temp", b"97500\n");
        write(
            r,
            "sys/class/thermal/thermal_zone0/trip_point_0_type",
            b"passive\n",
        );
        write(
            r,
            "sys/class/thermal/thermal_zone0/trip_point_0_temp",
            b"99000\n",
        );
        write(
            r,
            "sys/class/thermal/thermal_zone0/trip_point_1_type",
            b"hot\n",
        );
        write(
            r,
            "sys/class/thermal/thermal_zone0/trip_point_1_temp",
            b"95000\n",
        );
        write(r, "sys/class/thermal/thermal_zone1/type", b"gpu-thermal\n");
        write(r, "sys/class/thermal/thermal_zone1/temp", b"41000\n");
        write(r, "sys/class/thermal/thermal_zone2/type", b"offline\n");
        write(r, "sys/class/thermal/thermal_zone2/temp", b"-40000\n");
        write(r, "var/lib/nvpmodel/status", b"pmode:0001 fmode:quiet\n");
        write(
            r,
            "etc/nvpmodel.conf",
            b"< POWER_MODEL ID=0 NAME=MAXN >\nCPU_ONLINE CORE_0 1\n< POWER_MODEL ID=1 NAME=10W >\n",
        );
        let h = Health::read(r);
        assert_eq!(h.zones.len(), 2, "{h:?}");
        assert_eq!(h.zones[0].name, "cpu-thermal");
        assert_eq!(h.zones[0].celsius, 97.5);
        assert_eq!(h.zones[0].throttle_at, Some(95.0));
        assert_eq!(h.zones[1].throttle_at, None);
        let hot: Vec<_> = h.throttling().map(|z| z.name.as_str()).collect();
        assert_eq!(hot, ["cpu-thermal"]);
        assert_eq!(h.power_mode.as_deref(), Some("1 10W"));
        // Nothing readable: empty, no error.
        assert_eq!(Health::read(&r.join("nope")), Health::default());
    }
}
