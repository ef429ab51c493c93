#!/usr/bin/env bash
# The "album drop": many clients asking for one track's metadata at once.
#
# wrk at 64 connections on GET /v1/tracks/{id} (answered from spindle's L1
# cache after the first miss) against nginx serving the same JSON bytes from
# a file, in the same run: the server (spindle or nginx) pinned to core 1, wrk
# to core 0, three alternating rounds, medians and the ratio. Target: spindle
# at least 1.0x nginx's requests/s.
#
# nginx is configured at its best for small files (see
# shared/design/BENCHMARKING.md): one worker on core 1, sendfile on,
# tcp_nopush off, tcp_nodelay on, access_log off, open_file_cache.
#
# Usage: benches/scripts/album_drop_vs_nginx.sh
#   SPINDLE_BIN  spindle binary [target/release/spindle, built if missing]
#   DURATION     wrk duration per round [10s]
#   ROUNDS       alternating rounds [3]
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SPINDLE_BIN=${SPINDLE_BIN:-$ROOT/target/release/spindle}
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=64

for tool in wrk nginx taskset curl; do
    command -v "$tool" >/dev/null || { echo "album_drop: $tool is not installed; skipping" >&2; exit 0; }
done
if [ ! -x "$SPINDLE_BIN" ]; then
    (cd "$ROOT" && cargo build --release -p spindle)
fi

WORK=$(mktemp -d)
SPINDLE_PID=""
NGINX_PID=""
cleanup() {
    [ -n "$SPINDLE_PID" ] && kill "$SPINDLE_PID" 2>/dev/null && wait "$SPINDLE_PID" 2>/dev/null
    [ -n "$NGINX_PID" ] && kill "$NGINX_PID" 2>/dev/null && wait "$NGINX_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

# spindle on core 1, one runtime thread (a current-thread runtime), as nginx
# gets one worker.
taskset -c 1 "$SPINDLE_BIN" serve --listen 127.0.0.1:0 --data-dir "$WORK/data" \
    --worker-threads 1 >"$WORK/spindle.out" 2>"$WORK/spindle.err" &
SPINDLE_PID=$!
for _ in $(seq 100); do
    grep -q "listening on" "$WORK/spindle.out" 2>/dev/null && break
    sleep 0.1
done
SPINDLE_URL=$(sed -n 's/^listening on //p' "$WORK/spindle.out")
[ -n "$SPINDLE_URL" ] || { echo "spindle did not start:" >&2; cat "$WORK/spindle.err" >&2; exit 1; }
CREATOR=$(sed -n 's/^creator = "\(.*\)"$/\1/p' "$WORK/data/tokens.toml")

# One track (a small raw upload; its metadata is what the drop asks for).
head -c 4096 /dev/urandom >"$WORK/audio.bin"
LOCATION=$(curl -sS -o /dev/null -w '%header{location}' \
    -H "Authorization: Bearer $CREATOR" -H 'Content-Type: audio/ogg' \
    --data-binary @"$WORK/audio.bin" \
    "$SPINDLE_URL/v1/tracks?title=Album%20Drop&artist=Big%20Star&album=New%20LP&genre=Pop")
[ -n "$LOCATION" ] || { echo "upload failed" >&2; exit 1; }
TRACK_PATH=$LOCATION
mkdir -p "$WORK/www$(dirname "$TRACK_PATH")"
curl -sS "$SPINDLE_URL$TRACK_PATH" >"$WORK/www$TRACK_PATH"
BYTES=$(wc -c <"$WORK/www$TRACK_PATH")
# nginx's worker runs as an unprivileged user: let it read the JSON.
chmod 755 "$WORK"
chmod -R a+rX "$WORK/www"

NGINX_PORT=$((20000 + RANDOM % 20000))
mkdir -p "$WORK/nginx/logs"
cat >"$WORK/nginx/nginx.conf" <<CONF
daemon off;
worker_processes 1;
worker_cpu_affinity 10;
error_log $WORK/nginx/logs/error.log warn;
pid $WORK/nginx/nginx.pid;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    tcp_nopush off;
    tcp_nodelay on;
    keepalive_requests 1000000;
    open_file_cache max=1000;
    default_type application/json;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        root $WORK/www;
        location / { add_header Cache-Control no-cache; }
    }
}
CONF
taskset -c 1 nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" &
NGINX_PID=$!
NGINX_URL="http://127.0.0.1:$NGINX_PORT"
for _ in $(seq 50); do
    curl -sf -o /dev/null "$NGINX_URL$TRACK_PATH" && break
    sleep 0.1
done
cmp -s <(curl -sS "$NGINX_URL$TRACK_PATH") "$WORK/www$TRACK_PATH" \
    || { echo "nginx does not serve the same bytes" >&2; exit 1; }

run_wrk() {
    taskset -c 0 wrk -t1 -c"$CONNECTIONS" -d"$DURATION" "$1" \
        | awk '/^Requests\/sec:/ { print $2 }'
}
median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

echo "album drop: GET $TRACK_PATH ($BYTES bytes of JSON), $CONNECTIONS connections, $DURATION x $ROUNDS rounds"
# Warm both (spindle's cache, nginx's open file cache and the page cache).
taskset -c 0 wrk -t1 -c"$CONNECTIONS" -d2s "$SPINDLE_URL$TRACK_PATH" >/dev/null
taskset -c 0 wrk -t1 -c"$CONNECTIONS" -d2s "$NGINX_URL$TRACK_PATH" >/dev/null
: >"$WORK/spindle.rps"
: >"$WORK/nginx.rps"
for round in $(seq "$ROUNDS"); do
    s=$(run_wrk "$SPINDLE_URL$TRACK_PATH")
    n=$(run_wrk "$NGINX_URL$TRACK_PATH")
    echo "$s" >>"$WORK/spindle.rps"
    echo "$n" >>"$WORK/nginx.rps"
    echo "round $round: spindle $s req/s, nginx $n req/s"
done
S=$(median <"$WORK/spindle.rps")
N=$(median <"$WORK/nginx.rps")
LOOKUPS=$(curl -sS "$SPINDLE_URL/metrics" | awk '/^spindle_cache_store_lookups_total/ { print $2 }')
echo "median: spindle $S req/s, nginx $N req/s, ratio $(awk -v s="$S" -v n="$N" 'BEGIN { printf "%.2f", s / n }')x (target >= 1.0x); store lookups behind the cache: $LOOKUPS"
