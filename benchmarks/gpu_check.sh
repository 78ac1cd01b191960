#!/usr/bin/env bash
# The GPU check (issues 9 and 17): the sharding tests; --dry_run against this GPU's memory
# (Kaggle on the GPU itself, MLPerf DLRM-DCNv2 on 8 simulated devices); train throughput of
# the Kaggle-size model (MODEL=mlperf: the MLPerf v1 one) at batch 2048 and 65536 in float32
# and bfloat16; a short `python main.py` run.
#
#   bash benchmarks/gpu_check.sh            # on a GPU machine (about 10 minutes)
#   bash benchmarks/gpu_check.sh --small    # shrunk to run on a CPU in a few minutes
#
# Output goes to the terminal and to $OUT (default gpu_check_out/), one log per part.
# MAX_TABLE_ROWS caps the tables (0 = the model's own sizes); a dry run that does not fit
# exits 2 and the script goes on, so that one log shows every part.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout, installed or not
small=0
if [[ "${1:-}" == "--small" ]]; then small=1; elif [[ $# -gt 0 ]]; then
  echo "usage: bash benchmarks/gpu_check.sh [--small]" >&2; exit 2
fi
out="${OUT:-gpu_check_out}"
mkdir -p "$out"
model=${MODEL:-kaggle}
if ((small)); then
  batches=128,256; rows=${MAX_TABLE_ROWS:-2000}; steps=4; windows=2
  sharding_tests=(tests/test_sharding_steps_per_call.py)
  # Kaggle's tables capped at 1000 rows: compiles in seconds on a CPU.
  dry_small=(--max_ind_range=1000 --batch_size=1024 --eval_batch_size=1024)
else
  batches=2048,65536; rows=${MAX_TABLE_ROWS:-0}; steps=20; windows=3
  dry_small=()
  sharding_tests=(tests -k sharding)
  # The tables take most of the device: let XLA have it (default 75%).
  export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}
fi

python -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, jax.devices())" \
  | tee "$out/devices.txt"
date -u +"%Y-%m-%d %H:%M UTC" | tee -a "$out/devices.txt"

# The sharding tests run on the 8 fake CPU devices of tests/conftest.py: they check this
# jax/jaxlib version, not the GPU. The model's own tests then run on the default backend.
echo "== sharding tests (8 fake CPU devices)"
JAX_PLATFORMS=cpu python -m pytest -q "${sharding_tests[@]}" 2>&1 | tee "$out/sharding_tests.txt"
echo "== model and interaction tests (default backend)"
python -m pytest -q tests/test_interaction.py tests/test_model.py 2>&1 | tee "$out/model_tests.txt"

# The accelerator's memory in GiB as XLA sees it (its allocator's limit); none on a CPU.
mem=$(python -c "import jax; s = jax.devices()[0].memory_stats() or {}; \
print(round(s.get('bytes_limit', 0) / 2**30, 1))" 2>/dev/null | tail -1)
[[ "$mem" == "0.0" || -z "$mem" ]] && mem=${DEVICE_MEMORY_GB:-80}
echo "== dry run: Kaggle on this device, --device_memory_gb=$mem" | tee "$out/dry_run.txt"
set +e
python main.py --flagfile=experiments/kaggle.flags --dry_run --mesh_shape=1 \
  --device_memory_gb="$mem" "${dry_small[@]}" 2>&1 | grep -v "^C[0-9]" | tee -a "$out/dry_run.txt"
echo "exit ${PIPESTATUS[0]}" | tee -a "$out/dry_run.txt"
if ((!small)); then
  # 8 devices of this GPU's memory, simulated on the CPU (XLA:CPU's figures).
  echo "== dry run: MLPerf DLRM-DCNv2 on 8 simulated devices, --device_memory_gb=$mem" \
    | tee -a "$out/dry_run.txt"
  JAX_PLATFORMS=cpu python main.py --flagfile=experiments/mlperf_dcnv2.flags --dry_run \
    --mesh_shape=8 --device_memory_gb="$mem" 2>&1 | grep -v "^C[0-9]" | tee -a "$out/dry_run.txt"
  echo "exit ${PIPESTATUS[0]}" | tee -a "$out/dry_run.txt"
fi
set -e

run() {  # name, extra flags...
  local name=$1
  shift
  echo "== throughput: $name ($model model)"
  python benchmarks/train_throughput.py --model="$model" --max_table_rows="$rows" \
    --batch_sizes="$batches" --steps="$steps" --windows="$windows" "$@" 2>&1 \
    | grep -v "Unable to initialize backend" | tee "$out/throughput_$name.txt"
}
run float32 --compute_dtype=float32
run bfloat16 --compute_dtype=bfloat16
# The runs above take K steps per call as training does (auto: 16 at 2048, 1 at 65536);
# this one dispatches every step, to show what the scan saves on a GPU.
run bfloat16_k1 --compute_dtype=bfloat16 --steps_per_call=1 --batch_sizes="${batches%%,*}"

echo "== python main.py: built-in data, tiny.flags' model (200 steps of 2048; --small: 20 of 256)"
python main.py --flagfile=experiments/tiny.flags --workdir="$out/main_run" --data_dir="$out/data" \
  --synthetic_rows=$((small ? 20000 : 500000)) --batch_size=$((small ? 256 : 2048)) \
  --eval_batch_size=16384 --max_steps=$((small ? 20 : 200)) --eval_every_steps=0 \
  --log_every_steps=10 --noprogress \
  2>&1 | tee "$out/main_run.txt"
echo "== done; logs in $out/"
