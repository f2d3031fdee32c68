#!/usr/bin/env bash
# Third call: only the GPU tests of the graph engine and decode kernels (fixed after call 2).
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl > /tmp/pip.log 2>&1
export TORCH_CUDA_ARCH_LIST=9.0 RAY_AUTH_MODE=disabled WANDB_MODE=disabled PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PATH=/tmp/site/bin:$PATH
export PYTHONPATH=/tmp/site:/tmp/w/m
rm -rf /tmp/w/m && mkdir -p /tmp/w/m && tar xzf .gpu/m.tgz -C /tmp/w/m && cd /tmp/w/m
timeout -k 5 ${TT:-140} python -m pytest -q -s -p no:cacheprovider -m gpu tests/test_ops_decode_kernels.py tests/test_engine_graph_gpu.py 2>&1 | grep -E "GPU_CHECK|passed|failed|FAILED|Error|assert" | cut -c1-300 | tee $OUT/t15b.txt
echo "total $(( $(date +%s) - T0 )) s"
