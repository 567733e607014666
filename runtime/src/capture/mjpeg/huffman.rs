//! Huffman tables (with a 9-bit lookahead and a combined run/value table for short AC codes),
//! the entropy-coded-segment bit reader, and decoding one 8×8 block of coefficients.

use super::MjpegError;

/// Bits looked up at once.
const LOOK: u32 = 9;
const LOOK_SIZE: usize = 1 << LOOK;
/// Flag of symbol 0 in [`Huffman::fast`].
const EOB: i32 = 0x8000;

/// Zigzag position → natural (row-major) position, with 16 extra entries so that a run that
/// overshoots 63 by a hostile stream indexes a harmless slot before the check rejects it.
pub(super) const ZIGZAG: [u8; 80] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63,
    63, 63, 63, 63, 63, 63,
];

/// One Huffman table, ready for decoding.
#[derive(Clone)]
pub(super) struct Huffman {
    /// `len << 8 | symbol` for codes of at most [`LOOK`] bits, indexed by the next 9 bits; 0 when
    /// the code is longer.
    lookup: [u16; LOOK_SIZE],
    /// `value << 16 | run << 8 | total_bits` when the code and the coefficient's magnitude bits
    /// both fit in the 9 looked-up bits (a DC table's symbols have run 0); symbol 0 (AC
    /// end-of-block, DC difference 0) is `EOB | len`, ZRL (16 zeros) run 15 with value 0; 0 when
    /// the code needs the slow path.
    fast: [i32; LOOK_SIZE],
    /// Largest code of each length (−1: none), for codes longer than [`LOOK`] bits.
    maxcode: [i32; 18],
    /// Index into `values` of the first code of each length, minus that code.
    valptr: [i32; 17],
    /// Symbols in code order.
    values: [u8; 256],
}

impl Huffman {
    /// An empty table (decodes nothing).
    pub(super) fn empty() -> Self {
        Self {
            lookup: [0; LOOK_SIZE],
            fast: [0; LOOK_SIZE],
            maxcode: [-1; 18],
            valptr: [0; 17],
            values: [0; 256],
        }
    }

    /// Rebuild from a DHT segment's 16 code counts and symbols (in place: no allocation).
    pub(super) fn build(&mut self, counts: &[u8; 16], symbols: &[u8]) -> Result<(), MjpegError> {
        let total: usize = counts.iter().map(|&c| c as usize).sum();
        if total > 256 || total != symbols.len() {
            return Err(MjpegError::Corrupt(
                "Huffman table with more than 256 codes",
            ));
        }
        self.lookup = [0; LOOK_SIZE];
        self.fast = [0; LOOK_SIZE];
        self.maxcode = [-1; 18];
        self.values[..total].copy_from_slice(symbols);
        let mut code: u32 = 0;
        let mut k = 0usize;
        for len in 1..=16u32 {
            let n = counts[len as usize - 1] as usize;
            self.valptr[len as usize] = k as i32 - code as i32;
            for _ in 0..n {
                if code >= 1 << len {
                    return Err(MjpegError::Corrupt(
                        "Huffman table whose code counts overflow their lengths",
                    ));
                }
                if len <= LOOK {
                    let shift = LOOK - len;
                    let first = (code << shift) as usize;
                    let entry = ((len as u16) << 8) | symbols[k] as u16;
                    self.lookup[first..first + (1 << shift)].fill(entry);
                }
                code += 1;
                k += 1;
            }
            if n > 0 {
                self.maxcode[len as usize] = code as i32 - 1;
            }
            code <<= 1;
        }
        self.maxcode[17] = i32::MAX;
        // Combined table: code + magnitude bits within the lookahead.
        for (i, &e) in self.lookup.iter().enumerate() {
            if e == 0 {
                continue;
            }
            let len = (e >> 8) as u32;
            let rs = (e & 0xff) as u32;
            let (run, size) = (rs >> 4, rs & 15);
            if rs == 0 {
                self.fast[i] = EOB | len as i32;
                continue;
            }
            if rs == 0xf0 {
                self.fast[i] = (15 << 8) | len as i32;
                continue;
            }
            if size == 0 || len + size > LOOK {
                continue;
            }
            let bits = ((i as u32) << len) & (LOOK_SIZE as u32 - 1);
            let raw = (bits >> (LOOK - size)) as i32;
            let value = extend(raw, size);
            self.fast[i] = (value << 16) | ((run as i32) << 8) | (len + size) as i32;
        }
        Ok(())
    }
}

