#!/bin/bash
# Interleaved A/B of two native_loops binaries (native_loops.cc), pinned to core 0:
#   native_loops_ab.sh /tmp/loops_base /tmp/loops_new "64 128 128 256 0 0;8 512 32 64 0 1" [rounds]
# (PHASE=bwd with BWD=1 compares the backward loops; default fwd)
# each config "B T I H cell train"; prints the medians over rounds (of each run's
# median of 3 calls), B/A and the load average.
A=$1; Bn=$2; CFGS=$3; R=${4:-7}
IFS=';' read -ra CS <<< "$CFGS"
for cfg in "${CS[@]}"; do
  ra=(); rb=()
  for r in $(seq $R); do
    ra+=($(taskset -c 0 $A $cfg 3 2>/dev/null | awk -v ph="${PHASE:-fwd}" '$1 == ph {print $2}'))
    rb+=($(taskset -c 0 $Bn $cfg 3 2>/dev/null | awk -v ph="${PHASE:-fwd}" '$1 == ph {print $2}'))
  done
  python3 -c "
import statistics,sys
a=[float(x) for x in '${ra[*]}'.split()]; b=[float(x) for x in '${rb[*]}'.split()]
print('$cfg', 'A %.2f B %.2f B/A %.3f' % (statistics.median(a), statistics.median(b), statistics.median(b)/statistics.median(a)), 'load', open('/proc/loadavg').read().split()[0])"
done
