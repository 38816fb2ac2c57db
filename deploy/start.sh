#!/bin/sh
# The image's default command: which process this container runs, from WORKER_TYPE as in the
# original deployment guide (its Dockerfile.worker ran workers/${WORKER_TYPE}.py). One image serves
# every role; an explicit command (compose `command:`, Kubernetes `command:`) replaces this script.
#
#   WORKER_TYPE        runs
#   (unset) or web     daphne on $PORT (8004)
#   llm_worker         python manage.py rqworker llm           (replies, streamed token by token)
#   message_processor  python manage.py rqworker messages  (titles, output review)
#   analytics_worker   python manage.py analytics_worker       (usage rollups)
#   safety_worker      python manage.py safety_worker          (the content classifier)
#   migrate            python manage.py migrate --noinput      (one-off)
#
# exec, so the process is PID 1 and gets SIGTERM itself (workers finish their replies on it).
set -eu

case "${WORKER_TYPE:-web}" in
    web) exec daphne -b 0.0.0.0 -p "${PORT:-8004}" messageservice.asgi:application ;;
    llm_worker) exec python manage.py rqworker llm ;;
    message_processor) exec python manage.py rqworker messages ;;
    analytics_worker) exec python manage.py analytics_worker ;;
    safety_worker) exec python manage.py safety_worker ;;
    migrate) exec python manage.py migrate --noinput ;;
    *)
        echo "unknown WORKER_TYPE '${WORKER_TYPE}': web, llm_worker, message_processor," \
            "analytics_worker, safety_worker or migrate" >&2
        exit 64
        ;;
esac
