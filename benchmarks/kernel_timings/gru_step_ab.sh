#!/bin/bash
# Alternating processes of two checkouts (each with its extension built in place):
#   gru_step_ab.sh NEW_DIR OLD_DIR [rounds of alternation] [taskset cpus]
# runs gru_step.py at the four target shapes, printing one line per process
# (label = the checkout's directory). EMULATE=avx2 passes through.
NEW=$1 OLD=$2 N=${3:-3} CPUS=${4:-0,1}
HERE=$(cd "$(dirname "$0")" && pwd)
for s in "8 512 32 64 15" "32 256 64 128 11" "64 128 128 256 9" "128 64 256 512 7"; do
  set -- $s
  for i in $(seq $N); do
    for v in $NEW $OLD; do
      echo "$1,$2,$3,$4 $v $(cd $v && PYTHONPATH=$v taskset -c $CPUS python $HERE/gru_step.py $1 $2 $3 $4 $5 2>&1 | tail -1)"
    done
  done
done
