//! Huffman tables (an 11-bit lookahead giving a code's run, size and often its value; a 14-bit
//! table skipping several symbols at once), the entropy-coded-segment bit reader, and decoding
//! one 8×8 block of coefficients.

use super::MjpegError;

/// Bits looked up at once.
const LOOK: u32 = 11;
const LOOK_SIZE: usize = 1 << LOOK;
/// Bits looked up at once when skipping coefficients (at most 15, at least [`LOOK`]).
const SKIP_LOOK: u32 = 14;
const SKIP_SIZE: usize = 1 << SKIP_LOOK;

// A [`Huffman::fast`] entry, for a code of at most [`LOOK`] bits (0: a longer code):
/// Bits 0..5: bits to consume: the code and, when the value is in bits 16.., its magnitude bits.
const LEN_MASK: i32 = 0x3f;
/// AC end-of-block (symbol 0, or any run without a magnitude but ZRL); on a DC table, a symbol
/// above 11 (invalid).
const EOB: i32 = 0x80;
/// Bits 8..12: the zero run before the coefficient (AC; 0 on a DC table).
const RUN_SHIFT: u32 = 8;
/// Bits 12..16: magnitude bits still to read after the code (0: the value is in bits 16..).
const SIZE_SHIFT: u32 = 12;

/// Most whole symbols one [`Huffman::skip`] entry holds.
const SKIP_SYMBOLS: usize = 4;
/// Flag of a [`Huffman::skip`] entry whose last symbol is end-of-block.
const SKIP_EOB: u16 = 0x400;
/// A [`Huffman::skip`] entry whose first symbol does not fit the lookahead: no bits and an
/// advance of 63 zigzag positions, which fails the decoder's check that the symbols end
/// before the block does (it skips from position 1 or later), sending it to the one-symbol
/// path without a test of its own.
const SKIP_NONE: u16 = 63 << 4;

/// Zigzag position → natural (row-major) position, with 16 extra entries so that a run that
/// overshoots 63 by a hostile stream indexes a harmless slot before the check rejects it.
pub(super) const ZIGZAG: [u8; 80] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63,
    63, 63, 63, 63, 63, 63,
];

/// Which coefficients [`Bits::block`] stores, and where: those of the `n × n` lowest
/// frequencies at a block side of `n` pixels (8, 4, 2, 1), that the reduced inverse DCT reads.
pub(super) struct Corner {
    /// Zigzag index → natural position for those coefficients; the spare slot 64 for the
    /// others and for the indices past 63 that a hostile run reaches before the check rejects
    /// it.
    zz: [u8; 80],
    /// The largest zigzag index of those coefficients: past it, coefficients are only skipped.
    kmax: usize,
}

impl Corner {
    /// The corner for a block side of `n` pixels.
    pub(super) const fn new(n: usize) -> Self {
        let mut zz = [64u8; 80];
        let mut kmax = 0;
        let mut k = 0;
        while k < 64 {
            let p = ZIGZAG[k] as usize;
            if p / 8 < n && p % 8 < n {
                zz[k] = p as u8;
                kmax = k;
            }
            k += 1;
        }
        Self { zz, kmax }
    }
}

/// Whether a table decodes DC differences or AC run/size symbols.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Class {
    /// DC differences: symbols 0..=11 (the magnitude category).
    Dc,
    /// AC coefficients: symbols `run << 4 | size`.
    Ac,
}

