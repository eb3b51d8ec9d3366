#!/usr/bin/env bash
# device_check.sh - checks on a real NVIDIA machine what this repo's CI cannot:
#   1. the real NVML probe (tests/gpu/check_nvml.py and the gpu-marked unit tests);
#   2. a real master + a real agent with the NVML probe, a real GPU job (CUDA via torch),
#      the job's process attributed to its job id, a foreign GPU process counted as busy,
#      and a queued job waiting for the GPU with its reason.
# Expects the python3 of the machine (with torch, psutil, nvidia-ml-py) and the other
# dependencies as wheels in .whl (see docs/operations.md, "Checking a GPU server").
# Output goes to stdout and, when $OUT is set, $OUT/device-check.log.
set -uo pipefail
cd "$(dirname "$0")/../.."
LOG=${OUT:-/tmp}/device-check.log
exec > >(tee "$LOG") 2>&1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
step() { echo; echo "=== $*"; }
fail=0
M() { python3 -m mlsm "$@"; }

step "nvidia-smi"
nvidia-smi --query-gpu=index,name,uuid,memory.total,driver_version --format=csv || true

step "NVML probe check"
python3 tests/gpu/check_nvml.py || fail=1

step "gpu unit tests"
python3 -m pytest -q -p no:cacheprovider tests/unit/agent/test_gpu_probe.py -m gpu -rs || fail=1

step "master + agent with the real probe"
W=$(mktemp -d)
PORT=18999
export MLSM_PASSWORD=devicecheck-pass
python3 -m mlsm master --port $PORT --data-dir "$W/master" --init-admin root >"$W/master.log" 2>&1 &
MPID=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.2; done
export XDG_CONFIG_HOME=$W/cfg HOME=$W
M login "http://127.0.0.1:$PORT" --user root || fail=1
JT=$(M join-token create)
python3 -m mlsm agent --master "http://127.0.0.1:$PORT" --join-token "$JT" --name gpunode --data-dir "$W/agent" >"$W/agent.log" 2>&1 &
APID=$!
for _ in $(seq 100); do M nodes 2>/dev/null | grep -q online && break; sleep 0.2; done
M nodes
M node show gpunode

step "a real GPU job"
JOB=$(M submit --gpus 1 --name cuda-check --json -- python3 -c "
import os, time, torch
x = torch.ones(1 << 28, device='cuda')  # 1 GiB
print('CUDA_VISIBLE_DEVICES', os.environ['CUDA_VISIBLE_DEVICES'], 'devices', torch.cuda.device_count(), torch.cuda.get_device_name(0), flush=True)
time.sleep(8)
print('sum', float(x.sum()))
" | python3 -c 'import json,sys; print(json.load(sys.stdin)["job"]["id"])')
echo "job $JOB"
for _ in $(seq 150); do M node show gpunode | grep -q "job $JOB" && break; sleep 0.2; done
M node show gpunode | tee "$W/show.txt"
grep -q "job $JOB" "$W/show.txt" && echo "OK: the GPU process is attributed to job $JOB" || { echo "FAIL: job $JOB not shown on its GPU"; fail=1; }
for _ in $(seq 300); do M job show "$JOB" --json | grep -q '"state": "succeeded"' && break; sleep 0.2; done
M job show "$JOB"
M logs "$JOB"
M job show "$JOB" --json | grep -q '"state": "succeeded"' || { echo "FAIL: GPU job did not succeed"; fail=1; }

step "a foreign GPU process makes the GPU busy"
python3 -c "
import time, torch
x = torch.ones(1 << 27, device='cuda'); time.sleep(25)" &
FPID=$!
for _ in $(seq 150); do M node show gpunode | grep -q "not started by mlsm" && break; sleep 0.2; done
M node show gpunode | tee "$W/show2.txt"
grep -q "not started by mlsm" "$W/show2.txt" && echo "OK: foreign process named" || { echo "FAIL: foreign process not shown"; fail=1; }
NGPU=$(nvidia-smi --query-gpu=index --format=csv,noheader | wc -l)
J2=$(M submit --gpus "$NGPU" --json -- true | python3 -c 'import json,sys; print(json.load(sys.stdin)["job"]["id"])')
for _ in $(seq 50); do M jobs | grep -q "free GPU" && break; sleep 0.2; done
M jobs
M jobs | grep "^$J2 " | grep -q "free GPU" && echo "OK: job $J2 waits for busy GPUs" || { echo "FAIL: job $J2 did not wait with a reason"; fail=1; }
kill $FPID; wait $FPID 2>/dev/null
for _ in $(seq 300); do M job show "$J2" --json | grep -q '"state": "succeeded"' && break; sleep 0.2; done
M job show "$J2" --json | grep -q '"state": "succeeded"' && echo "OK: job $J2 ran once the GPU was free" || { echo "FAIL: job $J2 did not run"; fail=1; }

kill $APID $MPID; wait $APID $MPID 2>/dev/null
echo; echo "--- agent log tail"; tail -5 "$W/agent.log"
echo; [ $fail = 0 ] && echo "DEVICE CHECK OK" || echo "DEVICE CHECK FAILED"
exit $fail
