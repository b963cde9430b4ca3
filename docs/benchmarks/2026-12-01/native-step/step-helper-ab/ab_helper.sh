#!/bin/bash
# 8 concurrent streams (and one stream): the step helper on steps of several rows (main) vs not (82621b0), alternating
OUT=/tmp/s7ab; mkdir -p $OUT
for i in 4 5; do
  for mode in old new; do
    if [ $mode = old ]; then cd /work/wt/s7-mid; export PYTHONPATH=/work/wt/s7-mid; else cd /work/main; export PYTHONPATH=/work/main; fi
    date; /work/main/.venv/bin/python -m benchmarks.peer_chat --servers ours --rounds 1 --wait-idle 30 --no-hf-baseline --long-prompt-tokens 0 --concurrency 8 > $OUT/$mode-$i.json 2> $OUT/$mode-$i.log
  done
done
date; echo done