/// One Huffman table, ready for decoding.
#[derive(Clone)]
pub(super) struct Huffman {
    /// Indexed by the next [`LOOK`] bits: for a code of at most that length, its length, run
    /// and magnitude size, with the signed value itself (bits 16..) when the code and the
    /// magnitude bits both fit in the lookahead (see [`LEN_MASK`], [`EOB`], [`RUN_SHIFT`],
    /// [`SIZE_SHIFT`]); 0 when the code is longer.
    fast: [i32; LOOK_SIZE],
    /// AC tables only, indexed by the next [`SKIP_LOOK`] bits: the run of whole symbols (code
    /// and magnitude bits; up to [`SKIP_SYMBOLS`], the last possibly end-of-block) that fits in
    /// them, for skipping coefficients: bits 0..4 their bits, 4..10 the zigzag positions they
    /// advance (below 63), bit 10 ([`SKIP_EOB`]) whether the last is end-of-block;
    /// [`SKIP_NONE`] when the first does not fit.
    skip: [u16; SKIP_SIZE],
    /// Largest code of each length (−1: none), for codes longer than [`LOOK`] bits.
    maxcode: [i32; 18],
    /// Index into `values` of the first code of each length, minus that code.
    valptr: [i32; 17],
    /// Symbols in code order.
    values: [u8; 256],
    /// The class and code counts the table was last built from (with `values`), when that
    /// build succeeded: the same DHT in the next frame (cameras and encoders repeat theirs)
    /// is not rebuilt.
    built: Option<(Class, [u8; 16])>,
}

impl Huffman {
    /// An empty table (decodes nothing).
    pub(super) fn empty() -> Self {
        Self {
            fast: [0; LOOK_SIZE],
            skip: [SKIP_NONE; SKIP_SIZE],
            maxcode: [-1; 18],
            valptr: [0; 17],
            values: [0; 256],
            built: None,
        }
    }

    /// Rebuild from a DHT segment's 16 code counts and symbols (in place: no allocation).
    pub(super) fn build(
        &mut self,
        class: Class,
        counts: &[u8; 16],
        symbols: &[u8],
    ) -> Result<(), MjpegError> {
        let total: usize = counts.iter().map(|&c| c as usize).sum();
        if total > 256 || total != symbols.len() {
            return Err(MjpegError::Corrupt(
                "Huffman table with more than 256 codes",
            ));
        }
        if self.built == Some((class, *counts)) && self.values[..total] == *symbols {
            return Ok(());
        }
        self.built = None;
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
                    for (j, e) in self.fast[first..first + (1 << shift)]
                        .iter_mut()
                        .enumerate()
                    {
                        *e = entry(class, symbols[k], len, j as u32, shift);
                    }
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
        if class == Class::Ac {
            self.build_skip();
        }
        self.built = Some((class, *counts));
        Ok(())
    }

    /// Fill [`Huffman::skip`] from [`Huffman::fast`] (a code of at most [`LOOK`] bits has the
    /// same length, run and size in every entry it spans, whatever the bits after it).
    fn build_skip(&mut self) {
        for i in 0..SKIP_SIZE {
            let (mut bits, mut adv, mut e) = (0u32, 0u32, SKIP_NONE);
            for _ in 0..SKIP_SYMBOLS {
                let f = self.fast[((i << bits) & (SKIP_SIZE - 1)) >> (SKIP_LOOK - LOOK)];
                let len = (f & LEN_MASK) as u32 + ((f >> SIZE_SHIFT) & 15) as u32;
                if f == 0 || bits + len > SKIP_LOOK {
                    break;
                }
                if f & EOB != 0 {
                    e = ((bits + len) | adv << 4) as u16 | SKIP_EOB;
                    break;
                }
                let a = adv + ((f >> RUN_SHIFT) & 15) as u32 + 1;
                if a >= 63 {
                    // Does not fit the entry's 6 bits (63 is SKIP_NONE's).
                    break;
                }
                (bits, adv) = (bits + len, a);
                e = (bits | adv << 4) as u16;
            }
            self.skip[i] = e;
        }
    }
}

