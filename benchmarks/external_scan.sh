#!/usr/bin/env bash
# The default blind scan against an external Dask scheduler (issue 17, item 5): starts a scheduler
# and NWORKERS single-threaded workers by hand, as docs/cluster.md says (scheduler file, the
# MALLOC_MMAP_THRESHOLD_ export), runs benchmarks/scan.py against it on EVENTS events resampled from
# the R&D QCD files, reads each worker's peak RSS at the end, and stops the cluster.
# usage: benchmarks/external_scan.sh OUT [EVENTS=1000000] [NWORKERS=nproc] [DATA_DIR=../shared/data/rnd] [scan.py args...]
set -u
out=$1; events=${2:-1000000}; nworkers=${3:-$(nproc)}; data=${4:-$(dirname "$0")/../../shared/data/rnd}
shift $(( $# < 4 ? $# : 4 ))
mkdir -p "$out"
export MALLOC_MMAP_THRESHOLD_=33554432 PYTHONUNBUFFERED=1 DASK_LOGGING__DISTRIBUTED=warning
sched="$out/scheduler.json"; rm -f "$sched"
dask scheduler --scheduler-file "$sched" --port 0 --no-dashboard > "$out/scheduler.log" 2>&1 &
spid=$!
for _ in $(seq 60); do [ -s "$sched" ] && break; sleep 0.5; done
dask worker --scheduler-file "$sched" --nworkers "$nworkers" --nthreads 1 --no-dashboard \
  > "$out/workers.log" 2>&1 &
wpid=$!
trap 'kill $wpid 2>/dev/null; sleep 3; kill $spid 2>/dev/null' EXIT
python "$(dirname "$0")/scan.py" --data "$data/qcd_features.h5" "$data/qcd_extra_features.h5" \
  --resample "$events" --scheduler "$sched" --out "$out/run" --json "$out/scan.json" --progress "$@"
