#!/usr/bin/env bash
# Profile one solo-pool worker (cProfile) while it works through N calls of one bench task; prints the top.
#   DATABASE_URL=... REDIS_URL=... bench/profile_worker.sh bench.retryable_fail 300
set -euo pipefail
cd "$(dirname "$0")/.."
task="${1:-bench.retryable_fail}"; n="${2:-300}"; out="var/profile-${task##*.}.prof"
mkdir -p var
.venv/bin/python -c "
import os; os.environ['DJANGO_SETTINGS_MODULE']='project.settings'
import django; django.setup()
from project.celery import app
import bench.tasks
for _ in range($n): app.send_task('$task', ('profile',), queue='bench-profile')
"
.venv/bin/python -m cProfile -o "$out" -m celery -A project worker -P solo -l warning --include bench.tasks \
  -n "profile-$$@%h" --without-gossip --without-mingle -Q bench-profile >var/profile-worker.log 2>&1 &
pid=$!
redis=$(.venv/bin/python -c "import os; print(os.environ['REDIS_URL'])")
while [ "$(redis-cli -u "$redis" llen bench-profile)" != "0" ]; do sleep 0.2; done
sleep 1
kill -TERM "$pid"; wait "$pid" || true
.venv/bin/python -c "
import pstats; s = pstats.Stats('$out'); s.sort_stats('cumulative').print_stats(40)" | grep -v '^$' | sed "s#$PWD/##; s#.venv/lib/python3.11/site-packages/##" | cut -c1-150
