#!/bin/bash
# One stream and 16 streams through the default server: native decode kernels on/off, alternating (3 pairs).
cd /work/main
OUT=/tmp/s6ab; mkdir -p $OUT
for i in 1 2 3; do
  for mode in native pytorch; do
    if [ $mode = pytorch ]; then export OPENSERVE_NATIVE_DECODE=0; else unset OPENSERVE_NATIVE_DECODE; fi
    date; .venv/bin/python -m benchmarks.peer_chat --servers ours --rounds 1 --wait-idle 30 --no-hf-baseline --long-prompt-tokens 0 > $OUT/$mode-$i.json 2> $OUT/$mode-$i.log
  done
done
date; echo done
