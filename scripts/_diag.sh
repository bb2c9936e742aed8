python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl_s/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit
M=.bench_model/SmolLM2-135M-Instruct
W="--num-requests 32 --min-prompt 16 --max-prompt 128 --min-output 16 --max-output 64 --save-detailed"
run() { # name port flags...
  n=$1; p=$2; shift 2
  DBG_STEPS=1 python -m minillm serve --model $M --load-format dummy --device cuda --port $p --log-level warning "$@" 2> $OUT/$n.steps &
  S=$!
  for i in $(seq 120); do curl -sf localhost:$p/health >/dev/null && break; sleep 1; done
  python -c "import time;print('T0',time.perf_counter())" >> $OUT/$n.steps
  python -m minillm bench serve --url http://localhost:$p $W --output $OUT/$n.json > /dev/null 2>&1
  python -m minillm bench serve --url http://localhost:$p $W --output $OUT/${n}2.json > /dev/null 2>&1
  curl -s localhost:$p/metrics > $OUT/$n.metrics
  kill -INT $S; wait $S
}
run ov 8011
run serial 8012 --no-overlap-schedule
