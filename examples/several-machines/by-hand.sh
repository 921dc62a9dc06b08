#!/usr/bin/env bash
# One process of a flaxlstm job on several machines, started by hand (or over ssh) on each:
#
#   by-hand.sh COORDINATOR_HOST:PORT NUM_PROCESSES PROCESS_ID TASK [OPTIONS...]
#
# Process 0 runs on COORDINATOR_HOST and listens on PORT; every process gets the same TASK and
# OPTIONS, and an --out on a filesystem that all the machines share.
set -euo pipefail
coordinator=$1 processes=$2 process_id=$3
shift 3
exec flaxlstm train "$@" \
  --coordinator "$coordinator" --num-processes "$processes" --process-id "$process_id"
