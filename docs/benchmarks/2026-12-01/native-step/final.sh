#!/bin/bash
cd /work/main
OUT=/tmp/s7f; mkdir -p $OUT
date; cat /proc/loadavg
.venv/bin/python -m benchmarks.peer_chat --servers ours,llama_cpp --llama-cpp-python /work/peers/llamacpp/bin/python --rounds 3 --wait-idle 30 --no-hf-baseline > $OUT/peer-llama.json 2> $OUT/peer-llama.log
date; .venv/bin/python -m benchmarks.startup_memory --rounds 3 --compare-tree before=/work/wt/s7-before --out $OUT/startup > $OUT/startup.log 2>&1
date; .venv/bin/python -m benchmarks small-requests --rounds 3 --out $OUT/sr > $OUT/sr.json 2> $OUT/sr.log
date; .venv/bin/python -m benchmarks.engine --prefix --prompt-len 1000 --rounds 3 --output-len 4 --requests 1 > $OUT/prefix.json 2> $OUT/prefix.log
date; echo done
