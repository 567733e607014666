//! Region of interest: the part of each frame the model sees, cut before the resize.
//!
//! Written `x,y,w,h`. Each value is pixels (`120`), a fraction of the frame's side (`0.25`, with
//! a decimal point) or a percentage (`25%`), so `0.25,0,0.5,1.0` is the middle half of the width
//! at any resolution and `320,180,1280,720` a fixed window of a 1920×1080 camera.

use std::fmt;
use std::str::FromStr;

/// One coordinate of a region: pixels or a fraction of the frame's side.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Coord {
    /// Absolute pixels.
    Px(u32),
    /// Fraction of the frame's width (x, w) or height (y, h), 0..=1.
    Frac(f64),
}

impl Coord {
    fn resolve(self, side: u32) -> u64 {
        match self {
            Coord::Px(v) => v as u64,
            Coord::Frac(f) => (f * side as f64).round() as u64,
        }
    }
}

impl fmt::Display for Coord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Coord::Px(v) => write!(f, "{v}"),
            Coord::Frac(v) => write!(f, "{v:?}"),
        }
    }
}

/// A region of interest `x,y,w,h` (see the module docs for the notation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Roi {
    /// Left edge.
    pub x: Coord,
    /// Top edge.
    pub y: Coord,
    /// Width.
    pub w: Coord,
    /// Height.
    pub h: Coord,
}

/// A region resolved against a frame size, in pixels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rect {
    /// Left edge.
    pub x: u32,
    /// Top edge.
    pub y: u32,
    /// Width (> 0).
    pub w: u32,
    /// Height (> 0).
    pub h: u32,
}

/// A region that cannot be parsed or does not fit the frame.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RoiError {
    /// The text is not `x,y,w,h`.
    #[error("roi `{text}`: {problem}; write x,y,w,h in pixels (320,180,1280,720), fractions with a decimal point (0.25,0,0.5,1.0) or percentages (25%,0%,50%,100%)")]
    Parse {
        /// The text given.
        text: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The region is empty or reaches outside the frame.
    #[error("roi {roi} is {x},{y} {w}x{h} pixels on a {fw}x{fh} frame: {problem}; choose a region inside the frame")]
    Outside {
        /// The region as given.
        roi: String,
        /// Resolved left edge.
        x: u64,
        /// Resolved top edge.
        y: u64,
        /// Resolved width.
        w: u64,
        /// Resolved height.
        h: u64,
        /// Frame width.
        fw: u32,
        /// Frame height.
        fh: u32,
        /// What is wrong.
        problem: &'static str,
    },
}

impl FromStr for Roi {
    type Err = RoiError;

    fn from_str(text: &str) -> Result<Self, RoiError> {
        let bad = |problem: String| RoiError::Parse {
            text: text.to_string(),
            problem,
        };
        let parts: Vec<&str> = text.split(',').map(str::trim).collect();
        if parts.len() != 4 {
            return Err(bad(format!("{} values, expected 4", parts.len())));
        }
        let mut c = [Coord::Px(0); 4];
        for (slot, p) in c.iter_mut().zip(&parts) {
            *slot = if let Some(pc) = p.strip_suffix('%') {
                let v: f64 = pc
                    .parse()
                    .map_err(|_| bad(format!("`{p}` is not a percentage")))?;
                if !(0.0..=100.0).contains(&v) {
                    return Err(bad(format!("`{p}` is outside 0%..100%")));
                }
                Coord::Frac(v / 100.0)
            } else if p.contains('.') {
                let v: f64 = p
                    .parse()
                    .map_err(|_| bad(format!("`{p}` is not a number")))?;
                if !(0.0..=1.0).contains(&v) {
                    return Err(bad(format!(
                        "`{p}` is a fraction outside 0..1 (pixels are written without a decimal point)"
                    )));
                }
                Coord::Frac(v)
            } else {
                Coord::Px(
                    p.parse()
                        .map_err(|_| bad(format!("`{p}` is not a pixel count")))?,
                )
            };
        }
        Ok(Roi {
            x: c[0],
            y: c[1],
            w: c[2],
            h: c[3],
        })
    }
}

impl fmt::Display for Roi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{},{},{}", self.x, self.y, self.w, self.h)
    }
}

