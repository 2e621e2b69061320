#!/usr/bin/env bash
# One Prefect process worker per GPU on this host, each pinned with CUDA_VISIBLE_DEVICES, so every
# train-expert flow run occupies exactly one GPU. Usage: infra/start_gpu_workers.sh [POOL] [GPU_IDS]
#   POOL defaults to hddm-gpu; GPU_IDS defaults to all GPUs nvidia-smi lists (comma-separated).
# Workers run in their own sessions (setsid): stop them with `kill -INT -- -PID` (they ignore SIGTERM).
# Flow code comes from the installed hddm-pipeline package (module-path entrypoints): any folder works;
# logs go to ./.hddm/logs. PREFECT (default: the repository's .venv/bin/prefect, else prefect on PATH).
set -euo pipefail
PREFECT="${PREFECT:-$(d="$(dirname "$0")/../.venv/bin/prefect"; [ -x "$d" ] && echo "$d" || command -v prefect)}"
POOL="${1:-hddm-gpu}"
if [ -n "${2:-}" ]; then IFS=',' read -ra GPUS <<< "$2"; else
  mapfile -t GPUS < <(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null || true); fi
[ "${#GPUS[@]}" -gt 0 ] || { echo "no GPUs found (pass GPU ids explicitly, e.g. 0,1)" >&2; exit 2; }
: "${PREFECT_API_URL:?set PREFECT_API_URL to your Prefect server, e.g. http://127.0.0.1:4200/api}"
mkdir -p .hddm/logs
for gpu in "${GPUS[@]}"; do
  CUDA_VISIBLE_DEVICES="$gpu" setsid "$PREFECT" worker start --pool "$POOL" --type process \
    --name "$(hostname)-gpu$gpu" --limit 1 > ".hddm/logs/worker-gpu$gpu.log" 2>&1 &
  echo "worker for GPU $gpu: pid $!"
done
