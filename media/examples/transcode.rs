//! Transcodes one file into the three tiers: `transcode INPUT OUT_DIR [--threads N]`.
//! Writes OUT_DIR/{low,normal,high}.ogg (and cover.* when the file has one) and prints
//! the report. Used by benches/scripts/transcode_vs_ffmpeg.sh.

use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use spindle_media::{transcode, Limits, TierSinks};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut positional = Vec::new();
    let mut limits = Limits::default();
    while let Some(a) = args.next() {
        if a == "--threads" {
            limits.encoder_threads = args.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        } else {
            positional.push(a);
        }
    }
    let [input, out_dir] = positional.as_slice() else {
        eprintln!("usage: transcode INPUT OUT_DIR [--threads N]");
        return ExitCode::from(2);
    };
    match run(input, &PathBuf::from(out_dir), &limits) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(
    input: &str,
    out_dir: &std::path::Path,
    limits: &Limits,
) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(out_dir)?;
    let source = File::open(input)?;
    let len = source.metadata()?.len();
    let mut low = BufWriter::new(File::create(out_dir.join("low.ogg"))?);
    let mut normal = BufWriter::new(File::create(out_dir.join("normal.ogg"))?);
    let mut high = BufWriter::new(File::create(out_dir.join("high.ogg"))?);
    let started = Instant::now();
    let sinks = TierSinks {
        low: &mut low,
        normal: &mut normal,
        high: &mut high,
    };
    let result = transcode(source, Some(len), Some(input), sinks, limits);
    let elapsed = started.elapsed();
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            let class = if e.is_permanent() {
                "permanent"
            } else {
                "transient"
            };
            return Err(format!("{e} ({class})").into());
        }
    };
    println!(
        "input: {} {} Hz, {} ch -> {} ch",
        report.stream.codec, report.stream.sample_rate, report.stream.channels, report.channels_out
    );
    println!(
        "duration_ms: {} (frames in {}, out {})",
        report.duration_ms, report.frames_in, report.frames_out
    );
    println!("tags: {:?}", report.tags);
    if let Some(c) = &report.cover {
        println!(
            "cover: {} {} bytes (front: {})",
            c.mime,
            c.bytes.len(),
            c.is_front
        );
    }
    println!("loudness: {:?}", report.loudness);
    for t in &report.tiers {
        println!(
            "tier {}: target {} kbps, {} bytes, avg {:.1} kbps",
            t.tier.name(),
            t.bitrate_target_kbps,
            t.bytes_written,
            t.avg_bitrate_kbps
        );
    }
    let secs = elapsed.as_secs_f64();
    println!(
        "elapsed_s: {secs:.3} ({:.1}x real time)",
        report.duration_ms as f64 / 1000.0 / secs
    );
    Ok(())
}
