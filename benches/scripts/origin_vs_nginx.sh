#!/usr/bin/env bash
# The origin against nginx, serving the same bytes on loopback (see
# shared/design/BENCHMARKING.md and issue 4's Benchmark section).
#
# Builds spindle in release, uploads a test file to it and writes the same
# file into an nginx document root, then loads both with wrk for 1 KiB,
# 64 KiB and 1 MiB ranges: each server pinned to core 1 (spindle on a
# current-thread runtime, nginx with one worker), wrk on core 0 with one
# thread and 32 connections. Servers alternate run by run, ROUNDS rounds;
# it prints req/s, throughput and p99 latency of both (medians) and the
# ratios spindle/nginx, then each server's CPU time per request (its core's
# busy time, interrupts included, over requests served) and how busy wrk's
# core was: where wrk's core is saturated, req/s measure wrk rather than the
# server, and the time per request is the comparison left. Everything it
# starts is stopped on exit.
#
# Environment: DURATION (wrk seconds, default 10), ROUNDS (default 3),
# RANGE_START_BYTES (first byte of every range, default 100000: not chunk
# aligned, as a seeking player's would be), FILE_BYTES (default 8 MiB).
# Needs: nginx, wrk, curl, taskset (Debian: apt-get install -y nginx wrk curl).
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
RANGE_START_BYTES=${RANGE_START_BYTES:-100000}
FILE_BYTES=${FILE_BYTES:-$((8 << 20))}
SIZES=(1024 65536 1048576)
NAMES=("1 KiB" "64 KiB" "1 MiB")

for tool in nginx wrk curl taskset python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y nginx wrk curl util-linux python3)" >&2; exit 1; }
done
if [ "$(nproc)" -lt 2 ]; then
    echo "warning: fewer than 2 cores; server and load share a core" >&2
fi

echo "building spindle (release)..." >&2
cargo build --release --quiet -p spindle --bin spindle
TARGET_DIR=${CARGO_TARGET_DIR:-target}
SPINDLE="$TARGET_DIR/release/spindle"
[ -x "$SPINDLE" ] || { echo "no binary at $SPINDLE" >&2; exit 1; }

WORK=$(mktemp -d /tmp/spindle-vs-nginx.XXXXXX)
chmod 755 "$WORK"
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

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# The test file: random bytes opening with an Ogg signature.
mkdir -p "$WORK/www"
head -c "$FILE_BYTES" /dev/urandom >"$WORK/www/track.ogg"
printf 'OggS' | dd of="$WORK/www/track.ogg" conv=notrunc status=none
chmod 644 "$WORK/www/track.ogg"

# spindle, on core 1, one runtime thread.
mkdir -p "$WORK/spindle"
RUST_LOG=warn SPINDLE_WORKER_THREADS=1 taskset -c 1 "$SPINDLE" serve \
    --listen 127.0.0.1:0 --data-dir "$WORK/spindle" >"$WORK/spindle.out" 2>"$WORK/spindle.err" &
PIDS+=($!)
for _ in $(seq 1 300); do
    [ -s "$WORK/spindle/serve.addr" ] && break
    sleep 0.1
done
[ -s "$WORK/spindle/serve.addr" ] || { echo "spindle did not start:" >&2; cat "$WORK/spindle.err" >&2; exit 1; }
SPINDLE_ADDR=$(tr -d '\n' <"$WORK/spindle/serve.addr")
TOKEN=$(sed -n 's/^creator = "\(.*\)"$/\1/p' "$WORK/spindle/tokens.toml")
TRACK=$(curl -sf -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: audio/ogg' \
    --data-binary @"$WORK/www/track.ogg" "http://$SPINDLE_ADDR/v1/tracks?title=bench" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
BLOB_URL=$(curl -sf -o /dev/null -w '%{redirect_url}' \
    "http://$SPINDLE_ADDR/v1/tracks/$TRACK/stream?quality=original")
case "$BLOB_URL" in
    http*) ;;
    *) BLOB_URL="http://$SPINDLE_ADDR$BLOB_URL" ;;
