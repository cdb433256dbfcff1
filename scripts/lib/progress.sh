#!/usr/bin/env bash
# Progress for the long steps of scripts/up.sh and tests/install.sh (sourced, not run): runs each
# step's command in the background with its whole output in a log file, and shows what it is
# doing with the build tool's own count (ninja's `[n/208]`, cargo's `n/260`), the elapsed time
# and an estimate (this machine's last measurement of the step, else the figure measured on an
# idle 2-core VM). On a terminal that is one line updated in place; elsewhere (CI logs) a line
# per running step every 20 s. No step is silent for longer than that.
#
#   progress_start KEY LABEL ESTIMATE_S LOG CMD...   start a step (several may run at once)
#   progress_wait                                    show them until all end; 1 if any failed
#   progress_kill_all                                stop what is still running (for traps)
#
# A finished step's duration is kept in $CORTEX_CACHE/timings/KEY when PROGRESS_RECORD names it.

_progress_dir=""
_progress_keys=()      # running steps
declare -A _progress_label _progress_est _progress_start _progress_log _progress_pid
_progress_tty=0
[ -t 1 ] && _progress_tty=1
_progress_interval=20  # seconds between lines when not on a terminal

progress_fmt() {
  local s="$1"
  if [ "$s" -lt 60 ]; then printf '%ds' "$s"
  elif [ "$s" -lt 3600 ]; then printf '%dm%02ds' $((s / 60)) $((s % 60))
  else printf '%dh%02dm' $((s / 3600)) $((s % 3600 / 60)); fi
}

# The estimate for a step: this machine's last measurement if there is one, else the default.
progress_estimate() {
  local file="$CORTEX_CACHE/timings/$1"
  if [ -s "$file" ]; then cat "$file"; else echo "$2"; fi
}

progress_record() {
  mkdir -p "$CORTEX_CACHE/timings"
  echo "$2" > "$CORTEX_CACHE/timings/$1"
}

# Reads a tool's output (\r already turned into \n), keeps it in the log (minus cargo's redrawn
# bar) and writes count, kind and what (separated by \x1f) to the status file when they change.
_progress_track() {
  local log="$1" status="$2" line count="" kind="" what="" shown=""
  exec 7>"$log"
  while IFS= read -r line; do
    line="${line//$'\e'\[K/}"
    if [[ $line =~ Building\ \[[^]]*\]\ ([0-9]+/[0-9]+):\ ?(.*)$ ]]; then
      count="${BASH_REMATCH[1]}" kind=cargo what="${BASH_REMATCH[2]%"${BASH_REMATCH[2]##*[![:space:]]}"}"
    else
      printf '%s\n' "$line" >&7
      if [[ $line =~ ^\[([0-9]+/[0-9]+)\]\ (.*)$ ]]; then
        count="${BASH_REMATCH[1]}" kind=ninja what="${BASH_REMATCH[2]##*/}"
      elif [[ $line =~ ^[[:space:]]*([A-Z][a-z]+ing|Successfully|Finished)[[:space:]](.*)$ ]]; then
        what="${BASH_REMATCH[1]} ${BASH_REMATCH[2]}"
      fi
    fi
    if [ "$count$kind$what" != "$shown" ]; then
      printf '%s\x1f%s\x1f%s\n' "$count" "$kind" "${what:0:120}" > "$status.tmp" && mv -f "$status.tmp" "$status"
      shown="$count$kind$what"
    fi
  done
  exec 7>&-
}

progress_start() {
  local key="$1" label="$2" est="$3" log="$4"; shift 4
  [ -n "$_progress_dir" ] || _progress_dir=$(mktemp -d "${TMPDIR:-/tmp}/cortex-progress.XXXXXX")
  mkdir -p "$(dirname "$log")"
  rm -f "$_progress_dir/$key".*
  _progress_label[$key]="$label" _progress_est[$key]="$est" _progress_log[$key]="$log"
  _progress_start[$key]=$EPOCHSECONDS
  (
    set +e
    # Its own session, so that progress_kill_all can stop the whole tree (cmake, ninja, rustc).
    # shellcheck disable=SC2016 # $$ and $@ are the inner shell's
    setsid --wait bash -c 'echo $$ > "$0"; exec "$@"' "$_progress_dir/$key.pgid" "$@" </dev/null 2>&1 \
      | stdbuf -o0 tr '\r' '\n' | _progress_track "$log" "$_progress_dir/$key.status"
    echo "${PIPESTATUS[0]}" > "$_progress_dir/$key.rc"
  ) &
  _progress_pid[$key]=$!
  _progress_keys+=("$key")
  local how
  how="about $(progress_fmt "$est")"
  [ -s "$CORTEX_CACHE/timings/$key" ] && how="$how (measured here before)"
  printf '    %s: started, %s; log %s\n' "$label" "$how" "$log"
}