impl Roi {
    /// Resolve against a `fw × fh` frame; an empty region or one reaching outside is an error.
    pub fn resolve(&self, fw: u32, fh: u32) -> Result<Rect, RoiError> {
        let (x, y) = (self.x.resolve(fw), self.y.resolve(fh));
        let (w, h) = (self.w.resolve(fw), self.h.resolve(fh));
        let problem = if w == 0 || h == 0 {
            Some("it is empty")
        } else if x + w > fw as u64 || y + h > fh as u64 {
            Some("it reaches outside the frame")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(RoiError::Outside {
                roi: self.to_string(),
                x,
                y,
                w,
                h,
                fw,
                fh,
                problem,
            });
        }
        Ok(Rect {
            x: x as u32,
            y: y as u32,
            w: w as u32,
            h: h as u32,
        })
    }
}

/// Take a `roi=x,y,w,h` option out of a source URI's query (`v4l2:///dev/video0?roi=…&fps=30`):
/// the URI without it, and the region. Any source takes it; the source itself never sees it.
pub fn split_uri(uri: &str) -> Result<(String, Option<Roi>), RoiError> {
    let Some((head, query)) = uri.split_once('?') else {
        return Ok((uri.to_string(), None));
    };
    let mut roi = None;
    let mut rest: Vec<&str> = Vec::new();
    for part in query.split('&') {
        match part.strip_prefix("roi=") {
            Some(text) => roi = Some(text.replace("%2C", ",").replace("%2c", ",").parse()?),
            None => rest.push(part),
        }
    }
    let uri = if rest.is_empty() {
        head.to_string()
    } else {
        format!("{head}?{}", rest.join("&"))
    };
    Ok((uri, roi))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uri_gives_up_its_roi_option() {
        let (u, r) = split_uri("v4l2:///dev/video0?fps=30&roi=10,20,300,200&width=640").unwrap();
        assert_eq!(u, "v4l2:///dev/video0?fps=30&width=640");
        assert_eq!(r.unwrap().to_string(), "10,20,300,200");
        let (u, r) = split_uri("synthetic://?roi=0.1,0.1,0.5,0.5").unwrap();
        assert_eq!((u.as_str(), r.is_some()), ("synthetic://", true));
        let (u, r) = split_uri("file:///x/y.png").unwrap();
        assert_eq!((u.as_str(), r), ("file:///x/y.png", None));
        assert!(split_uri("synthetic://?roi=1,2").is_err());
    }

    #[test]
    fn parses_pixels_fractions_and_percentages() {
        let r: Roi = "320,180,1280,720".parse().unwrap();
        assert_eq!(
            r.resolve(1920, 1080).unwrap(),
            Rect {
                x: 320,
                y: 180,
                w: 1280,
                h: 720
            }
        );
        let r: Roi = "0.25, 0, 0.5, 1.0".parse().unwrap();
        assert_eq!(
            r.resolve(640, 480).unwrap(),
            Rect {
                x: 160,
                y: 0,
                w: 320,
                h: 480
            }
        );
        let r: Roi = "25%,10%,50%,80%".parse().unwrap();
        assert_eq!(
            r.resolve(200, 100).unwrap(),
            Rect {
                x: 50,
                y: 10,
                w: 100,
                h: 80
            }
        );
        // Round trip through Display.
        assert_eq!(r.to_string().parse::<Roi>().unwrap(), r);
    }

    #[test]
    fn bad_text_is_named() {
        for (text, needle) in [
            ("1,2,3", "3 values"),
            ("a,0,10,10", "`a` is not a pixel count"),
            ("0,0,1.5,1.0", "outside 0..1"),
            ("0,0,120%,10%", "outside 0%..100%"),
            ("-1,0,10,10", "`-1`"),
        ] {
            let e = text.parse::<Roi>().unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
            assert!(e.contains("x,y,w,h"), "{e}");
        }
    }

    #[test]
    fn regions_outside_the_frame_or_empty_are_refused() {
        let e = "600,0,100,100"
            .parse::<Roi>()
            .unwrap()
            .resolve(640, 480)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("outside the frame") && e.contains("640x480"),
            "{e}"
        );
        let e = "0,0,0,10"
            .parse::<Roi>()
            .unwrap()
            .resolve(640, 480)
            .unwrap_err()
            .to_string();
        assert!(e.contains("empty"), "{e}");
        // A fraction that rounds to nothing on a tiny frame.
        let e = "0,0,0.01,1.0"
            .parse::<Roi>()
            .unwrap()
            .resolve(20, 20)
            .unwrap_err();
        assert!(matches!(e, RoiError::Outside { w: 0, .. }), "{e}");
        // The whole frame is fine, one pixel more is not.
        assert!("0,0,640,480"
            .parse::<Roi>()
            .unwrap()
            .resolve(640, 480)
            .is_ok());
        assert!("1,0,640,480"
            .parse::<Roi>()
            .unwrap()
            .resolve(640, 480)
            .is_err());
    }
}
