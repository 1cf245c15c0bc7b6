#!/usr/bin/env bash
# Run GPU checks and benchmarks in few calls on a lent GPU machine, results under $OUT (or ./gpu-results).
#
#   bash benchmarks/gpu_run.sh tests k22          # GPU-only tests; Kandinsky eager chain vs diffusers (~6 min)
#   bash benchmarks/gpu_run.sh k22compiled        # the compiled chain too, batch 1 (compiling: ~3 min of it)
#   bash benchmarks/gpu_run.sh upscale mega       # GAN upscaling and DALL·E Mega (~7 min)
#
# That machine has torch, transformers, huggingface_hub, tokenizers, einops and safetensors, but not spandrel,
# diffusers, min-dalle or emoji. Put their wheels in .whl/ (git-ignored) beforehand, on a machine with pip
# access, and carry .whl with the call:
#   pip download --no-deps -d .whl spandrel==0.4.2 diffusers==0.42.1 emoji==2.16.0
#   pip wheel --no-deps -w .whl min-dalle==0.4.11
set -u -o pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${OUT:-gpu-results}")
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv | tee "$out/gpu.txt"
git log --oneline -1 2>/dev/null | tee -a "$out/gpu.txt"

for job in "$@"; do
    case $job in
        tests) python3 -m pytest -q -p no:cacheprovider -rs tests/models/test_cuda_graph.py \
            tests/models/test_compiled.py tests/models/test_dalle_bart.py 2>&1 | tee "$out/tests.log" ;;
        upscale) (cd benchmarks && python3 bench_upscale.py --compile --profile > "$out/upscale.json" 2> "$out/upscale.err") ;;
        mega) (cd benchmarks && python3 bench_dalle_mega.py > "$out/mega.json" 2> "$out/mega.err") ;;
        k22) (cd benchmarks && python3 bench_k22.py --no-compile > "$out/k22.json" 2> "$out/k22.err") ;;
        k22compiled) (cd benchmarks && python3 bench_k22.py --batch 1 > "$out/k22compiled.json" 2> "$out/k22compiled.err") ;;
        *) echo "unknown job '$job': tests, upscale, mega, k22 or k22compiled" >&2; exit 2 ;;
    esac
    echo "$job: exit $?"
    [ -f "$out/$job.json" ] && tail -12 "$out/$job.json"
done
