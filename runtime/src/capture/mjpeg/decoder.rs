//! [`MjpegDecoder`]: markers, scans, and the output stage.

use super::color::{self, PlaneGeom};
use super::huffman::{Bits, Class, Corner, Huffman};
use super::{idct, tables};
use super::{MjpegError, Scale, DEFAULT_MAX_PIXELS, MAX_SIDE};
use crate::frame::{Frame, PixelFormat};

/// Where a Huffman table slot's content came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Table {
    /// Not defined in this frame (and not holding the standard table).
    Undefined,
    /// Defined by this frame's DHT.
    Frame,
    /// Holds the standard table (Annex K.3), kept across frames.
    Standard,
}

/// One frame component.
#[derive(Debug, Clone, Copy, Default)]
struct Component {
    id: u8,
    h: usize,
    v: usize,
    tq: usize,
    dc: usize,
    ac: usize,
    decoded: bool,
}

/// A baseline JPEG decoder that keeps its buffers between frames (see the module
/// documentation). One per camera stream.
pub struct MjpegDecoder {
    max_pixels: u64,
    dc: Box<[Huffman; 4]>,
    ac: Box<[Huffman; 4]>,
    dc_state: [Table; 4],
    ac_state: [Table; 4],
    /// Quantisation tables in zigzag order.
    quant: [[i32; 64]; 4],
    quant_ok: [bool; 4],
    comps: [Component; 3],
    ncomp: usize,
    width: u32,
    height: u32,
    hmax: usize,
    vmax: usize,
    mcus_x: usize,
    mcus_y: usize,
    restart: usize,
    scale: Scale,
    planes: [Vec<u8>; 3],
    geom: [PlaneGeom; 3],
    planes_ready: bool,
    tmp: Vec<u16>,
    rows: [Vec<u8>; 3],
}

impl std::fmt::Debug for MjpegDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MjpegDecoder")
            .field("max_pixels", &self.max_pixels)
            .field("width", &self.width)
            .field("height", &self.height)
            .field("components", &self.ncomp)
            .finish_non_exhaustive()
    }
}

impl Default for MjpegDecoder {
    fn default() -> Self {
        Self::new()
    }
}

/// The next marker at or after `pos` (skipping fill bytes and stray data): its code and the
/// position after it.
fn next_marker(d: &[u8], mut pos: usize) -> Option<(u8, usize)> {
    while pos + 1 < d.len() {
        if d[pos] == 0xff && d[pos + 1] != 0 && d[pos + 1] != 0xff {
            return Some((d[pos + 1], pos + 2));
        }
        pos += 1;
    }
    None
}

/// The payload of the segment whose length field is at `pos`, and the position after it.
fn segment<'a>(
    d: &'a [u8],
    pos: usize,
    what: &'static str,
) -> Result<(&'a [u8], usize), MjpegError> {
    if pos + 2 > d.len() {
        return Err(MjpegError::Truncated(what));
    }
    let len = u16::from_be_bytes([d[pos], d[pos + 1]]) as usize;
    if len < 2 {
        return Err(MjpegError::Corrupt("segment length below 2"));
    }
    if pos + len > d.len() {
        return Err(MjpegError::Truncated(what));
    }
    Ok((&d[pos + 2..pos + len], pos + len))
}

impl MjpegDecoder {
    /// A decoder for frames of at most [`DEFAULT_MAX_PIXELS`].
    pub fn new() -> Self {
        Self::with_max_pixels(DEFAULT_MAX_PIXELS)
    }

