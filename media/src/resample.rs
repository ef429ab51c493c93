//! Band-limited resampling to the output rate, in fixed blocks, with the resampler's
//! delay removed so the output has exactly `round(frames_in * rate_out / rate_in)` frames.
//!
//! Invariant: memory is one input chunk plus one output chunk per channel, whatever the
//! stream's length.

use rubato::{FftFixedIn, Resampler as _};

const CHUNK_FRAMES_IN: usize = 1024;

/// Receives each resampled planar block and its frame count.
pub(crate) type Emit<'a> = dyn FnMut(&[Vec<f32>], usize) -> Result<(), crate::MediaError> + 'a;

pub(crate) struct Resampler {
    inner: FftFixedIn<f32>,
    rate_in: u32,
    rate_out: u32,
    pending: Vec<Vec<f32>>,
    out_buf: Vec<Vec<f32>>,
    /// Output frames still to drop at the start (the resampler's delay).
    skip_frames: usize,
    frames_in: u64,
    frames_out: u64,
}

impl Resampler {
    pub(crate) fn new(rate_in: u32, rate_out: u32, channels: usize) -> Result<Resampler, String> {
        let inner = FftFixedIn::<f32>::new(
            rate_in as usize,
            rate_out as usize,
            CHUNK_FRAMES_IN,
            2,
            channels,
        )
        .map_err(|e| e.to_string())?;
        let out_max = inner.output_frames_max();
        let skip_frames = inner.output_delay();
        Ok(Resampler {
            inner,
            rate_in,
            rate_out,
            pending: vec![Vec::with_capacity(CHUNK_FRAMES_IN * 2); channels],
            out_buf: vec![vec![0.0; out_max]; channels],
            skip_frames,
            frames_in: 0,
            frames_out: 0,
        })
    }

    /// Total output frames the input so far must become.
    fn expected_out(&self) -> u64 {
        ((self.frames_in as u128 * self.rate_out as u128 + self.rate_in as u128 / 2)
            / self.rate_in as u128) as u64
    }

    /// Feeds planar input; calls `emit` with each resampled planar block.
    pub(crate) fn push(
        &mut self,
        input: &[Vec<f32>],
        emit: &mut Emit<'_>,
    ) -> Result<(), crate::MediaError> {
        let frames = input.first().map_or(0, Vec::len);
        self.frames_in += frames as u64;
        for (p, i) in self.pending.iter_mut().zip(input) {
            p.extend_from_slice(i);
        }
        loop {
            let need = self.inner.input_frames_next();
            if self.pending[0].len() < need {
                return Ok(());
            }
            let (used, written) = self
                .inner
                .process_into_buffer(&self.pending, &mut self.out_buf, None)
                .map_err(|e| crate::MediaError::Unsupported {
                    reason: format!("resampler: {e}"),
                })?;
            for p in &mut self.pending {
                p.drain(..used);
            }
            self.deliver(written, emit)?;
        }
    }

    /// Flushes the tail, so the output length matches the input length exactly.
    pub(crate) fn finish(&mut self, emit: &mut Emit<'_>) -> Result<(), crate::MediaError> {
        let expected = self.expected_out();
        let mut first = true;
        // Each flush round yields at least one chunk; the delay is a few chunks at most.
        for _ in 0..64 {
            if self.frames_out >= expected {
                break;
            }
            // rubato treats an empty input channel as inactive, so an empty tail is `None`.
            let input = if first && !self.pending[0].is_empty() {
                Some(&self.pending[..])
            } else {
                None
            };
            first = false;
            let (_, written) = self
                .inner
                .process_partial_into_buffer(input, &mut self.out_buf, None)
                .map_err(|e| crate::MediaError::Unsupported {
                    reason: format!("resampler: {e}"),
                })?;
            let room = (expected - self.frames_out) as usize + self.skip_frames;
            self.deliver(written.min(room), emit)?;
        }
        for p in &mut self.pending {
            p.clear();
        }
        Ok(())
    }

    fn deliver(&mut self, written: usize, emit: &mut Emit<'_>) -> Result<(), crate::MediaError> {
        let skip = self.skip_frames.min(written);
        self.skip_frames -= skip;
        let n = written - skip;
        if n == 0 {
            return Ok(());
        }
        let block: Vec<Vec<f32>> = self
            .out_buf
            .iter()
            .map(|c| c[skip..written].to_vec())
            .collect();
        self.frames_out += n as u64;
        emit(&block, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_length_matches_the_ratio_exactly() {
        for (rate_in, frames) in [
            (48_000u32, 48_000usize),
            (8_000, 12_345),
            (96_000, 1000),
            (192_000, 77_777),
        ] {
            let mut r = Resampler::new(rate_in, 44_100, 2).unwrap();
            let mut total = 0usize;
            let input: Vec<Vec<f32>> = (0..2)
                .map(|_| (0..frames).map(|i| (i as f32 * 0.01).sin() * 0.5).collect())
                .collect();
            let mut emit = |b: &[Vec<f32>], n: usize| {
                assert_eq!(b[0].len(), n);
                total += n;
                Ok(())
            };
            // Feed in uneven pieces, as packets arrive.
            let mut pos = 0;
            while pos < frames {
                let end = (pos + 999).min(frames);
                let piece: Vec<Vec<f32>> = input.iter().map(|c| c[pos..end].to_vec()).collect();
                r.push(&piece, &mut emit).unwrap();
                pos = end;
            }
            r.finish(&mut emit).unwrap();
            let expected = (frames as f64 * 44_100.0 / rate_in as f64).round() as usize;
            assert_eq!(total, expected, "rate {rate_in}");
        }
    }
}
