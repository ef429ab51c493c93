#!/usr/bin/env bash
# HTTP ingestion of plays: `POST /v1/plays` with batches of 100 events,
# unique per request, against a release spindle (see issue 7's Benchmark
# section; target at least 100 000 events/s).
#
# Builds spindle in release, starts it pinned to core 1 (one runtime
# thread; the charts aggregator and the blocking pool share that core),
# uploads a few tracks, then loads it with wrk pinned to core 0, whose Lua
# script (written below) makes every request a fresh batch of 100 events
# (unique listener ids, so nothing is deduplicated away). ROUNDS runs of
# DURATION seconds; prints requests/s, events/s and p99 latency of each and
# the median, then checks from /metrics that every event sent was accepted
# and that the aggregator applied them (its lag).
#
# Environment: DURATION (default 10), ROUNDS (default 3), CONNECTIONS
# (default 32), BATCH (events per request, default 100).
# Needs: wrk, curl, taskset, python3.
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-32}
BATCH=${BATCH:-100}

for tool in wrk curl taskset python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y wrk curl util-linux python3)" >&2; exit 1; }
done

echo "building spindle (release)..." >&2
cargo build --release --quiet -p spindle --bin spindle
TARGET_DIR=${CARGO_TARGET_DIR:-target}
SPINDLE="$TARGET_DIR/release/spindle"
[ -x "$SPINDLE" ] || { echo "no binary at $SPINDLE" >&2; exit 1; }

WORK=$(mktemp -d /tmp/spindle-plays.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

mkdir -p "$WORK/spindle"
RUST_LOG=warn SPINDLE_WORKER_THREADS=1 taskset -c 1 "$SPINDLE" serve \
    --listen 127.0.0.1:0 --data-dir "$WORK/spindle" >"$WORK/spindle.out" 2>"$WORK/spindle.err" &
PIDS+=($!)
for _ in $(seq 1 300); do
    [ -s "$WORK/spindle/serve.addr" ] && break
    sleep 0.1
done
[ -s "$WORK/spindle/serve.addr" ] || { echo "spindle did not start:" >&2; cat "$WORK/spindle.err" >&2; exit 1; }
ADDR=$(tr -d '\n' <"$WORK/spindle/serve.addr")
TOKEN=$(sed -n 's/^creator = "\(.*\)"$/\1/p' "$WORK/spindle/tokens.toml")

# A few tracks (small Ogg-signed files: accepted as uploads; whether they
# transcode does not matter to plays).
head -c 65536 /dev/urandom >"$WORK/track.ogg"
printf 'OggS' | dd of="$WORK/track.ogg" conv=notrunc status=none
TRACKS=()
for genre in Rock Pop Jazz Folk; do
    id=$(curl -sf -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: audio/ogg' \
        --data-binary @"$WORK/track.ogg" "http://$ADDR/v1/tracks?title=bench-$genre&genre=$genre" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
    TRACKS+=("\"$id\"")
done
TRACK_LIST=$(IFS=,; echo "${TRACKS[*]}")

cat >"$WORK/plays.lua" <<EOF
-- Every request: a fresh batch of $BATCH events with unique listener ids.
local tracks = {$TRACK_LIST}
local counter = 0
local thread_id = 0
local threads = {}
function setup(thread)
    thread:set("thread_id", #threads + 1)
    table.insert(threads, thread)
end
function init(args)
    thread_id = tonumber(wrk.thread:get("thread_id")) or 0
end
function request()
    counter = counter + 1
    local now_ms = os.time() * 1000
    local parts = {}
    for i = 1, $BATCH do
        parts[i] = string.format(
            '{"listener_id":"w%d-%d-%d","track_id":"%s","ms_played":%d,"started_at":%d}',
            thread_id, counter, i, tracks[(counter + i) % #tracks + 1],
            (i % 4 == 0) and 12000 or 65000, now_ms - i * 1000)
    end
    return wrk.format("POST", "/v1/plays",
        {["Content-Type"] = "application/json"},
        "[" .. table.concat(parts, ",") .. "]")
end
EOF

# The first round also warms the server up; all rounds count.
metric() {
    curl -sf "http://$ADDR/metrics" | sed -n "s/^$1 \([0-9.e+]*\)$/\1/p"
}
RESULTS=()
TOTAL_REQUESTS=0
for round in $(seq 1 "$ROUNDS"); do
    out=$(taskset -c 0 wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency \
        -s "$WORK/plays.lua" "http://$ADDR/v1/plays")
    if echo "$out" | grep -q "Non-2xx"; then
        echo "$out" >&2
        echo "non-2xx answers in round $round" >&2
        exit 1
    fi
    rps=$(echo "$out" | sed -n 's/^Requests\/sec: *\([0-9.]*\)/\1/p')
    reqs=$(echo "$out" | sed -n 's/^ *\([0-9]*\) requests in.*/\1/p')
    p99=$(echo "$out" | sed -n 's/^ *99% *\(.*\)$/\1/p')
    TOTAL_REQUESTS=$((TOTAL_REQUESTS + reqs))
    eps=$(python3 -c "print(round($rps * $BATCH))")
    echo "round $round: $rps req/s, $eps events/s, p99 $p99" >&2
    RESULTS+=("$eps")
done
MEDIAN=$(printf '%s\n' "${RESULTS[@]}" | sort -n | sed -n "$(( (ROUNDS + 1) / 2 ))p")
echo "median: $MEDIAN events/s with batches of $BATCH ($CONNECTIONS connections; target >= 100000)"

# Every completed request's events were accepted, and the aggregator
# caught up with them (wrk may leave a few requests in flight at the end,
# so the server can hold slightly more than it counted).
SENT=$((TOTAL_REQUESTS * BATCH))
applied=0
lag=unknown
for _ in $(seq 1 100); do
    lag=$(metric spindle_charts_feed_lag_lsns)
    applied=$(metric spindle_charts_events_applied_total)
    [ "${applied%.*}" -ge "$SENT" ] && break
    sleep 0.2
done
accepted=$(metric spindle_plays_accepted_total)
echo "sent $SENT events (completed requests), accepted $accepted, aggregated $applied, feed lag $lag LSNs"
[ "${accepted%.*}" -ge "$SENT" ] || { echo "fewer events accepted than sent" >&2; exit 1; }
curl -sf "http://$ADDR/v1/charts/top?window=day&limit=3" | python3 -c 'import json,sys; c=json.load(sys.stdin); print("chart computed at", c["computed_at"], [(e["title"], e["streams"]) for e in c["entries"]])'
