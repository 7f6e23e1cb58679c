#!/usr/bin/env bash
# The notify scenario against the project alone, with the CPU of each server thread.
#
#   bash bench/notify_alone.sh [uvicorn|daphne] [memory|core|pubsub]
#
# Used for the step-by-step figures of notifications in RESULTS.md (one 14 s run, the
# thread split sampled for 5 s after a 6 s warm-up). A fresh SQLite file each time; Redis
# (REDIS_URL, default redis://127.0.0.1:6379/5) under the "benchalone" prefix for core and
# pubsub. Needs ../shared/bench/loadgen.py and its requirements (bench/run.py --setup).
set -euo pipefail
cd "$(dirname "$0")/.."
KIND=${1:-uvicorn}
LAYER=${2:-memory}
PY=.venv/bin/python
LOADGEN=../shared/bench/loadgen.py
PORT=${PORT:-18000}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
ulimit -n 20000

export DEBUG=false SECRET_KEY=bench-notify-alone-not-for-production-xxxxxxxxxxxxxxxxxx
export JWT_SECRET=bench-jwt-secret-not-for-production LOG_LEVEL=WARNING ACCESS_LOG=false
export WS_RATE_LIMIT=0 WS_MAX_CONNECTIONS=0 SQLITE_PATH="$WORK/db.sqlite3"
unset DATABASE_URL REDIS_URL REDIS_LAYER
if [ "$LAYER" != memory ]; then
  export REDIS_URL=${BENCH_REDIS_URL:-redis://127.0.0.1:6379/5} REDIS_PREFIX=benchalone
  export REDIS_LAYER=$LAYER
fi

$PY manage.py migrate -v0
$PY manage.py shell -c "
from django.contrib.auth import get_user_model
User = get_user_model()
User.objects.create_user('bench_staff', is_staff=True)
User.objects.bulk_create([User(username=f'bench_u{i}') for i in range(100)])
"
if [ "$KIND" = daphne ]; then
  taskset -c 0 $PY manage.py serve --host 127.0.0.1 --port "$PORT" > "$WORK/server.log" 2>&1 &
else
  taskset -c 0 $PY -m uvicorn project.asgi:application --host 127.0.0.1 --port "$PORT" \
    --ws websockets-sansio --ws-max-size 262144 --ws-ping-interval 20 --ws-ping-timeout 30 \
    --lifespan off --no-access-log --log-level warning > "$WORK/server.log" 2>&1 &
fi
SERVER=$!
sleep 3
(sleep 6; $PY bench/thread_cpu.py "$SERVER" 5) &
SAMPLER=$!
$PY "$LOADGEN" notify --target project --url "http://127.0.0.1:$PORT" --server-pid "$SERVER" \
  --users 100 --posts 1000000 --http-conns 8 --duration 14 --client-cpus 1 \
  --jwt-secret "$JWT_SECRET" > /dev/null
wait "$SAMPLER"
kill "$SERVER"
wait "$SERVER" 2>/dev/null || true
if [ "$LAYER" != memory ]; then
  $PY -c "
import os, redis
client = redis.Redis.from_url(os.environ['REDIS_URL'])
keys = list(client.scan_iter(match='benchalone*', count=1000))
if keys:
    client.unlink(*keys)
"
fi
