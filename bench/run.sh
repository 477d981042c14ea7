#!/usr/bin/env bash
# Load benchmark: the same request mix measured three ways on loopback.
#
#   direct  wrk → mock-upstream
#   nginx   wrk → nginx proxy_pass (keepalive upstream) → mock-upstream
#   bursar  wrk → bursar serve (virtual key, scope, limits, usage logging) → mock-upstream
#
# Request mix: POST /v1/chat/completions, model gpt-4o-mini, one short user
# message; once non-streamed ("chat", the main figure) and once streamed
# ("chat-stream", "stream": true).
#
# Usage: bench/run.sh            (needs target/release/{bursar,mock-upstream})
#        BUILD=1 bench/run.sh    (runs `cargo build --release --bins` first)
#
# Knobs (environment):
#   DURATION=10  measured seconds per run        WARMUP=2   warm-up seconds (discarded)
#   CONNS=32     wrk connections                 THREADS=2  wrk threads
#   ROUNDS=3     rounds; paths are interleaved per round, the median is reported
#   VARIANTS="chat chat-stream"                  PATHS="direct nginx bursar"
#   NGINX_WORKERS=auto                           PORT_BASE=18900
#   PERF=1       also record `perf record -g` of bursar during one extra run
#   PERF_VARIANT=chat                            the variant profiled
#   SYSCALLS=1   also count the proxy's (and mock's) syscalls per request with
#                `perf stat` syscall tracepoints, in one extra run per variant and path
#   RESULTS=bench/results/<timestamp>            where raw outputs go
#   BIN=target/release                           where bursar and mock-upstream are
#   BENCH_BURSAR_ENV="VAR=value ..."             extra environment for bursar only, e.g.
#                LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 to try another allocator
#
# Everything binds 127.0.0.1, every run is bounded by DURATION, and every
# process this script starts is stopped on exit (by its pid).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH="$ROOT/bench"
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-32}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
VARIANTS=${VARIANTS:-"chat chat-stream"}
PATHS=${PATHS:-"direct nginx bursar"}
NGINX_WORKERS=${NGINX_WORKERS:-auto}
PORT_BASE=${PORT_BASE:-18900}
PERF=${PERF:-0}
PERF_VARIANT=${PERF_VARIANT:-chat}
SYSCALLS=${SYSCALLS:-0}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=${RESULTS:-"$BENCH/results/$STAMP"}
BIN=${BIN:-"${CARGO_TARGET_DIR:-$ROOT/target}/release"}
ADMIN_KEY="bsra_bench_admin_key_0123456789"
HZ=$(getconf CLK_TCK)

die() { echo "bench: $*" >&2; exit 1; }
log() { echo "bench: $*" >&2; }

# ---------------------------------------------------------------- prerequisites
command -v wrk >/dev/null || die "wrk not found: apt-get update && apt-get install -y wrk"
NGINX=$(command -v nginx || true)
[ -z "$NGINX" ] && [ -x /usr/sbin/nginx ] && NGINX=/usr/sbin/nginx
if [[ " $PATHS " == *" nginx "* ]]; then
  [ -n "$NGINX" ] || die "nginx not found: apt-get update && apt-get install -y nginx (or PATHS=\"direct bursar\")"
fi
command -v curl >/dev/null || die "curl not found"
if [ "${BUILD:-0}" = 1 ]; then
  (cd "$ROOT" && cargo build --release --bins)
fi
[ -x "$BIN/mock-upstream" ] || die "$BIN/mock-upstream missing: cargo build --release --bins"
[ -x "$BIN/bursar" ] || die "$BIN/bursar missing: cargo build --release --bins"

mkdir -p "$RESULTS"
TMP=$(mktemp -d /tmp/bursar-bench.XXXXXX)
chmod 755 "$TMP" # nginx workers run as nobody when started by root
PIDS=()

