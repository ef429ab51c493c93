//! EBU R128 / ITU-R BS.1770 loudness of the PCM the tiers are encoded from, and the gain
//! that brings the track to the -14 LUFS playback target without clipping.
//!
//! Invariant: measured on the 44.1 kHz output PCM (what a listener hears), in the
//! decoder thread, so it costs one pass over data already in cache.

use ebur128::{EbuR128, Mode};

/// The normalisation target (Spotify's default).
pub const TARGET_LUFS: f64 = -14.0;
/// The gain never pushes the true peak above this.
pub const TRUE_PEAK_CEILING_DBTP: f64 = -1.0;

/// Loudness of a track, for players to apply at playback.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Loudness {
    /// Integrated loudness; `None` for silence or audio shorter than one 400 ms gate block.
    pub integrated_lufs: Option<f64>,
    /// True peak (4x oversampled); `None` for digital silence.
    pub true_peak_dbtp: Option<f64>,
    /// Gain to reach -14 LUFS, limited so the true peak stays at or below -1 dBTP;
    /// 0 when the loudness is unknown.
    pub gain_db: f64,
}

pub(crate) struct LoudnessMeter {
    meter: EbuR128,
    channels: usize,
}

impl LoudnessMeter {
    pub(crate) fn new(channels: usize, rate: u32) -> Result<LoudnessMeter, String> {
        let meter = EbuR128::new(channels as u32, rate, Mode::I | Mode::TRUE_PEAK)
            .map_err(|e| e.to_string())?;
        Ok(LoudnessMeter { meter, channels })
    }

    pub(crate) fn add(&mut self, planes: &[Vec<f32>]) -> Result<(), String> {
        let refs: Vec<&[f32]> = planes.iter().map(Vec::as_slice).collect();
        self.meter
            .add_frames_planar_f32(&refs)
            .map_err(|e| e.to_string())
    }

    pub(crate) fn finish(&self) -> Loudness {
        let lufs = self.meter.loudness_global().ok().filter(|l| l.is_finite());
        let peak = (0..self.channels)
            .filter_map(|c| self.meter.true_peak(c as u32).ok())
            .fold(0.0f64, f64::max);
        let peak_dbtp = (peak > 0.0).then(|| 20.0 * peak.log10());
        Loudness {
            integrated_lufs: lufs,
            true_peak_dbtp: peak_dbtp,
            gain_db: gain_for(lufs, peak_dbtp),
        }
    }
}

fn gain_for(lufs: Option<f64>, peak_dbtp: Option<f64>) -> f64 {
    let Some(lufs) = lufs else { return 0.0 };
    let wanted = TARGET_LUFS - lufs;
    match peak_dbtp {
        Some(p) => wanted.min(TRUE_PEAK_CEILING_DBTP - p),
        None => wanted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gain_is_limited_by_the_true_peak() {
        // Quiet and peaky: -30 LUFS would want +16 dB, but a -3 dBTP peak allows only +2.
        assert!((gain_for(Some(-30.0), Some(-3.0)) - 2.0).abs() < 1e-9);
        // Loud: -8 LUFS wants -6 dB, and turning down never clips.
        assert!((gain_for(Some(-8.0), Some(0.0)) + 6.0).abs() < 1e-9);
        assert_eq!(gain_for(None, None), 0.0);
    }

    #[test]
    fn a_full_scale_sine_measures_as_expected() {
        // A 997 Hz sine at full scale in both channels reads about -0.0 dBTP and, by
        // BS.1770's definition, -3.01 + 3.01 (two channels) = 0 LUFS... minus the K-weighting
        // at 1 kHz (~+0.7 dB); check loosely.
        let rate = 44_100u32;
        let mut m = LoudnessMeter::new(2, rate).unwrap();
        let n = rate as usize * 3;
        let s: Vec<f32> = (0..n)
            .map(|i| (i as f64 * 2.0 * std::f64::consts::PI * 997.0 / rate as f64).sin() as f32)
            .collect();
        m.add(&[s.clone(), s]).unwrap();
        let l = m.finish();
        let lufs = l.integrated_lufs.unwrap();
        assert!((-1.0..=1.5).contains(&lufs), "{lufs}");
        let tp = l.true_peak_dbtp.unwrap();
        assert!((-0.5..=0.5).contains(&tp), "{tp}");
        assert!(l.gain_db <= -1.0 - tp + 1e-9);
    }
}
