#!/bin/bash
# i3's GPU benches: learner throughput (IEEE and 3xTF32 FP32 head, AutoEP, packed), logprob 3xTF32
cd "$(dirname "$0")"
export TORCH_CUDA_ARCH_LIST=9.0 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total --format=csv > $OUT/gpu.txt
python -c "import torch, transformers, deepspeed; print(torch.__version__, transformers.__version__, deepspeed.__version__)" >> $OUT/gpu.txt 2>&1
run() { name=$1; shift; timeout $1 "${@:2}" > $OUT/$name.log 2>&1; echo "== $name rc=$?"; grep -v -i "warn" $OUT/$name.log | tail -4; }
run learner_ieee 100 torchrun --nproc_per_node 2 bench/learner.py throughput --tokens 16384 --steps 3 --autoep 2 --out $OUT/learner_ieee.json
run learner_3xtf32 90 torchrun --nproc_per_node 2 bench/learner.py throughput --tokens 16384 --steps 3 --autoep 2 --head-precision 3xtf32 --out $OUT/learner_3xtf32.json