    /// A decoder refusing frames of more than `max_pixels` (width × height before scaling) or
    /// a side above [`MAX_SIDE`] with [`MjpegError::TooLarge`].
    pub fn with_max_pixels(max_pixels: u64) -> Self {
        Self {
            max_pixels,
            dc: Box::new(std::array::from_fn(|_| Huffman::empty())),
            ac: Box::new(std::array::from_fn(|_| Huffman::empty())),
            dc_state: [Table::Undefined; 4],
            ac_state: [Table::Undefined; 4],
            quant: [[0; 64]; 4],
            quant_ok: [false; 4],
            comps: [Component::default(); 3],
            ncomp: 0,
            width: 0,
            height: 0,
            hmax: 1,
            vmax: 1,
            mcus_x: 0,
            mcus_y: 0,
            restart: 0,
            scale: Scale::Full,
            planes: Default::default(),
            geom: [PlaneGeom::default(); 3],
            planes_ready: false,
            tmp: Vec::new(),
            rows: Default::default(),
        }
    }

    /// Width and height declared by the last frame header decoded (0 × 0 before any).
    pub fn frame_size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// Decode one JPEG frame at `scale` into `frame` as packed RGB of
    /// [`Scale::output_size`]`(width, height)` (reusing `frame.data`'s capacity). Only the
    /// pixels, width, height and format of `frame` are set, and only once the whole frame has
    /// decoded: on error `frame` is left as it was.
    pub fn decode(
        &mut self,
        jpeg: &[u8],
        scale: Scale,
        frame: &mut Frame,
    ) -> Result<(), MjpegError> {
        if jpeg.len() < 2 || jpeg[0] != 0xff || jpeg[1] != 0xd8 {
            return Err(MjpegError::NotJpeg);
        }
        self.scale = scale;
        self.ncomp = 0;
        self.restart = 0;
        self.planes_ready = false;
        self.quant_ok = [false; 4];
        for s in self.dc_state.iter_mut().chain(self.ac_state.iter_mut()) {
            if *s == Table::Frame {
                *s = Table::Undefined;
            }
        }
        let mut scans = 0;
        let mut pos = 2;
        while let Some((m, after)) = next_marker(jpeg, pos) {
            pos = after;
            match m {
                0xd9 => break,
                0xd0..=0xd7 | 0xd8 | 0x01 => continue,
                _ => {}
            }
            let (seg, next) = segment(jpeg, pos, "a marker segment")?;
            pos = next;
            match m {
                0xc0 | 0xc1 => self.frame_header(seg)?,
                0xc2 | 0xc6 => return Err(MjpegError::Unsupported("progressive JPEG (SOF2)")),
                0xc3 | 0xc7 | 0xcb | 0xcf => {
                    return Err(MjpegError::Unsupported("lossless JPEG (SOF3)"))
                }
                0xc5 => return Err(MjpegError::Unsupported("hierarchical JPEG (SOF5)")),
                0xc9 | 0xca | 0xcc | 0xcd | 0xce => {
                    return Err(MjpegError::Unsupported("arithmetic-coded JPEG (SOF9/DAC)"))
                }
                0xc4 => self.huffman_tables(seg)?,
                0xdb => self.quant_tables(seg)?,
                0xdd => {
                    if seg.len() < 2 {
                        return Err(MjpegError::Corrupt("DRI segment shorter than 2 bytes"));
                    }
                    self.restart = u16::from_be_bytes([seg[0], seg[1]]) as usize;
                }
                0xda => {
                    pos = self.scan(seg, jpeg, pos)?;
                    scans += 1;
                }
                _ => {} // APPn, COM, DNL, JPGn: skipped.
            }
        }
        if self.ncomp == 0 {
            return Err(MjpegError::Truncated(
                "headers: no frame header (SOF0) found",
            ));
        }
        if scans == 0 || self.comps[..self.ncomp].iter().any(|c| !c.decoded) {
            return Err(MjpegError::Truncated(
                "headers: a component's scan (SOS) is missing",
            ));
        }
        self.output(frame);
        Ok(())
    }