/// JPEG's EXTEND: a `size`-bit magnitude category value to a signed coefficient.
#[inline(always)]
fn extend(v: i32, size: u32) -> i32 {
    if size == 0 {
        0
    } else if v < 1 << (size - 1) {
        v - (1 << size) + 1
    } else {
        v
    }
}

/// Reads an entropy-coded segment: byte stuffing (`FF 00`) removed, stops at a marker and feeds
/// zero bits from there; reading into those zeros is reported as truncation.
pub(super) struct Bits<'a> {
    data: &'a [u8],
    /// Next byte to read.
    pub(super) pos: usize,
    /// Bits, MSB first.
    buf: u64,
    /// Valid bits in `buf`.
    cnt: u32,
    /// Zero bytes fed after a marker or the end of the data.
    pad: u64,
    /// A marker (or the end) was reached.
    stopped: bool,
}

impl<'a> Bits<'a> {
    /// A reader from `pos` in `data`.
    pub(super) fn new(data: &'a [u8], pos: usize) -> Self {
        Self {
            data,
            pos,
            buf: 0,
            cnt: 0,
            pad: 0,
            stopped: false,
        }
    }

    /// Whether more bits were consumed than the segment held.
    #[inline]
    pub(super) fn overran(&self) -> bool {
        self.pad * 8 > self.cnt as u64
    }

    #[inline(always)]
    fn refill(&mut self) {
        // Fast path: 8 bytes without an 0xFF among them.
        if let Some(b) = self.data.get(self.pos..self.pos + 8) {
            let w = u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
            let x = !w;
            let has_ff = x.wrapping_sub(0x0101_0101_0101_0101) & !x & 0x8080_8080_8080_8080;
            if has_ff == 0 && !self.stopped {
                let n = (64 - self.cnt) / 8;
                let val = if n == 8 { w } else { w >> (64 - n * 8) };
                self.buf |= val << (64 - self.cnt - n * 8);
                self.cnt += n * 8;
                self.pos += n as usize;
                return;
            }
        }
        self.refill_slow();
    }

    /// Byte by byte: stuffing, markers, the end of the data.
    #[cold]
    #[inline(never)]
    fn refill_slow(&mut self) {
        while self.cnt <= 56 {
            let byte = if self.stopped || self.pos >= self.data.len() {
                self.stopped = true;
                self.pad += 1;
                0
            } else {
                let b = self.data[self.pos];
                if b != 0xff {
                    self.pos += 1;
                    b
                } else if self.data.get(self.pos + 1) == Some(&0) {
                    self.pos += 2;
                    0xff
                } else {
                    self.stopped = true;
                    self.pad += 1;
                    0
                }
            };
            self.buf |= (byte as u64) << (56 - self.cnt);
            self.cnt += 8;
        }
    }

    #[inline(always)]
    fn ensure(&mut self, n: u32) {
        if self.cnt < n {
            self.refill();
        }
    }

    #[inline(always)]
    fn consume(&mut self, n: u32) {
        self.buf <<= n;
        self.cnt -= n;
    }

    /// `n` (1..=16) bits as a signed coefficient (EXTEND). Needs `n` bits buffered.
    #[inline(always)]
    fn receive_extend(&mut self, n: u32) -> i32 {
        let v = (self.buf >> (64 - n)) as i32;
        self.consume(n);
        extend(v, n)
    }

    /// One Huffman symbol. Needs 16 bits buffered.
    #[inline(always)]
    fn symbol(&mut self, t: &Huffman) -> Result<u8, MjpegError> {
        let e = t.lookup[(self.buf >> (64 - LOOK)) as usize];
        if e != 0 {
            self.consume((e >> 8) as u32);
            return Ok(e as u8);
        }
        self.symbol_long(t)
    }

