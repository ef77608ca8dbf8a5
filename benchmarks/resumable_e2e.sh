#!/usr/bin/env bash
# One long engine_e2e job spread over several machine calls (each call is capped at 10 minutes, and a
# later call may get another machine): restore the job's work folder from STATE_IN if a previous call
# left one, run until --pause-after-s, and leave the folder (previews and the final MP4 excepted) in
# STATE_OUT as tar pieces of at most 15 MiB.
#
#   benchmarks/resumable_e2e.sh STATE_IN STATE_OUT --modes low --seconds 60 --crf 51 --pause-after-s 530 --out X
set -euo pipefail
state_in=$1 state_out=$2
shift 2
work=/tmp/engine_e2e
rm -rf "$work" && mkdir -p "$work" "$state_out"
resume=()
if compgen -G "$state_in/work.tar.*" >/dev/null; then
    cat "$state_in"/work.tar.* | tar xf - -C "$work"
    resume=(--resume)
fi
python3 -m benchmarks.engine_e2e --work "$work" "${resume[@]}" "$@"
tar cf - -C "$work" --exclude='*.gif' --exclude=out.mp4 . | split -b 15m - "$state_out/work.tar."
ls -la "$state_out"