    fn frame_header(&mut self, s: &[u8]) -> Result<(), MjpegError> {
        if self.ncomp != 0 {
            return Err(MjpegError::Corrupt("two frame headers (SOF) in one frame"));
        }
        if s.len() < 6 {
            return Err(MjpegError::Corrupt(
                "frame header (SOF) shorter than 6 bytes",
            ));
        }
        if s[0] != 8 {
            return Err(MjpegError::Unsupported(
                "sample precision other than 8 bits (12-bit)",
            ));
        }
        let height = u16::from_be_bytes([s[1], s[2]]) as u32;
        let width = u16::from_be_bytes([s[3], s[4]]) as u32;
        let n = s[5] as usize;
        if height == 0 {
            return Err(MjpegError::Unsupported(
                "height defined later by a DNL marker",
            ));
        }
        if width == 0 {
            return Err(MjpegError::Corrupt("frame width 0"));
        }
        match n {
            1 | 3 => {}
            4 => return Err(MjpegError::Unsupported("4 components (CMYK or YCCK)")),
            _ => {
                return Err(MjpegError::Unsupported(
                    "a component count other than 1 or 3",
                ))
            }
        }
        if s.len() < 6 + 3 * n {
            return Err(MjpegError::Corrupt(
                "frame header (SOF) shorter than its components",
            ));
        }
        if width > MAX_SIDE || height > MAX_SIDE || width as u64 * height as u64 > self.max_pixels {
            return Err(MjpegError::TooLarge {
                width,
                height,
                max_side: MAX_SIDE,
                max_pixels: self.max_pixels,
            });
        }
        for i in 0..n {
            let c = &s[6 + 3 * i..9 + 3 * i];
            let (h, v) = ((c[1] >> 4) as usize, (c[1] & 15) as usize);
            if h == 0 || v == 0 {
                return Err(MjpegError::Corrupt("sampling factor 0"));
            }
            if h > 2 || v > 2 {
                return Err(MjpegError::Unsupported("sampling factors above 2"));
            }
            if c[2] > 3 {
                return Err(MjpegError::Corrupt("quantisation table number above 3"));
            }
            self.comps[i] = Component {
                id: c[0],
                // A single component is never interleaved: its sampling factors do not matter.
                h: if n == 1 { 1 } else { h },
                v: if n == 1 { 1 } else { v },
                tq: c[2] as usize,
                ..Component::default()
            };
        }
        self.ncomp = n;
        self.width = width;
        self.height = height;
        self.hmax = self.comps[..n].iter().map(|c| c.h).max().unwrap_or(1);
        self.vmax = self.comps[..n].iter().map(|c| c.v).max().unwrap_or(1);
        self.mcus_x = (width as usize).div_ceil(8 * self.hmax);
        self.mcus_y = (height as usize).div_ceil(8 * self.vmax);
        let (bs, sd) = (self.scale.block(), self.scale.divisor() as usize);
        for i in 0..n {
            let c = self.comps[i];
            let full_w = (width as usize * c.h).div_ceil(self.hmax);
            let full_h = (height as usize * c.v).div_ceil(self.vmax);
            self.geom[i] = PlaneGeom {
                stride: self.mcus_x * c.h * bs,
                rows: full_h.div_ceil(sd),
                cols: full_w.div_ceil(sd),
                fx: self.hmax / c.h,
                fy: self.vmax / c.v,
            };
        }
        Ok(())
    }

    fn quant_tables(&mut self, mut s: &[u8]) -> Result<(), MjpegError> {
        while !s.is_empty() {
            let (pq, tq) = ((s[0] >> 4) as usize, (s[0] & 15) as usize);
            if tq > 3 {
                return Err(MjpegError::Corrupt("quantisation table number above 3"));
            }
            let n = match pq {
                0 => 64,
                1 => 128,
                _ => return Err(MjpegError::Corrupt("quantisation table precision above 1")),
            };
            if s.len() < 1 + n {
                return Err(MjpegError::Corrupt("DQT segment shorter than its tables"));
            }
            let q = &mut self.quant[tq];
            for (k, x) in q.iter_mut().enumerate() {
                *x = if pq == 0 {
                    s[1 + k] as i32
                } else {
                    u16::from_be_bytes([s[1 + 2 * k], s[2 + 2 * k]]) as i32
                };
            }
            self.quant_ok[tq] = true;
            s = &s[1 + n..];
        }
        Ok(())
    }

