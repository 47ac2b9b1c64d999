for round in 1 2; do
for spec in "default|" "onednn|--xla_cpu_use_onednn=true" "onednn_cc|--xla_cpu_experimental_onednn_custom_call=true" "xnn_dot|--xla_cpu_experimental_xnn_fusion_type=dot" "ynn_dot|--xla_cpu_experimental_ynn_fusion_type=dot" "vec512|--xla_cpu_prefer_vector_width=512" "xnngraph|--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY"; do
  tag=${spec%%|*}; fl=${spec#*|}
  XLA_FLAGS="$fl" timeout 600 python benchmarks/kernel_timings/flags.py $tag 2>&1 | grep -v Warning | tail -2
done; done