esac

# nginx at its best: one worker on core 1, sendfile, no nopush, nodelay,
# no access log, open_file_cache, unlimited keep-alive requests.
NGINX_PORT=$(free_port)
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
master_process on;
user root;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    tcp_nopush off;
    tcp_nodelay on;
    open_file_cache max=1000;
    keepalive_requests 100000000;
    keepalive_timeout 75s;
    types { audio/ogg ogg; }
    default_type application/octet-stream;
    client_body_temp_path $WORK/nginx/body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        root $WORK/www;
    }
}
EOF
taskset -c 1 nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" 2>"$WORK/nginx/stderr" &
PIDS+=($!)
NGINX_URL="http://127.0.0.1:$NGINX_PORT/track.ogg"
for _ in $(seq 1 100); do
    curl -sf -o /dev/null "$NGINX_URL" && break
    sleep 0.1
done
curl -sf -o /dev/null "$NGINX_URL" || { echo "nginx did not start:" >&2; cat "$WORK/nginx/stderr" "$WORK/nginx/error.log" >&2; exit 1; }

# Same bytes from both, for every range; this also warms the page cache.
cat "$WORK/www/track.ogg" >/dev/null
for size in "${SIZES[@]}"; do
    range="bytes=$RANGE_START_BYTES-$((RANGE_START_BYTES + size - 1))"
    curl -sf -H "Range: $range" "$BLOB_URL" -o "$WORK/a"
    curl -sf -H "Range: $range" "$NGINX_URL" -o "$WORK/b"
    cmp -s "$WORK/a" "$WORK/b" || { echo "the servers disagree on $range" >&2; exit 1; }
    [ "$(stat -c %s "$WORK/a")" -eq "$size" ] || { echo "wrong length for $range" >&2; exit 1; }
done
echo "spindle: $BLOB_URL" >&2
echo "nginx:   $NGINX_URL" >&2

# Busy and total jiffies of cores 0 and 1: "busy0 total0 busy1 total1".
core_jiffies() {
    awk '$1 == "cpu0" || $1 == "cpu1" { t = 0; for (i = 2; i <= NF; i++) t += $i
        printf "%d %d ", t - $5 - $6, t } END { print "" }' /proc/stat
}