    fn huffman_tables(&mut self, mut s: &[u8]) -> Result<(), MjpegError> {
        while !s.is_empty() {
            if s.len() < 17 {
                return Err(MjpegError::Corrupt("DHT segment shorter than its tables"));
            }
            let (tc, th) = ((s[0] >> 4) as usize, (s[0] & 15) as usize);
            if tc > 1 || th > 3 {
                return Err(MjpegError::Corrupt(
                    "Huffman table class above 1 or number above 3",
                ));
            }
            let mut counts = [0u8; 16];
            counts.copy_from_slice(&s[1..17]);
            let total: usize = counts.iter().map(|&c| c as usize).sum();
            if s.len() < 17 + total {
                return Err(MjpegError::Corrupt("DHT segment shorter than its tables"));
            }
            let symbols = &s[17..17 + total];
            if tc == 0 {
                self.dc[th].build(Class::Dc, &counts, symbols)?;
                self.dc_state[th] = Table::Frame;
            } else {
                self.ac[th].build(Class::Ac, &counts, symbols)?;
                self.ac_state[th] = Table::Frame;
            }
            s = &s[17 + total..];
        }
        Ok(())
    }

    /// Make table `slot` usable: the standard table when the frame defined none there.
    fn ensure_table(&mut self, ac: bool, slot: usize) -> Result<(), MjpegError> {
        let state = if ac {
            &mut self.ac_state[slot]
        } else {
            &mut self.dc_state[slot]
        };
        if *state != Table::Undefined {
            return Ok(());
        }
        let (counts, values): (&[u8; 16], &[u8]) = match (ac, slot) {
            (false, 0) => (&tables::LUMA_DC_COUNTS, &tables::LUMA_DC_VALUES),
            (false, 1) => (&tables::CHROMA_DC_COUNTS, &tables::CHROMA_DC_VALUES),
            (true, 0) => (&tables::LUMA_AC_COUNTS, &tables::LUMA_AC_VALUES),
            (true, 1) => (&tables::CHROMA_AC_COUNTS, &tables::CHROMA_AC_VALUES),
            _ => {
                return Err(MjpegError::Corrupt(
                    "a scan uses a Huffman table never defined",
                ))
            }
        };
        *state = Table::Standard;
        if ac {
            self.ac[slot].build(Class::Ac, counts, values)
        } else {
            self.dc[slot].build(Class::Dc, counts, values)
        }
    }

    /// Size the component planes for the frame header (no allocation once grown).
    fn ensure_planes(&mut self) {
        if self.planes_ready {
            return;
        }
        let bs = self.scale.block();
        for i in 0..self.ncomp {
            let rows = self.mcus_y * self.comps[i].v * bs;
            self.planes[i].resize(self.geom[i].stride * rows, 0);
        }
        let cols = self.geom[..self.ncomp]
            .iter()
            .map(|g| g.cols)
            .max()
            .unwrap_or(0);
        self.tmp.resize(cols, 0);
        let (w, _) = self.scale.output_size(self.width, self.height);
        for r in &mut self.rows[..self.ncomp] {
            r.resize(w as usize, 0);
        }
        self.planes_ready = true;
    }