/// The [`Huffman::fast`] entry of a `len`-bit code for `symbol`, followed in the lookahead by
/// the `rest_len` bits `rest`.
fn entry(class: Class, symbol: u8, len: u32, rest: u32, rest_len: u32) -> i32 {
    let (run, size) = match class {
        Class::Dc if symbol > 11 => return EOB | len as i32,
        Class::Dc => (0, symbol as u32),
        Class::Ac => ((symbol >> 4) as u32, (symbol & 15) as u32),
    };
    if class == Class::Ac && size == 0 && run != 15 {
        return EOB | len as i32;
    }
    let run = (run as i32) << RUN_SHIFT;
    if size <= rest_len {
        // ZRL and a DC difference of category 0 land here with value 0.
        let value = extend((rest >> (rest_len - size)) as i32, size);
        (value << 16) | run | (len + size) as i32
    } else {
        ((size as i32) << SIZE_SHIFT) | run | len as i32
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
///
/// Every method that takes it is inlined, so that a decoding loop holding one in a local keeps
/// the bit buffer in registers (a call taking its address would pin it to memory: a store and a
/// reload on every symbol); the out-of-line slow paths take the buffer's value.
#[derive(Clone, Copy)]
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

    /// Top up the buffer to at least 56 bits. Needs `cnt` < 56.
    #[inline(always)]
    fn refill(&mut self) {
        // Fast path: 8 bytes without an 0xFF among them (none after a marker: `pos` stays on
        // its 0xFF). The whole bytes that fit are taken; the bits of the next byte that also
        // land below `cnt` are that byte's own, which the next refill ORs in again unchanged.
        if let Some(b) = self.data.get(self.pos..self.pos + 8) {
            let w = u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
            let x = !w;
            let has_ff = x.wrapping_sub(0x0101_0101_0101_0101) & !x & 0x8080_8080_8080_8080;
            if has_ff == 0 {
                self.buf |= w >> self.cnt;
                self.pos += ((63 - self.cnt) >> 3) as usize;
                self.cnt |= 56;
                return;
            }
        }
        *self = self.refill_slow();
    }

    /// Byte by byte: stuffing, markers, the end of the data. Inlined, as [`Bits::restart`]:
    /// a call would take the reader's address and keep it out of registers.
    #[inline(always)]
    fn refill_slow(mut self) -> Self {
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
        self
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

    /// The next [`LOOK`] bits.
    #[inline(always)]
    fn peek(&self) -> usize {
        (self.buf >> (64 - LOOK)) as usize
    }

    /// A code longer than the lookahead at the top of `buf`: its length and symbol.
    #[cold]
    #[inline(never)]
    fn symbol_long(buf: u64, t: &Huffman) -> Result<(u32, u8), MjpegError> {
        let code16 = (buf >> 48) as i32;
        let mut len = LOOK as usize + 1;
        while len <= 16 {
            let code = code16 >> (16 - len);
            if code <= t.maxcode[len] {
                let i = t.valptr[len] + code;
                return Ok((len as u32, t.values[(i as usize) & 255]));
            }
            len += 1;
        }
        Err(MjpegError::Corrupt("invalid Huffman code"))
    }

    /// An AC code longer than the lookahead at the top of `buf`, as a [`Huffman::fast`] entry
    /// (its magnitude bits not included).
    #[cold]
    #[inline(never)]
    fn ac_long(buf: u64, t: &Huffman) -> Result<i32, MjpegError> {
        let (len, rs) = Self::symbol_long(buf, t)?;
        Ok(entry(Class::Ac, rs, len, 0, 0))
    }

    /// Restart: drop buffered bits and skip the RSTn marker that ends this interval. A missing
    /// marker leaves the rest of the scan as zeros (reported as truncation at its end).
    #[inline(never)]
    pub(super) fn restart(mut self) -> Result<Self, MjpegError> {
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
                return Ok(self);
            }
            if d[p] == 0xff && d[p + 1] != 0 && d[p + 1] != 0xff {
                // Another marker: no restart marker here; keep going from it (zeros).
                self.pos = p;
                self.stopped = true;
                return Ok(self);
            }
            p += 1;
        }
        self.pos = d.len();
        Ok(self)
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

    /// Consume the code of `f` (a [`Huffman::fast`] entry) and its magnitude bits; returns the
    /// coefficient (0 for end-of-block and ZRL). Branchless: a value precomputed in the entry
    /// (magnitude size field 0) plus the EXTEND of the magnitude bits still to read (0 bits: 0).
    #[inline(always)]
    fn value(&mut self, f: i32) -> i32 {
        let len = (f & LEN_MASK) as u32;
        let size = (f >> SIZE_SHIFT) as u32 & 15;
        let raw = (((self.buf << len) >> 1) >> (63 - size)) as i32;
        let half = (1 << size) >> 1;
        let extended = raw + (((raw - half) >> 31) & (1 - (1 << size)));
        self.consume(len + size);
        (f >> 16) + extended
    }

    /// Decode one block: its DC difference (added to `pred`) and AC coefficients, dequantised
    /// with `q` (zigzag order) into `coef` (natural order): those of `corner` (which must be zero
    /// on entry), and a few others into the spare slot 64; the rest are skipped.
    /// Returns the zigzag index after the last coefficient decoded (1: DC only).
    #[inline(always)]
    pub(super) fn block(
        &mut self,
        dc: &Huffman,
        ac: &Huffman,
        q: &[i32; 64],
        pred: &mut i32,
        coef: &mut [i32; 65],
        corner: &Corner,
    ) -> Result<usize, MjpegError> {
        let (zz, kmax) = (&corner.zz, corner.kmax);
        // A DC code (at most 16 bits) and its magnitude (at most 11).
        self.ensure(27);
        let f = dc.fast[self.peek()];
        let diff = if f != 0 {
            if f & EOB != 0 {
                return Err(MjpegError::Corrupt("DC difference category above 11"));
            }
            self.value(f)
        } else {
            let (len, t) = Self::symbol_long(self.buf, dc)?;
            self.consume(len);
            let t = t as u32;
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
        let mut k = 1usize;
        let mut f = 0;
        // The coefficients up to the last one the inverse DCT reads.
        while k <= kmax {
            // The lookahead's bits; more below for a longer code or magnitude bits still to read.
            self.ensure(LOOK);
            f = ac.fast[self.peek()];
            if f == 0 {
                self.ensure(32);
                f = Self::ac_long(self.buf, ac)?;
            }
            self.consume((f & LEN_MASK) as u32);
            if f & EOB != 0 {
                return Ok(k);
            }
            let size = (f >> SIZE_SHIFT) as u32 & 15;
            let v = if size == 0 {
                f >> 16
            } else {
                self.ensure(16);
                self.receive_extend(size)
            };
            k += ((f >> RUN_SHIFT) & 15) as usize;
            coef[zz[k] as usize] = v.wrapping_mul(q[k & 63]);
            k += 1;
        }
        // The others: codes and magnitude bits skipped, several symbols at a time while they
        // end before the block does (else one, below: the end of a block without
        // end-of-block, an overlong run, a code longer than the lookahead).
        while k < 64 {
            // A skip entry needs only its lookahead's bits (refills are then further apart);
            // the one-symbol path below, a code and its magnitude bits (up to 31).
            self.ensure(SKIP_LOOK);
            let e = ac.skip[(self.buf >> (64 - SKIP_LOOK)) as usize] as usize;
            let adv = (e >> 4) & 63;
            // (k >= 1 here: a SKIP_NONE entry fails this.)
            if k + adv < 64 {
                self.consume((e & 15) as u32);
                k += adv;
                if e & SKIP_EOB as usize != 0 {
                    f = EOB;
                    break;
                }
                continue;
            }
            self.ensure(32);
            f = ac.fast[self.peek()];
            if f == 0 {
                f = Self::ac_long(self.buf, ac)?;
            }
            self.consume(((f & LEN_MASK) + ((f >> SIZE_SHIFT) & 15)) as u32);
            if f & EOB != 0 {
                break;
            }
            k += ((f >> RUN_SHIFT) & 15) as usize + 1;
        }
        // A coefficient past the end is an error; ZRL (16 zeros: run 15, value 0) past it ends
        // the block, as in libjpeg.
        if k > 64 && f >> RUN_SHIFT != 15 {
            return Err(MjpegError::Corrupt("AC coefficient run past the block end"));
        }
        Ok(k)
    }
}
