#!/usr/bin/env bash
# The GPU checks of issue 17 in one command, on a machine with a CUDA device (sideband installed,
# or wheels in .whl/ for a bare machine: `python benchmarks/gpu_wheels.py` here, then carry .whl),
# within a time budget:
#   1. the tests marked gpu (CUDA vs CPU agreement, a small search with device cuda);
#   2. benchmarks/gpu.py: CATHODE flow, autoencoder and MLP per epoch on CUDA (and at a larger
#      flow batch), compared with CPU numbers from CPU_JSON (a 2-core run of gpu.py --devices cpu)
#      when given, else measured here; the flow with bf16 autocast and torch.compile (validation
#      NLL in fp32, to compare with the fp32 run);
#   3. the default blind scan with compute.device auto on DATA (with SIGNAL injected when given);
#   4. the default blind scan on 1,000,000 events resampled from DATA, with what time is left.
# usage: benchmarks/gpu_machine.sh OUT DATA [SIGNAL] [CPU_JSON] [BUDGET_S]
# BUDGET_S (default 540) fits one device call (at most 600 s); steps get shares of what is left.
set -u
out=$1; data=$2; signal=${3:-}; cpujson=${4:-}; budget=${5:-540}
start=$(date +%s)
left() { echo $(( budget - ($(date +%s) - start) )); }
export PYTHONUNBUFFERED=1 DASK_LOGGING__DISTRIBUTED=warning
mkdir -p "$out"
if [ -d .whl ] && ! python3 -c "import sideband.pipeline" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/site . || exit 1
  export PYTHONPATH=/tmp/site
fi
{ nvidia-smi -L; nproc; free -g | head -2; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())"; } 2>&1 | tee "$out/machine.txt"
echo "== gpu tests ($(left) s left)"
timeout $(( $(left) / 4 )) python3 -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider -W default -rs 2>&1 | tail -25 | tee "$out/gpu_tests.log"
echo "== stages ($(left) s left)"
cmp=(); [ -n "$cpujson" ] && cmp=(--compare "$cpujson" --devices cuda)
timeout $(( $(left) / 2 )) python3 benchmarks/gpu.py --data "$data" "${cmp[@]}" --flow-batches 16384 \
  --flow-variants bf16 compile bf16+compile --json "$out/gpu_stages.json" 2>&1 \
  | grep -v Warning | tail -20 | tee "$out/gpu_stages.log"
echo "== default scan, device auto ($(left) s left)"
inj=(); [ -n "$signal" ] && inj=(--inject "$signal" --n-inject 460)
timeout $(( $(left) * 6 / 10 )) python3 benchmarks/scan.py --data "$data" "${inj[@]}" --device auto --progress \
  --out /tmp/scan-gpu --json "$out/scan_gpu.json" 2>&1 | grep -v "Warning\|warn(" | tail -30 | tee "$out/scan_gpu.log"
echo "== default scan on 1M events ($(left) s left)"
t=$(( $(left) - 25 ))
if [ "$t" -gt 60 ]; then
  python3 benchmarks/gpu.py --data "$data" --devices "" --scan-events 1000000 --scan-timeout "$t" \
    --json "$out/scan_1m.json" 2>&1 | tail -5 | tee "$out/scan_1m.log"
fi
echo "== done after $(( $(date +%s) - start )) s"