# One step's status: "label count elapsed/estimate [· left] [· what]".
_progress_describe() {
  local key="$1" with_what="$2" count="" kind="" what="" el est text
  [ -s "$_progress_dir/$key.status" ] && IFS=$'\x1f' read -r count kind what < "$_progress_dir/$key.status"
  el=$((EPOCHSECONDS - _progress_start[$key])) est="${_progress_est[$key]}"
  text="${_progress_label[$key]}"
  [ -n "$count" ] && text="$text [$count]"
  if [ "$el" -le "$est" ]; then
    text="$text $(progress_fmt "$el") of ~$(progress_fmt "$est")"
  else
    text="$text $(progress_fmt "$el"), past the ~$(progress_fmt "$est") estimate (load $(cut -d' ' -f1 /proc/loadavg) on $(nproc) cores)"
  fi
  if [ "$kind" = ninja ] && [ -n "$count" ] && [ "$el" -ge 30 ]; then
    local n="${count%/*}" total="${count#*/}"
    [ "$n" -ge 10 ] && text="$text, ~$(progress_fmt $((el * (total - n) / n))) left at this pace"
  fi
  [ "$with_what" = 1 ] && [ -n "$what" ] && text="$text · $what"
  printf '%s' "$text"
}

_progress_render() {
  local key line="" sep="" with_what=0 cols
  [ "${#_progress_keys[@]}" -eq 1 ] && with_what=1
  for key in "${_progress_keys[@]}"; do
    line="$line$sep$(_progress_describe "$key" "$with_what")" sep=" | "
  done
  cols=$(tput cols 2>/dev/null || echo 100)
  printf '\r\e[K    %s' "${line:0:$((cols - 5))}"
}

# A step ended: say how it went; on failure show the end of its log.
_progress_finish() {
  local key="$1" rc el
  rc=$(cat "$_progress_dir/$key.rc") el=$((EPOCHSECONDS - _progress_start[$key]))
  [ "$_progress_tty" = 1 ] && printf '\r\e[K'
  if [ "$rc" = 0 ]; then
    printf '    %s: done in %s\n' "${_progress_label[$key]}" "$(progress_fmt "$el")"
    case " ${PROGRESS_RECORD:-} " in *" $key "*) progress_record "$key" "$el" ;; esac
  else
    printf '    %s: FAILED (exit %s) after %s; the end of %s:\n' "${_progress_label[$key]}" "$rc" \
      "$(progress_fmt "$el")" "${_progress_log[$key]}" >&2
    tail -n 25 "${_progress_log[$key]}" | sed 's/^/      /' >&2
  fi
  wait "${_progress_pid[$key]}" 2>/dev/null || true
  local k rest=()
  for k in "${_progress_keys[@]}"; do [ "$k" = "$key" ] || rest+=("$k"); done
  _progress_keys=("${rest[@]}")
  [ "$rc" = 0 ]
}

progress_wait() {
  local key last=$EPOCHSECONDS failed=0
  while [ "${#_progress_keys[@]}" -gt 0 ]; do
    for key in "${_progress_keys[@]}"; do
      [ -f "$_progress_dir/$key.rc" ] || continue
      _progress_finish "$key" || failed=1
    done
    [ "$failed" = 0 ] || { progress_kill_all; return 1; }
    [ "${#_progress_keys[@]}" -gt 0 ] || break
    if [ "$_progress_tty" = 1 ]; then
      _progress_render
    elif [ $((EPOCHSECONDS - last)) -ge "$_progress_interval" ]; then
      for key in "${_progress_keys[@]}"; do
        printf '    %s %s\n' "$(date -u +%H:%M:%S)" "$(_progress_describe "$key" 1)"
      done
      last=$EPOCHSECONDS
    fi
    sleep 1
  done
  rm -rf "$_progress_dir"
  _progress_dir=""
}

progress_kill_all() {
  local key pgid
  for key in "${_progress_keys[@]}"; do
    pgid=$(cat "$_progress_dir/$key.pgid" 2>/dev/null) || continue
    # Its process group, and the rest of its session (ninja runs each compiler in a group of its own).
    kill -TERM -- "-$pgid" 2>/dev/null || true
    pkill -TERM -s "$pgid" 2>/dev/null || true
    printf '    %s: stopped\n' "${_progress_label[$key]}" >&2
  done
  _progress_keys=()
  [ -z "$_progress_dir" ] || rm -rf "$_progress_dir"
  _progress_dir=""
}
