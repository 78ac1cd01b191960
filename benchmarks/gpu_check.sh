#!/usr/bin/env bash
# The GPU check of issue 9: the sharding tests, then train throughput of the MLPerf v1 model
# (26 Criteo-1TB tables capped at 40M rows, dim 128, bottom 512-256-128, top
# 1024-1024-512-256-1, SGD) at batch 2048 and 65536, in float32 and bfloat16.
#
#   bash benchmarks/gpu_check.sh            # on a GPU machine (about 10 minutes)
#   bash benchmarks/gpu_check.sh --small    # shrunk to run on a CPU in a few minutes
#
# Output goes to the terminal and to $OUT (default gpu_check_out/), one log per part.
# MAX_TABLE_ROWS overrides the 40M cap if the tables (97 GiB in f32 at the cap) do not fit.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout, installed or not
small=0
if [[ "${1:-}" == "--small" ]]; then small=1; elif [[ $# -gt 0 ]]; then
  echo "usage: bash benchmarks/gpu_check.sh [--small]" >&2; exit 2
fi
out="${OUT:-gpu_check_out}"
mkdir -p "$out"
if ((small)); then
  batches=128,256; rows=${MAX_TABLE_ROWS:-2000}; steps=4; windows=2
  sharding_tests=(tests/test_sharding_steps_per_call.py)
else
  batches=2048,65536; rows=${MAX_TABLE_ROWS:-40000000}; steps=20; windows=3
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

run() {  # name, extra flags...
  local name=$1
  shift
  echo "== throughput: $name"
  python benchmarks/train_throughput.py --model=mlperf --max_table_rows="$rows" \
    --batch_sizes="$batches" --steps="$steps" --windows="$windows" "$@" 2>&1 \
    | grep -v "Unable to initialize backend" | tee "$out/throughput_$name.txt"
}
run float32 --compute_dtype=float32
run bfloat16 --compute_dtype=bfloat16
# The runs above take K steps per call as training does (auto: 16 at 2048, 1 at 65536);
# this one dispatches every step, to show what the scan saves on a GPU.
run bfloat16_k1 --compute_dtype=bfloat16 --steps_per_call=1 --batch_sizes="${batches%%,*}"
echo "== done; logs in $out/"
