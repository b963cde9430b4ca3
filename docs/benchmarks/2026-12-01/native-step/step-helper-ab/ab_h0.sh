#!/bin/bash
OUT=/tmp/s7ab3; mkdir -p $OUT
for i in 1 2; do
  for mode in h0 h64; do
    if [ $mode = h0 ]; then cd /work/wt/s7-h0; export PYTHONPATH=/work/wt/s7-h0; else cd /work/main; export PYTHONPATH=/work/main; fi
    date; /work/main/.venv/bin/python -m benchmarks.peer_chat --servers ours --rounds 1 --wait-idle 30 --no-hf-baseline --long-prompt-tokens 0 --concurrency 8 > $OUT/$mode-$i.json 2> $OUT/$mode-$i.log
  done
done
date; echo done