cleanup() {
  local p
  for p in "${PIDS[@]}"; do
    kill "$p" 2>/dev/null || true
  done
  for p in "${PIDS[@]}"; do
    wait "$p" 2>/dev/null || true
  done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
next_port() {
  local p=$1
  while ! port_free "$p"; do p=$((p + 1)); done
  echo "$p"
}

wait_http() { # url [seconds]
  local i
  for ((i = 0; i < ${2:-30} * 10; i++)); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# utime+stime (clock ticks) of the given pids, summed.
proc_ticks() {
  local t=0 p s
  for p in "$@"; do
    if s=$(cat "/proc/$p/stat" 2>/dev/null); then
      s=${s##*) } # skip "pid (comm) "
      set -- $s
      t=$((t + ${12} + ${13}))
    fi
  done
  echo "$t"
}

# busy and total jiffies of the whole machine.
machine_ticks() {
  local cpu user nice sys idle iowait irq softirq steal rest
  read -r cpu user nice sys idle iowait irq softirq steal rest </proc/stat
  echo "$((user + nice + sys + irq + softirq + steal)) $((user + nice + sys + idle + iowait + irq + softirq + steal))"
}

# ---------------------------------------------------------------- machine facts
{
  echo "date: $(date -u +%FT%TZ)"
  echo "kernel: $(uname -srm)"
  echo "cpus: $(nproc)"
  grep -m1 'model name' /proc/cpuinfo || true
  grep -m1 MemTotal /proc/meminfo || true
  echo "loadavg before: $(cat /proc/loadavg)"
  echo "wrk: $(wrk -v 2>&1 | head -1)"
  [ -n "$NGINX" ] && echo "nginx: $("$NGINX" -v 2>&1)"
  echo "bursar: $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$ROOT" && git diff --quiet HEAD -- src 2>/dev/null || echo ' (+ uncommitted src changes)')"
  echo "binary: $(ls -l --time-style=+%FT%T "$BIN/bursar" | awk '{print $6}')"
  echo "settings: DURATION=$DURATION WARMUP=$WARMUP CONNS=$CONNS THREADS=$THREADS ROUNDS=$ROUNDS NGINX_WORKERS=$NGINX_WORKERS BIN=$BIN BENCH_BURSAR_ENV=${BENCH_BURSAR_ENV:-}"
} >"$RESULTS/machine.txt"

# ---------------------------------------------------------------- servers
MOCK_PORT=$(next_port "$PORT_BASE")
NGX_PORT=$(next_port $((MOCK_PORT + 1)))
BUR_PORT=$(next_port $((NGX_PORT + 1)))

log "mock-upstream on 127.0.0.1:$MOCK_PORT"
"$BIN/mock-upstream" --listen "127.0.0.1:$MOCK_PORT" >"$RESULTS/mock.log" 2>&1 &
MOCK_PID=$!
PIDS+=("$MOCK_PID")
wait_http "http://127.0.0.1:$MOCK_PORT/__mock/health" || die "mock-upstream did not start (see $RESULTS/mock.log)"

NGX_PID=""
if [[ " $PATHS " == *" nginx "* ]]; then
  mkdir -p "$TMP/nginx"
  cat >"$TMP/nginx/nginx.conf" <<EOF
worker_processes $NGINX_WORKERS;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $TMP/nginx/body;
  proxy_temp_path $TMP/nginx/proxy;
  fastcgi_temp_path $TMP/nginx/fastcgi;
  uwsgi_temp_path $TMP/nginx/uwsgi;
  scgi_temp_path $TMP/nginx/scgi;
  upstream mock {
    server 127.0.0.1:$MOCK_PORT;
    keepalive 64;
  }
  server {
    listen 127.0.0.1:$NGX_PORT;
    location / {
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off; # what an SSE (LLM streaming) proxy is configured with
    }
  }
}
EOF
  cp "$TMP/nginx/nginx.conf" "$RESULTS/nginx.conf"
  log "nginx on 127.0.0.1:$NGX_PORT"
  "$NGINX" -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" -g 'daemon off;' >"$RESULTS/nginx.log" 2>&1 &
  NGX_PID=$!
  PIDS+=("$NGX_PID")
  wait_http "http://127.0.0.1:$NGX_PORT/__mock/health" || { cat "$TMP/nginx/error.log" >&2 || true; die "nginx did not start"; }
fi

BUR_PID=""
VKEY=""
if [[ " $PATHS " == *" bursar "* ]]; then
  cat >"$TMP/bursar.toml" <<EOF
listen = "127.0.0.1:$BUR_PORT"
database = "sqlite://$TMP/bench.db"

[providers.openai]
base_url = "http://127.0.0.1:$MOCK_PORT/v1"
api_key = "sk-bench"
EOF
  cp "$TMP/bursar.toml" "$RESULTS/bursar.toml"
  log "bursar on 127.0.0.1:$BUR_PORT"
  # shellcheck disable=SC2086 # BENCH_BURSAR_ENV is a list of VAR=value words
  env -u OPENAI_API_KEY -u ANTHROPIC_API_KEY BURSAR_ADMIN_KEY="$ADMIN_KEY" BURSAR_LOG=warn ${BENCH_BURSAR_ENV:-} \
    "$BIN/bursar" serve --listen "127.0.0.1:$BUR_PORT" --database "sqlite://$TMP/bench.db" --config "$TMP/bursar.toml" \
    >"$RESULTS/bursar.log" 2>&1 &
  BUR_PID=$!
  PIDS+=("$BUR_PID")
  wait_http "http://127.0.0.1:$BUR_PORT/healthz" 60 || { cat "$RESULTS/bursar.log" >&2; die "bursar did not start"; }
  created=$(curl -fsS -X POST "http://127.0.0.1:$BUR_PORT/admin/v1/keys" \
    -H "Authorization: Bearer $ADMIN_KEY" -H 'Content-Type: application/json' \
    -d '{"name":"bench","models":["gpt-4o-mini"],"rpm":100000000,"max_tokens_per_request":4096}') ||
    die "could not create the virtual key"
  VKEY=$(printf '%s' "$created" | grep -o '"key" *: *"bsr_[A-Za-z0-9]*"' | grep -o 'bsr_[A-Za-z0-9]*') ||
    die "no key in the create answer: $created"
  printf '%s\n' "$created" | sed 's/bsr_[A-Za-z0-9]*/bsr_<redacted>/g' >"$RESULTS/key.json"
fi

url_of() {
  case $1 in
    direct) echo "http://127.0.0.1:$MOCK_PORT/v1/chat/completions" ;;
    nginx) echo "http://127.0.0.1:$NGX_PORT/v1/chat/completions" ;;
    bursar) echo "http://127.0.0.1:$BUR_PORT/v1/chat/completions" ;;
  esac
}
key_of() { if [ "$1" = bursar ]; then echo "$VKEY"; else echo "sk-bench"; fi; }
proxy_pids() {
  case $1 in
    direct) echo "" ;;
    nginx) echo "$NGX_PID $(ps -o pid= --ppid "$NGX_PID" | tr '\n' ' ')" ;;
    bursar) echo "$BUR_PID" ;;
  esac
}
body_of() {
  if [ "$1" = chat-stream ]; then
    echo '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello to the benchmark."}],"stream":true}'
  else
    echo '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello to the benchmark."}]}'
  fi
}

