//! The workspace's one data fingerprint: FNV-1a (64 bit) over the little-endian bits of every
//! value, finished with the number of rows. Stored in checkpoints and result files so that a resume
//! or a comparison on different data is refused.
//!
//! For f32 data, [`of_f32`] is bit for bit the value `diffusion::train::TrainData::fingerprint`
//! has always stored, so existing runs stay valid.

const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0100_0000_01b3;

/// A fingerprint being computed: feed values in a fixed order, then [`Fingerprint::finish`] with
/// the number of rows.
#[derive(Clone, Copy, Debug)]
pub struct Fingerprint {
    state: u64,
}

impl Default for Fingerprint {
    fn default() -> Self {
        Self::new()
    }
}

impl Fingerprint {
    /// The empty fingerprint (the FNV-1a offset basis).
    pub fn new() -> Self {
        Self { state: OFFSET_BASIS }
    }

    /// Feeds raw bytes.
    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        for &b in bytes {
            self.state ^= u64::from(b);
            self.state = self.state.wrapping_mul(PRIME);
        }
        self
    }

    /// Feeds the bits of one f32.
    pub fn f32(&mut self, v: f32) -> &mut Self {
        self.bytes(&v.to_bits().to_le_bytes())
    }

    /// Feeds the bits of one f64.
    pub fn f64(&mut self, v: f64) -> &mut Self {
        self.bytes(&v.to_bits().to_le_bytes())
    }

    /// Feeds f32 values in order.
    pub fn f32s(&mut self, values: &[f32]) -> &mut Self {
        values.iter().for_each(|&v| {
            self.f32(v);
        });
        self
    }

    /// Feeds f64 values in order.
    pub fn f64s(&mut self, values: &[f64]) -> &mut Self {
        values.iter().for_each(|&v| {
            self.f64(v);
        });
        self
    }

    /// The fingerprint of everything fed, for data of `rows` rows (the shape enters the value, so
    /// the same values cut into a different number of rows fingerprint differently).
    pub fn finish(&self, rows: usize) -> u64 {
        self.state ^ (rows as u64).rotate_left(32)
    }
}

/// The fingerprint of `rows` rows of f32 values (row-major).
pub fn of_f32(values: &[f32], rows: usize) -> u64 {
    Fingerprint::new().f32s(values).finish(rows)
}

/// The fingerprint of `rows` rows of f64 values (in the caller's fixed order).
pub fn of_f64(values: &[f64], rows: usize) -> u64 {
    Fingerprint::new().f64s(values).finish(rows)
}
