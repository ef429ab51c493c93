#!/usr/bin/env bash
# Transcode one file into the three Ogg Vorbis tiers (96/160/320 kbps VBR, 44.1 kHz)
# with spindle and with ffmpeg, in the same run, and print times, ratios, speed as
# multiples of real time and peak memory.
#
#   benches/scripts/transcode_vs_ffmpeg.sh [INPUT] [RUNS]
#
# INPUT defaults to ../shared/corpus/good/02-elvish-theme.mp3 (205 s). Each case runs
# RUNS times (default 3) and the fastest run is reported (the machine is shared and
# noisy; the minimum is the least disturbed measurement).
#
# ffmpeg: ONE command with three outputs (one decode, three libvorbis encodes, as spindle
# does), `-threads 1` on the input and on every output, not pinned (its usual setting).
# spindle: the release build of media/examples/transcode.rs,
#   - one core:  `taskset -c 0`, one encoder thread (the tiers encoded one after another);
#   - two cores: `taskset -c 0,1`, three encoder threads plus the decoder thread.
# Targets (issue 5): spindle >= 1.5x faster than ffmpeg on one core, >= 2.5x on two.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
INPUT="${1:-$ROOT/../shared/corpus/good/02-elvish-theme.mp3}"
RUNS="${2:-3}"
[ -f "$INPUT" ] || { echo "input not found: $INPUT" >&2; exit 1; }
for tool in ffmpeg ffprobe taskset /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
(cd "$ROOT" && cargo build --quiet --release -p spindle-media --example transcode)
BIN="$TARGET_DIR/release/examples/transcode"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
DURATION_S="$(ffprobe -v error -show_entries format=duration -of csv=p=0 "$INPUT")"

# best_of NAME CMD...: runs CMD RUNS times under /usr/bin/time; sets BEST_S, PEAK_KB and
# CPU_S to the fastest run's wall time, peak RSS and CPU time (user + system). CPU time
# is printed too because it barely moves when other work loads the machine.
best_of() {
  local name="$1"; shift
  BEST_S=""; PEAK_KB=""; CPU_S=""
  for i in $(seq 1 "$RUNS"); do
    /usr/bin/time -f "%e %M %U %S" -o "$WORK/time" "$@" >"$WORK/out.log" 2>&1 || { cat "$WORK/out.log" >&2; exit 1; }
    read -r secs kb user sys <"$WORK/time"
    cpu="$(awk -v u="$user" -v s="$sys" 'BEGIN{printf "%.2f", u+s}')"
    echo "  $name run $i: ${secs} s wall, ${cpu} s cpu, ${kb} KB peak" >&2
    if [ -z "$BEST_S" ] || awk -v a="$secs" -v b="$BEST_S" 'BEGIN{exit !(a<b)}'; then
      BEST_S="$secs"; PEAK_KB="$kb"; CPU_S="$cpu"
    fi
  done
}

echo "input: $INPUT (${DURATION_S} s), runs per case: $RUNS, cores: $(nproc), load: $(cut -d' ' -f1-3 /proc/loadavg)"

best_of "ffmpeg -threads 1" ffmpeg -v error -y -threads 1 -i "$INPUT" -map 0:a \
  -threads 1 -c:a libvorbis -b:a 96k -ar 44100 "$WORK/ff-low.ogg" -map 0:a \
  -threads 1 -c:a libvorbis -b:a 160k -ar 44100 "$WORK/ff-normal.ogg" -map 0:a \
  -threads 1 -c:a libvorbis -b:a 320k -ar 44100 "$WORK/ff-high.ogg"
FF_S="$BEST_S"; FF_KB="$PEAK_KB"; FF_CPU="$CPU_S"

best_of "spindle 1 core" taskset -c 0 "$BIN" "$INPUT" "$WORK/sp1" --threads 1
SP1_S="$BEST_S"; SP1_KB="$PEAK_KB"; SP1_CPU="$CPU_S"

best_of "spindle 2 cores" taskset -c 0,1 "$BIN" "$INPUT" "$WORK/sp2" --threads 3
SP2_S="$BEST_S"; SP2_KB="$PEAK_KB"; SP2_CPU="$CPU_S"

# The tiers must be valid to ffmpeg, and bitrates comparable.
for tier in low normal high; do
  err="$(ffmpeg -v error -i "$WORK/sp2/$tier.ogg" -f null - 2>&1 || true)"
  [ -z "$err" ] || { echo "ffmpeg rejects spindle's $tier tier: $err" >&2; exit 1; }
done
kbps() { awk -v b="$(stat -c %s "$1")" -v d="$DURATION_S" 'BEGIN{printf "%.0f", b*8/d/1000}'; }

echo
printf '%-20s %8s %10s %10s %8s %12s %8s\n' "case" "wall_s" "x_realtime" "vs_ffmpeg" "cpu_s" "cpu_vs_ff" "peak_MB"
row() {
  awk -v n="$1" -v t="$2" -v kb="$3" -v c="$4" -v d="$DURATION_S" -v ff="$FF_S" -v ffc="$FF_CPU" \
    'BEGIN{printf "%-20s %8.2f %10.1f %9.2fx %8.2f %11.2fx %8.1f\n", n, t, d/t, ff/t, c, ffc/c, kb/1024}'
}
row "ffmpeg -threads 1" "$FF_S" "$FF_KB" "$FF_CPU"
row "spindle, 1 core" "$SP1_S" "$SP1_KB" "$SP1_CPU"
row "spindle, 2 cores" "$SP2_S" "$SP2_KB" "$SP2_CPU"
echo
echo "avg bitrate kbps (low/normal/high): ffmpeg $(kbps "$WORK/ff-low.ogg")/$(kbps "$WORK/ff-normal.ogg")/$(kbps "$WORK/ff-high.ogg")," \
  "spindle $(kbps "$WORK/sp2/low.ogg")/$(kbps "$WORK/sp2/normal.ogg")/$(kbps "$WORK/sp2/high.ogg")"
awk -v ff="$FF_S" -v a="$SP1_S" -v b="$SP2_S" 'BEGIN{
  printf "target 1 core >= 1.5x: %s (%.2fx); target 2 cores >= 2.5x: %s (%.2fx)\n",
    (ff/a >= 1.5 ? "met" : "NOT met"), ff/a, (ff/b >= 2.5 ? "met" : "NOT met"), ff/b }'