# Sanity: each path answers 200 to the exact request (saved for inspection).
for v in $VARIANTS; do
  for p in $PATHS; do
    code=$(curl -sS -o "$RESULTS/sample-$v-$p.txt" -D "$RESULTS/sample-$v-$p.headers" -w '%{http_code}' \
      -X POST "$(url_of "$p")" -H "Authorization: Bearer $(key_of "$p")" -H 'Content-Type: application/json' \
      -d "$(body_of "$v")")
    [ "$code" = 200 ] || { cat "$RESULTS/sample-$v-$p.txt" >&2; die "$p/$v answered HTTP $code"; }
  done
done
sed -i 's/bsr_[A-Za-z0-9]*/bsr_<redacted>/g' "$RESULTS"/sample-* 2>/dev/null || true

# ---------------------------------------------------------------- runs
RUNS="$RESULTS/runs.tsv"
printf 'round\tvariant\tpath\trps\tp50_us\tp90_us\tp99_us\tp999_us\tmax_us\terrors\tnon2xx\tproxy_cpu_us_per_req\tmock_cpu_us_per_req\tmachine_busy_pct\n' >"$RUNS"

# Fail loudly if a server this script started has gone away (someone else's
# `pkill`, a crash, the OOM killer): name it and its exit status.
check_alive() {
  local name pid st
  for name in mock nginx bursar; do
    case $name in mock) pid=$MOCK_PID ;; nginx) pid=$NGX_PID ;; bursar) pid=$BUR_PID ;; esac
    [ -n "$pid" ] || continue
    if ! kill -0 "$pid" 2>/dev/null; then
      st=0
      wait "$pid" 2>/dev/null || st=$?
      die "$name (pid $pid) exited unexpectedly with status $st (143 = SIGTERM, 137 = SIGKILL); see $RESULTS/$name.log"
    fi
  done
}