    /// Parse a scan header and decode its entropy-coded data from `pos`; returns the position
    /// of the marker after it.
    fn scan(&mut self, s: &[u8], data: &[u8], pos: usize) -> Result<usize, MjpegError> {
        if self.ncomp == 0 {
            return Err(MjpegError::Corrupt(
                "scan (SOS) before the frame header (SOF)",
            ));
        }
        let ns = *s
            .first()
            .ok_or(MjpegError::Corrupt("empty scan header (SOS)"))? as usize;
        if ns == 0 || ns > self.ncomp || s.len() < 4 + 2 * ns {
            return Err(MjpegError::Corrupt("scan header (SOS) component count"));
        }
        let mut members = [0usize; 3];
        for (i, m) in members.iter_mut().enumerate().take(ns) {
            let (id, t) = (s[1 + 2 * i], s[2 + 2 * i]);
            let c = self.comps[..self.ncomp]
                .iter()
                .position(|c| c.id == id)
                .ok_or(MjpegError::Corrupt(
                    "a scan names a component the frame lacks",
                ))?;
            let (td, ta) = ((t >> 4) as usize, (t & 15) as usize);
            if td > 3 || ta > 3 {
                return Err(MjpegError::Corrupt("Huffman table number above 3"));
            }
            self.ensure_table(false, td)?;
            self.ensure_table(true, ta)?;
            if !self.quant_ok[self.comps[c].tq] {
                return Err(MjpegError::Corrupt(
                    "a component uses a quantisation table never defined",
                ));
            }
            self.comps[c].dc = td;
            self.comps[c].ac = ta;
            *m = c;
        }
        let p = &s[1 + 2 * ns..];
        if p[0] != 0 || p[1] != 63 || p[2] != 0 {
            return Err(MjpegError::Unsupported(
                "progressive scan parameters in a baseline frame",
            ));
        }
        let members = &members[..ns];
        let (bw, bh) = if ns == 1 {
            let c = self.comps[members[0]];
            (
                (self.width as usize * c.h).div_ceil(self.hmax).div_ceil(8),
                (self.height as usize * c.v).div_ceil(self.vmax).div_ceil(8),
            )
        } else {
            (self.mcus_x, self.mcus_y)
        };
        let per_mcu: usize = if ns == 1 {
            1
        } else {
            members
                .iter()
                .map(|&c| self.comps[c].h * self.comps[c].v)
                .sum()
        };
        // Every block takes at least 2 bits (a DC and an end-of-block code): refuse frames
        // whose data cannot hold their blocks before growing any buffer for them.
        if (bw * bh * per_mcu) as u64 > (data.len() - pos) as u64 * 4 + 64 {
            return Err(MjpegError::Truncated(
                "entropy-coded data (far fewer bytes than the frame's blocks need)",
            ));
        }
        self.ensure_planes();
        let end = self.decode_scan(data, pos, members, bw, bh)?;
        for &c in members {
            self.comps[c].decoded = true;
        }
        Ok(end)
    }

    /// Decode a scan's entropy-coded data from `pos` in `data`; returns the position of the
    /// marker after it.
    fn decode_scan(
        &mut self,
        data: &[u8],
        pos: usize,
        members: &[usize],
        bw: usize,
        bh: usize,
    ) -> Result<usize, MjpegError> {
        match self.scale {
            Scale::Full => self.decode_scan_at::<8>(data, pos, members, bw, bh),
            Scale::Half => self.decode_scan_at::<4>(data, pos, members, bw, bh),
            Scale::Quarter => self.decode_scan_at::<2>(data, pos, members, bw, bh),
            Scale::Eighth => self.decode_scan_at::<1>(data, pos, members, bw, bh),
        }
    }

