#!/bin/bash
# Written by opskit for each deploy and rollback; run by systemd-run (unit opskit-<app>-activate)
# so that it finishes even if the operator's connection dies. Parameters: the file in $1.
set -u
. "$1"
exec >"$STATE/activate.log" 2>&1
T0=$(date +%s%N)

say() { echo "$(date -u +%H:%M:%S.%3N) $*"; }
secs() { awk -v a="$1" -v b="$(date +%s%N)" 'BEGIN { printf "%.3f", (b - a) / 1e9 }'; }
js() {  # a JSON string
  local s=${1//\\/\\\\}; s=${s//\"/\\\"}; s=${s//$'\n'/\\n}; s=${s//$'\r'/\\r}; s=${s//$'\t'/\\t}
  printf '"%s"' "$(printf '%s' "$s" | tr -d '\000-\037')"
}
umask 077  # PM2's dump files hold the app's environment (secrets): its owner's only
# PM2's CLI runs under the hosts' node (app_node_source), like the daemon the systemd unit starts.
PATH="${NODE_BIN:-/usr/bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"; export PATH
pm2() { timeout 120 runuser -u "$APP_USER" -- env HOME="$APP_HOME" PM2_HOME="$PM2_HOME" PATH="$PATH" "$PM2_BIN" "$@"; }
private_dump() { chmod -f go-rwx "$PM2_HOME" "$PM2_HOME"/dump.pm2* 2>/dev/null || true; }
switch() {  # switch RELEASE: atomically point current at it
  ln -sfn "releases/$1" "$BASE/current.opskit-new" && mv -Tf "$BASE/current.opskit-new" "$BASE/current"
}
reload() {
  systemctl is-active -q "$PM2_SERVICE" || systemctl start "$PM2_SERVICE" || return 1
  pm2 startOrReload "$ECOSYSTEM" --update-env >/dev/null || { say "pm2 startOrReload failed"; return 1; }
}
runs_from() {  # every PM2 process of the app has its cwd in the release
  local want pids p
  want=$(readlink -f "$BASE/releases/$1")
  pids=$(pm2 pid "$APP" 2>/dev/null) || return 1
  [ -n "$pids" ] || return 1
  for p in $pids; do
    [ "$p" != 0 ] && [ "$(readlink -f "/proc/$p/cwd" 2>/dev/null)" = "$want" ] || return 1
  done
}
gate() {  # gate RELEASE URL [strict]: healthy SUCCESSES times in a row, served from RELEASE, in TIMEOUT
  # strict (the candidate, which takes no traffic): a definite answer fails at once (an HTTP status
  # other than 200, a wrong body, the process gone); only "not listening yet" waits for TIMEOUT.
  local rel=$1 url=$2 strict=${3:-} start ok=0 out code body limit rc
  start=$(date +%s%N); limit=$(awk -v t="$HEALTH_TIMEOUT" 'BEGIN{printf "%d", t*1000}')  # ms
  GATE_DETAIL="no answer yet"
  while :; do
    out=$(curl -sS -m 2 -w '\n%{http_code}' "$url" 2>&1); rc=$?; code=${out##*$'\n'}; body=${out%$'\n'*}
    if [ "$code" = 200 ] && { [ -z "$HEALTH_MATCH" ] || grep -Eq -- "$HEALTH_MATCH" <<<"$body"; }; then
      ok=$((ok + 1))
      if [ "$ok" -ge "$HEALTH_SUCCESSES" ]; then
        if [ -n "$strict" ] || runs_from "$rel"; then GATE_SECONDS=$(secs "$start"); return 0; fi
        GATE_DETAIL="healthy, but not every PM2 process of $APP runs from $rel"; ok=0
      fi
    else
      ok=0; GATE_DETAIL="HTTP $code: $(printf '%s' "$body" | tr '\n' ' ' | cut -c1-200 | sed 's/ *$//')"
      if [ -n "$strict" ]; then
        if [ "$code" = 200 ]; then
          GATE_DETAIL="HTTP 200 but the body does not match $HEALTH_MATCH: $(printf '%s' "$body" | tr '\n' ' ' | cut -c1-200)"
          GATE_SECONDS=$(secs "$start"); return 1
        elif [ "$code" != 000 ]; then GATE_SECONDS=$(secs "$start"); return 1
        elif ! candidate_runs; then
          GATE_DETAIL="the release's process exited (curl exit $rc: $(printf '%s' "$body" | tr '\n' ' ' | cut -c1-150))"
          GATE_SECONDS=$(secs "$start"); return 1
        fi
        GATE_DETAIL="not listening yet: $(printf '%s' "$body" | tr '\n' ' ' | cut -c1-150)"
      fi
    fi
    if [ $(( ($(date +%s%N) - start) / 1000000 )) -ge "$limit" ]; then GATE_SECONDS=$(secs "$start"); return 1; fi
    sleep "$HEALTH_INTERVAL"
  done
}
candidate_runs() {  # the candidate's process is still the one that started (no crash, no restart)
  if [ -z "${CANDIDATE_PID:-}" ]; then  # none when it started: maybe it is still launching
    CANDIDATE_PID=$(pm2 pid "$CANDIDATE" 2>/dev/null | head -n1)
    [ -n "$CANDIDATE_PID" ] && [ "$CANDIDATE_PID" != 0 ] || { CANDIDATE_PID=""; return 1; }
  fi
  kill -0 "$CANDIDATE_PID" 2>/dev/null
}
candidate_stop() { pm2 delete "$CANDIDATE" >/dev/null 2>&1 || true; }
candidate() {  # candidate RELEASE: start it beside the live app on the spare port and gate it there
  candidate_stop
  if ! timeout 120 runuser -u "$APP_USER" -- env HOME="$APP_HOME" PM2_HOME="$PM2_HOME" PATH="$PATH" \
      OPSKIT_CANDIDATE="$BASE/releases/$1" "$PM2_BIN" start "$ECOSYSTEM" >/dev/null; then
    GATE_DETAIL="pm2 could not start $1 as $CANDIDATE"; return 1
  fi
  CANDIDATE_PID=$(pm2 pid "$CANDIDATE" 2>/dev/null | head -n1)
  [ -n "$CANDIDATE_PID" ] && [ "$CANDIDATE_PID" != 0 ] || CANDIDATE_PID=""
  say "started $1 as $CANDIDATE (pid ${CANDIDATE_PID:-?}); health gate on $CANDIDATE_URL"
  gate "$1" "$CANDIDATE_URL" strict
}
journal() {  # journal RESULT DETAIL
  printf '{"time":%s,"action":%s,"operator":%s,"ref":%s,"sha":%s,"release":%s,"from":%s,"result":%s,"detail":%s,"seconds":%s,"message":%s}\n' \
    "$(js "$(date -u +%Y-%m-%dT%H:%M:%SZ)")" "$(js "$ACTION")" "$(js "$OPERATOR")" "$(js "$REF")" \
    "$(js "$SHA")" "$(js "$TARGET")" "$(js "$PREV")" "$(js "$1")" "$(js "$2")" "$(secs "$T0")" \
    "$(js "$MESSAGE")" >> "$STATE/journal.jsonl"
}
prune() {  # the releases the operator computed (keep the newest app_keep_releases)
  local r
  for r in $PRUNE; do
    if [ "$r" != "$TARGET" ] && [ "$r" != "$PREV" ] && [ -d "$BASE/releases/$r" ]; then
      rm -rf -- "${BASE:?}/releases/$r" && say "pruned $r"
    fi
  done
}
finish() {  # finish RESULT DETAIL RESTORED
  journal "$1" "$2"
  printf '{"result":%s,"target":%s,"previous":%s,"detail":%s,"restored":%s,"seconds":%s,"gate_seconds":%s}\n' \
    "$(js "$1")" "$(js "$TARGET")" "$(js "$PREV")" "$(js "$2")" "$(js "$3")" "$(secs "$T0")" \
    "${GATE_SECONDS:-0}" > "$STATE/activate.result.new"
  mv -f "$STATE/activate.result.new" "$STATE/activate.result"
  say "done: $1"
  exit 0
}

PREV=$(readlink "$BASE/current" 2>/dev/null || true); PREV=${PREV##*/}
[ "$PREV" != "$TARGET" ] || PREV=""
say "$ACTION: activating $TARGET (current: ${PREV:-none})"
[ -d "$BASE/releases/$TARGET" ] || finish failed "release $TARGET does not exist" ""
# app_shared_paths: a deploy linked them when it prepared the release; a release prepared before
# they were declared (a rollback's target) gets its links here. A no-op when they are there.
if [ -n "${LINK_SHARED:-}" ]; then
  if ! SHARED_OUT=$(umask 022; bash -c "$LINK_SHARED" 2>&1); then
    finish failed "could not link app_shared_paths into $TARGET (nothing switched): $(printf '%s' "$SHARED_OUT" | tail -n 3 | tr '\n' ' ')" ""
  fi
  while IFS= read -r line; do
    case $line in "@@shared-replaced "*) say "$TARGET had its own ${line#@@shared-replaced }: replaced by the link to shared/ (app_shared_paths)" ;; esac
  done <<<"$SHARED_OUT"
fi
systemctl is-active -q "$PM2_SERVICE" || systemctl start "$PM2_SERVICE" || finish failed "could not start $PM2_SERVICE" ""
# 1. The release proves itself beside the live app, which serves on untouched.
candidate_stop  # one a killed activation may have left
if ss -Hltn "sport = :$CANDIDATE_PORT" 2>/dev/null | grep -q .; then
  finish failed "app_candidate_port $CANDIDATE_PORT is in use by another program: nothing changed" ""
fi
if candidate "$TARGET"; then
  say "$TARGET is healthy beside the live app after ${GATE_SECONDS}s"
  candidate_stop
  # 2. Only then does it take the traffic: switch current, reload the live app, check it there.
  CANDIDATE_SECONDS=$GATE_SECONDS
  if switch "$TARGET" && say "current -> releases/$TARGET; pm2 startOrReload" && reload \
      && say "reloaded; health gate on $HEALTH_URL" && gate "$TARGET" "$HEALTH_URL"; then
    say "serving after ${GATE_SECONDS}s"
    pm2 save --force >/dev/null; private_dump
    prune
    GATE_SECONDS=$CANDIDATE_SECONDS
    finish ok "healthy after ${GATE_SECONDS}s" ""
  fi
  DETAIL="health gate failed after ${GATE_SECONDS:-0}s on the live port (it had passed on the spare port): ${GATE_DETAIL:-reload failed}"
  LIVE=1
else
  candidate_stop
  DETAIL="health gate failed after ${GATE_SECONDS:-0}s: ${GATE_DETAIL:-start failed}"
  LIVE=""
fi
say "$DETAIL"
printf '{"at":%s,"by":%s,"action":%s,"reason":%s}\n' "$(js "$(date -u +%Y-%m-%dT%H:%M:%SZ)")" \
  "$(js "$OPERATOR")" "$(js "$ACTION")" "$(js "$DETAIL")" > "$BASE/releases/$TARGET/.opskit-bad"
say "marked $TARGET bad"
GATE_SECONDS_FAILED=${GATE_SECONDS:-0}
if [ -z "$LIVE" ]; then
  if [ -n "$PREV" ]; then RESTORED="$PREV serves on: no live request reached $TARGET"
  else RESTORED="no previous release: $APP was not started"; fi
elif [ -n "$PREV" ] && [ -d "$BASE/releases/$PREV" ]; then
  switch "$PREV"
  say "switched back to $PREV"
  if reload && gate "$PREV" "$HEALTH_URL"; then RESTORED="$PREV serves again (healthy after ${GATE_SECONDS}s)"
  else RESTORED="$PREV is back but unhealthy: ${GATE_DETAIL:-reload failed}"; fi
  pm2 save --force >/dev/null; private_dump
else
  pm2 delete "$APP" >/dev/null 2>&1 || true
  rm -f "$BASE/current"
  pm2 save --force >/dev/null; private_dump
  RESTORED="no previous release: $APP stopped"
fi
say "$RESTORED"
# A failed deploy prunes nothing: every release that was there (the good ones) stays.
GATE_SECONDS=$GATE_SECONDS_FAILED
finish failed "$DETAIL" "$RESTORED"