run_wrk() { # variant path seconds outfile
  local stream=0
  [ "$1" = chat-stream ] && stream=1
  BENCH_KEY=$(key_of "$2") BENCH_STREAM=$stream \
    wrk -t "$THREADS" -c "$CONNS" -d "${3}s" --timeout 5s -s "$BENCH/wrk-chat.lua" "$(url_of "$2")" >"$4" 2>&1 ||
    { check_alive; die "wrk failed on $2/$1 (output: $4)"; }
  check_alive
}

for ((r = 1; r <= ROUNDS; r++)); do
  for v in $VARIANTS; do
    for p in $PATHS; do
      run_wrk "$v" "$p" "$WARMUP" "$TMP/warmup.txt"
      pp=$(proxy_pids "$p")
      p0=$(proc_ticks $pp)
      m0=$(proc_ticks "$MOCK_PID")
      read -r b0 t0 < <(machine_ticks)
      out="$RESULTS/wrk-$v-$p-r$r.txt"
      run_wrk "$v" "$p" "$DURATION" "$out"
      p1=$(proc_ticks $pp)
      m1=$(proc_ticks "$MOCK_PID")
      read -r b1 t1 < <(machine_ticks)
      line=$(grep '^RESULT' "$out" || die "no RESULT in $out")
      get() { printf '%s\n' "$line" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
      n=$(get requests)
      [ "$n" -gt 0 ] || die "$p/$v: no requests completed (see $out)"
      errs=$(($(get connect_err) + $(get read_err) + $(get write_err) + $(get timeout_err)))
      pcpu=$(awk -v d=$((p1 - p0)) -v hz="$HZ" -v n="$n" 'BEGIN{printf "%.1f", d / hz * 1e6 / n}')
      mcpu=$(awk -v d=$((m1 - m0)) -v hz="$HZ" -v n="$n" 'BEGIN{printf "%.1f", d / hz * 1e6 / n}')
      busy=$(awk -v b=$((b1 - b0)) -v t=$((t1 - t0)) 'BEGIN{printf "%.0f", t ? 100 * b / t : 0}')
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$v" "$p" "$(get rps)" "$(get p50_us)" \
        "$(get p90_us)" "$(get p99_us)" "$(get p999_us)" "$(get max_us)" "$errs" "$(get status_err)" "$pcpu" "$mcpu" "$busy" >>"$RUNS"
      log "round $r/$ROUNDS $v $p: $(get rps) req/s, p50 $(get p50_us) us, p99 $(get p99_us) us, errors $errs, non-2xx $(get status_err)"
    done
  done
done

if [ "$PERF" = 1 ] && [ -n "$BUR_PID" ] && command -v perf >/dev/null; then
  log "perf: recording bursar during one $PERF_VARIANT run"
  pd="$RESULTS/perf-bursar-$PERF_VARIANT"
  perf record -F 999 -g -p "$BUR_PID" -o "$pd.data" -- sleep "$DURATION" >/dev/null 2>&1 &
  perf_pid=$!
  run_wrk "$PERF_VARIANT" bursar "$DURATION" "$RESULTS/wrk-$PERF_VARIANT-bursar-perf.txt"
  wait "$perf_pid" || true
  # flat self time by symbol, and by thread
  perf report -i "$pd.data" --no-children --sort dso,symbol -g none --stdio 2>/dev/null |
    grep '%' | cut -c1-200 >"$pd-self.txt" || true
  perf report -i "$pd.data" --no-children --sort comm -g none --stdio 2>/dev/null |
    grep '%' >"$pd-threads.txt" || true
fi

SYS_TSV="$RESULTS/syscalls.tsv"
if [ "$SYSCALLS" = 1 ] && command -v perf >/dev/null; then
  events="syscalls:sys_enter_read,syscalls:sys_enter_recvfrom,syscalls:sys_enter_readv,syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_sendto,syscalls:sys_enter_sendmsg,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_epoll_pwait,syscalls:sys_enter_epoll_ctl,syscalls:sys_enter_futex"
  printf 'variant\tpath\tprocess\trequests\treads\twrites\tepoll\tfutex\n' >"$SYS_TSV"
  for v in $VARIANTS; do
    for p in $PATHS; do
      for who in proxy mock; do
        if [ "$who" = proxy ]; then pids=$(proxy_pids "$p"); else pids=$MOCK_PID; fi
        [ -n "${pids// /}" ] || continue
        f="$RESULTS/syscalls-$v-$p-$who.csv"
        perf stat -x, -e "$events" -p "$(echo $pids | tr ' ' ',')" -o "$f" -- sleep "$DURATION" >/dev/null 2>&1 &
        sp=$!
        run_wrk "$v" "$p" "$DURATION" "$f.wrk"
        wait "$sp" || true
        n=$(sed -n 's/.*requests=\([0-9]*\).*/\1/p' "$f.wrk")
        awk -F, -v v="$v" -v p="$p" -v w="$who" -v n="$n" '
          $3 ~ /sys_enter_(read|recvfrom|readv)$/ {r += $1}
          $3 ~ /sys_enter_(write|writev|sendto|sendmsg)$/ {wr += $1}
          $3 ~ /sys_enter_epoll/ {e += $1}
          $3 ~ /sys_enter_futex$/ {fx += $1}
          END {if (n > 0) printf "%s\t%s\t%s\t%d\t%.2f\t%.2f\t%.2f\t%.2f\n", v, p, w, n, r/n, wr/n, e/n, fx/n}' "$f" >>"$SYS_TSV"
      done
    done
  done
fi

echo "loadavg after: $(cat /proc/loadavg)" >>"$RESULTS/machine.txt"
if [ -n "$BUR_PID" ]; then
  rows=$(curl -fsS "http://127.0.0.1:$BUR_PORT/admin/v1/usage?group_by=model" -H "Authorization: Bearer $ADMIN_KEY" || true)
  echo "bursar usage after the runs (group_by=model): $rows" >>"$RESULTS/machine.txt"
fi

# ---------------------------------------------------------------- summary
median() { # variant path column-name
  local col
  col=$(head -1 "$RUNS" | tr '\t' '\n' | grep -nx "$3" | cut -d: -f1)
  awk -F'\t' -v v="$1" -v p="$2" -v c="$col" 'NR > 1 && $2 == v && $3 == p {print $c}' "$RUNS" |
    sort -g | awk '{a[NR] = $1} END {if (NR == 0) print 0; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2}'
}
sumcol() { # variant path column-name
  local col
  col=$(head -1 "$RUNS" | tr '\t' '\n' | grep -nx "$3" | cut -d: -f1)
  awk -F'\t' -v v="$1" -v p="$2" -v c="$col" 'NR > 1 && $2 == v && $3 == p {s += $c} END {print s + 0}' "$RUNS"
}

{
  echo "bursar load benchmark — $STAMP"
  echo "$(nproc) CPUs shared by wrk, the proxy and the mock; $CONNS connections, $THREADS wrk threads, ${DURATION}s per run after ${WARMUP}s warm-up, median of $ROUNDS rounds"
  echo
  printf '%-12s %-7s %10s %9s %9s %9s %9s %11s %11s %7s %7s\n' variant path "req/s" "p50 ms" "p90 ms" "p99 ms" "vs direct" "proxy us/rq" "mock us/rq" errors non2xx
  for v in $VARIANTS; do
    drps=$(median "$v" direct rps)
    for p in $PATHS; do
      rps=$(median "$v" "$p" rps)
      awk -v v="$v" -v p="$p" -v rps="$rps" -v d="$drps" -v p50="$(median "$v" "$p" p50_us)" -v p90="$(median "$v" "$p" p90_us)" \
        -v p99="$(median "$v" "$p" p99_us)" -v pc="$(median "$v" "$p" proxy_cpu_us_per_req)" -v mc="$(median "$v" "$p" mock_cpu_us_per_req)" \
        -v e="$(sumcol "$v" "$p" errors)" -v s="$(sumcol "$v" "$p" non2xx)" \
        'BEGIN {printf "%-12s %-7s %10.0f %9.2f %9.2f %9.2f %9s %11s %11s %7d %7d\n", v, p, rps, p50/1000, p90/1000, p99/1000, (d + 0 > 0 ? sprintf("%.1f%%", 100*rps/d) : "-"), (p == "direct" ? "-" : pc), mc, e, s}'
    done
  done
  echo
  for v in $VARIANTS; do
    [[ " $PATHS " == *" bursar "* ]] || continue
    b=$(median "$v" bursar rps)
    line="$v: bursar throughput = $(awk -v b="$b" -v d="$(median "$v" direct rps)" 'BEGIN{if (d + 0 > 0) printf "%.1f%%", 100*b/d; else printf "-"}') of direct"
    if [[ " $PATHS " == *" nginx "* ]]; then
      line+=$(awk -v b="$b" -v n="$(median "$v" nginx rps)" \
        -v b50="$(median "$v" bursar p50_us)" -v n50="$(median "$v" nginx p50_us)" \
        -v b99="$(median "$v" bursar p99_us)" -v n99="$(median "$v" nginx p99_us)" \
        -v bc="$(median "$v" bursar proxy_cpu_us_per_req)" -v nc="$(median "$v" nginx proxy_cpu_us_per_req)" \
        'BEGIN{printf ", %.1f%% of nginx; added latency vs nginx: p50 %+.2f ms, p99 %+.2f ms; proxy CPU per request %.0f us vs nginx %.0f us (%.1fx)", (n + 0 > 0 ? 100*b/n : 0), (b50-n50)/1000, (b99-n99)/1000, bc, nc, (nc + 0 > 0 ? bc/nc : 0)}')
    fi
    echo "$line"
  done
  echo
  if [ -s "$SYS_TSV" ]; then
    echo "syscalls per request (one extra run each; reads = read/recvfrom/readv, writes = write/writev/sendto/sendmsg):"
    column -t "$SYS_TSV"
    echo
  fi
  echo "raw: $RESULTS (runs.tsv, wrk-*.txt, machine.txt)"
} | tee "$RESULTS/summary.txt"