    /// [`MjpegDecoder::decode_scan`] at a block side of `BS` pixels (8, 4, 2, 1: the scale),
    /// compiled once per scale so that the coefficient corner and the transform are constants.
    fn decode_scan_at<const BS: usize>(
        &mut self,
        data: &[u8],
        pos: usize,
        members: &[usize],
        bw: usize,
        bh: usize,
    ) -> Result<usize, MjpegError> {
        let bs = BS;
        let Self {
            dc,
            ac,
            quant,
            comps,
            geom,
            planes,
            restart,
            ..
        } = self;
        let restart = *restart;
        // The blocks of one MCU, in stream order: their tables, component and offset of the
        // block's pixels from the MCU's in the component's plane (at most 3 components × 2×2
        // blocks), resolved once for the scan.
        let empty = (&dc[0], &ac[0], &quant[0], 0usize, 0usize);
        let mut units = [empty; 12];
        let mut n = 0;
        // Plane offset of MCU (0, 0) step per MCU column and per MCU row, per component.
        let mut steps = [(0usize, 0usize); 3];
        for &ci in members {
            let c = comps[ci];
            let (nh, nv) = if members.len() == 1 {
                (1, 1)
            } else {
                (c.h, c.v)
            };
            let stride = geom[ci].stride;
            steps[ci] = (nh * bs, nv * bs * stride);
            for v in 0..nv {
                for h in 0..nh {
                    let off = v * bs * stride + h * bs;
                    units[n] = (&dc[c.dc], &ac[c.ac], &quant[c.tq], ci, off);
                    n += 1;
                }
            }
        }
        let units = &units[..n];
        // DC predictions, per component: 0 at the start of each scan and restart interval.
        let mut preds = [0i32; 3];
        // The coefficients the scale's inverse DCT reads: its corner of the block.
        const CORNERS: [Corner; 4] = [
            Corner::new(8),
            Corner::new(4),
            Corner::new(2),
            Corner::new(1),
        ];
        let corner = &CORNERS[3 - BS.trailing_zeros() as usize];
        let mut coef: idct::Block = [0; 65];
        // A local (see [`Bits`]).
        let mut bits = Bits::new(data, pos);
        let mut left = restart;
        for my in 0..bh {
            for mx in 0..bw {
                if restart > 0 {
                    if left == 0 {
                        bits = bits.restart()?;
                        preds = [0; 3];
                        left = restart;
                    }
                    left -= 1;
                }
                for &(dc, ac, q, ci, off) in units {
                    let end = bits.block(dc, ac, q, &mut preds[ci], &mut coef, corner)?;
                    let stride = geom[ci].stride;
                    let (sx, sy) = steps[ci];
                    let out = &mut planes[ci][my * sy + mx * sx + off..];
                    // Each transform reads only its corner of `coef`, the only part written
                    // (besides the spare slot): only that corner needs zeroing for the next
                    // block. A block without AC coefficients (`end` 1) is flat; at 1/4 the 2×2
                    // transform gives that same flat block, without a branch to mispredict.
                    match BS {
                        8 if end > 1 => {
                            idct::idct8(&coef, out, stride);
                            for r in coef.chunks_exact_mut(8).take(8) {
                                r.copy_from_slice(&[0; 8]);
                            }
                        }
                        4 if end > 1 => {
                            idct::idct4(&coef, out, stride);
                            for r in coef.chunks_exact_mut(8).take(4) {
                                r[..4].fill(0);
                            }
                        }
                        2 => {
                            idct::idct2(&coef, out, stride);
                            [coef[0], coef[1], coef[8], coef[9]] = [0; 4];
                        }
                        _ => {
                            idct::fill(idct::dc_pixel(coef[0]), bs, out, stride);
                            coef[0] = 0;
                        }
                    }
                }
            }
            if bits.overran() {
                return Err(MjpegError::Truncated("entropy-coded data"));
            }
        }
        Ok(bits.end())
    }

    /// Upsample and colour-convert the planes into `frame`.
    fn output(&mut self, frame: &mut Frame) {
        let (w, h) = self.scale.output_size(self.width, self.height);
        frame.reshape(w, h, PixelFormat::Rgb);
        let (w, h) = (w as usize, h as usize);
        let n = self.ncomp;
        let (planes, geom) = (&self.planes[..n], &self.geom[..n]);
        for (y, out) in frame.data.chunks_exact_mut(w * 3).enumerate().take(h) {
            for c in 0..n {
                color::component_row(&planes[c], &geom[c], y, w, &mut self.tmp, &mut self.rows[c]);
            }
            // A full-resolution component's row is read from its plane, not copied.
            let row = |c: usize| -> &[u8] {
                let g = &geom[c];
                match color::plane_row(&planes[c], g, y, w) {
                    Some(r) => r,
                    None => &self.rows[c][..w],
                }
            };
            if n == 1 {
                color::grey_row(row(0), out);
            } else {
                color::ycbcr_row(row(0), row(1), row(2), out);
            }
        }
    }
}