    /// A code longer than the lookahead.
    #[inline(never)]
    fn symbol_long(&mut self, t: &Huffman) -> Result<u8, MjpegError> {
        let code16 = (self.buf >> 48) as i32;
        let mut len = LOOK as usize + 1;
        while len <= 16 {
            let code = code16 >> (16 - len);
            if code <= t.maxcode[len] {
                self.consume(len as u32);
                let i = t.valptr[len] + code;
                return Ok(t.values[(i as usize) & 255]);
            }
            len += 1;
        }
        Err(MjpegError::Corrupt("invalid Huffman code"))
    }

    /// Restart: drop buffered bits and skip the RSTn marker that ends this interval. A missing
    /// marker leaves the rest of the scan as zeros (reported as truncation at its end).
    pub(super) fn restart(&mut self) -> Result<(), MjpegError> {
        if self.overran() {
            return Err(MjpegError::Truncated(
                "entropy-coded data before a restart marker",
            ));
        }
        self.buf = 0;
        self.cnt = 0;
        self.pad = 0;
        self.stopped = false;
        let d = self.data;
        let mut p = self.pos;
        while p + 1 < d.len() {
            if d[p] == 0xff && (0xd0..=0xd7).contains(&d[p + 1]) {
                self.pos = p + 2;
                return Ok(());
            }
            if d[p] == 0xff && d[p + 1] != 0 && d[p + 1] != 0xff {
                // Another marker: no restart marker here; keep going from it (zeros).
                self.pos = p;
                self.stopped = true;
                return Ok(());
            }
            p += 1;
        }
        self.pos = d.len();
        Ok(())
    }

    /// Position of the first byte after the scan (the next marker) once decoding is done.
    pub(super) fn end(&self) -> usize {
        let mut p = self.pos.min(self.data.len());
        // Bytes read ahead into the buffer were before the marker; the marker is at or after
        // `pos`.
        while p + 1 < self.data.len() && !(self.data[p] == 0xff && self.data[p + 1] != 0) {
            p += 1;
        }
        p
    }

    /// Decode one block: its DC difference (added to `pred`) and AC coefficients, dequantised
    /// with `q` (zigzag order) into `coef` (natural order, all zero on entry). Returns the
    /// zigzag index of the last coefficient written (0: DC only).
    #[inline(always)]
    pub(super) fn block(
        &mut self,
        dc: &Huffman,
        ac: &Huffman,
        q: &[i32; 64],
        pred: &mut i32,
        coef: &mut [i32; 64],
    ) -> Result<usize, MjpegError> {
        self.ensure(32);
        let f = dc.fast[(self.buf >> (64 - LOOK)) as usize];
        let diff = if f != 0 {
            self.consume((f & 0xff) as u32);
            f >> 16
        } else {
            let t = self.symbol(dc)? as u32;
            if t > 11 {
                return Err(MjpegError::Corrupt("DC difference category above 11"));
            }
            if t == 0 {
                0
            } else {
                self.receive_extend(t)
            }
        };
        *pred = pred.wrapping_add(diff);
        coef[0] = pred.wrapping_mul(q[0]);
        let mut last = 0;
        let mut k = 1usize;
        while k < 64 {
            self.ensure(32);
            let f = ac.fast[(self.buf >> (64 - LOOK)) as usize];
            if f != 0 {
                self.consume((f & 0xff) as u32);
                if f & EOB != 0 {
                    break;
                }
                k += ((f >> 8) & 0x7f) as usize;
                if k > 63 {
                    return Err(MjpegError::Corrupt("AC coefficient run past the block end"));
                }
                coef[ZIGZAG[k] as usize] = (f >> 16).wrapping_mul(q[k]);
                last = k;
                k += 1;
                continue;
            }
            let rs = self.symbol(ac)? as u32;
            let (run, size) = ((rs >> 4) as usize, rs & 15);
            if size == 0 {
                if run != 15 {
                    break;
                }
                k += 16;
                continue;
            }
            k += run;
            if k > 63 {
                return Err(MjpegError::Corrupt("AC coefficient run past the block end"));
            }
            let v = self.receive_extend(size);
            coef[ZIGZAG[k] as usize] = v.wrapping_mul(q[k]);
            last = k;
            k += 1;
        }
        Ok(last)
    }
}
