cd /work/main
n=0
for run in never always auto auto always never; do
  n=$((n+1)); rm -rf /tmp/python_env_*
  timeout 120 .venv/bin/python perf/overload.py --repo /tmp/r_y_$run -m onnx --factor 2 --duration 20 --probe-s 6 > /tmp/ab_local/run$n-$run.json
  echo "run $n $run exit $?"
done