# One wrk run: prints "req_per_s bytes_per_s p99_ms server_busy client_busy",
# the last two the fraction of the run that core 1 (the server's) and core 0
# (wrk's) were busy, interrupts included: a client core near 1.0 means the
# run measured wrk, not the server.
run_wrk() {
    local url=$1 range=$2 out before after
    before=$(core_jiffies)
    out=$(taskset -c 0 wrk -t1 -c32 -d"${DURATION}s" --latency -H "Range: $range" "$url")
    after=$(core_jiffies)
    if grep -q "Non-2xx" <<<"$out"; then
        echo "wrk saw non-2xx responses from $url:" >&2
        echo "$out" >&2
        exit 1
    fi
    awk -v before="$before" -v after="$after" '
        function bytes(v,  n, u) { n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
            if (u == "KB") n *= 1024; else if (u == "MB") n *= 1048576; else if (u == "GB") n *= 1073741824
            return n }
        function ms(v,  n, u) { n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
            if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
            return n }
        /^Requests\/sec:/ { rps = $2 }
        /^Transfer\/sec:/ { tput = bytes($2) }
        $1 == "99%" { p99 = ms($2) }
        END { split(before, b, " "); split(after, a, " ")
            printf "%s %.0f %.3f %.3f %.3f\n", rps, tput, p99,
                (a[3] - b[3]) / (a[4] - b[4]), (a[1] - b[1]) / (a[2] - b[2]) }
    ' <<<"$out"
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# Warm-up: a short run against each.
for url in "$BLOB_URL" "$NGINX_URL"; do
    taskset -c 0 wrk -t1 -c32 -d2s -H "Range: bytes=0-1023" "$url" >/dev/null
done

RESULTS="$WORK/results"
: >"$RESULTS"
for i in "${!SIZES[@]}"; do
    size=${SIZES[$i]}
    range="bytes=$RANGE_START_BYTES-$((RANGE_START_BYTES + size - 1))"
    for round in $(seq 1 "$ROUNDS"); do
        if [ $((round % 2)) -eq 1 ]; then order="spindle nginx"; else order="nginx spindle"; fi
        for server in $order; do
            if [ "$server" = spindle ]; then url=$BLOB_URL; else url=$NGINX_URL; fi
            read -r rps tput p99 srv cli < <(run_wrk "$url" "$range")
            echo "$size $server $round $rps $tput $p99 $srv $cli" >>"$RESULTS"
            printf '%-7s %-8s round %d: %10.0f req/s %9.1f MB/s p99 %8.3f ms, server core %3.0f%%, wrk core %3.0f%%\n' \
                "${NAMES[$i]}" "$server" "$round" "$rps" "$(awk "BEGIN{print $tput/1e6}")" "$p99" \
                "$(awk "BEGIN{print $srv*100}")" "$(awk "BEGIN{print $cli*100}")" >&2
        done
    done
done

echo
echo "spindle vs nginx, wrk -t1 -c32 -d${DURATION}s, medians of $ROUNDS runs, ranges from byte $RANGE_START_BYTES"
printf '%-7s | %12s %12s %7s | %10s %10s | %10s %10s %7s\n' \
    range "spindle r/s" "nginx r/s" ratio "spin MB/s" "ngx MB/s" "spin p99" "ngx p99" "p99 s/n"
for i in "${!SIZES[@]}"; do
    size=${SIZES[$i]}
    col() { awk -v s="$size" -v srv="$1" -v c="$2" '$1 == s && $2 == srv { print $c }' "$RESULTS" | median; }
    s_rps=$(col spindle 4); n_rps=$(col nginx 4)
    s_tp=$(col spindle 5); n_tp=$(col nginx 5)
    s_p99=$(col spindle 6); n_p99=$(col nginx 6)
    awk -v name="${NAMES[$i]}" -v sr="$s_rps" -v nr="$n_rps" -v st="$s_tp" -v nt="$n_tp" -v sp="$s_p99" -v np="$n_p99" 'BEGIN {
        printf "%-7s | %12.0f %12.0f %6.2fx | %10.1f %10.1f | %8.3fms %8.3fms %6.2fx\n",
            name, sr, nr, sr / nr, st / 1e6, nt / 1e6, sp, np, (np > 0 ? sp / np : 0) }'
done
echo
echo "server cost: core-1 time per request (busy fraction / req/s), medians of the per-run figures"
printf '%-7s | %12s %12s %7s | %13s\n' range "spindle us" "nginx us" ratio "wrk core busy"
for i in "${!SIZES[@]}"; do
    size=${SIZES[$i]}
    cost() { awk -v s="$size" -v srv="$1" '$1 == s && $2 == srv { print $7 * 1e6 / $4 }' "$RESULTS" | median; }
    busy() { awk -v s="$size" -v srv="$1" '$1 == s && $2 == srv { print $8 * 100 }' "$RESULTS" | median; }
    awk -v name="${NAMES[$i]}" -v sc="$(cost spindle)" -v nc="$(cost nginx)" -v sb="$(busy spindle)" -v nb="$(busy nginx)" 'BEGIN {
        note = (sb >= 97 && nb >= 97) ? "  (wrk saturated: req/s measure the client here)" : ""
        printf "%-7s | %12.2f %12.2f %6.2fx | %5.0f%% %5.0f%%%s\n", name, sc, nc, sc / nc, sb, nb, note }'
done
