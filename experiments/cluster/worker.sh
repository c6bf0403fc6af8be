#!/usr/bin/env bash
# One worker of a suite's run queue. Start it as many times as you want workers (a Slurm array
# task, a SkyPilot node, a GPU of a node): every worker runs the same command, takes the next run
# that no worker holds from the queue in MOE_HARNESS_STORAGE, and writes its rows into OUT, so
# every run is done exactly once. A worker that dies (preemption, a lost node) misses its
# heartbeats; its run is failed after 3 of them and taken over by a live worker, which resumes
# from the run's last checkpoint in OUT where one was written.
#
#   SUITE                the suite file, e.g. experiments/methods.toml
#   OUT                  the results folder, on a filesystem every worker writes (NFS, Lustre, a
#                        network volume)
#   MOE_HARNESS_STORAGE  the queue: postgresql://user@dbhost/moe across machines (sqlite:///path
#                        only where every worker sees one local disk); kept in the environment, off
#                        the command line, where it may hold a password
#   MOE_HARNESS_WORKER_ARGS  more options of `moe-harness run` (e.g. "--threads 1 --heartbeat 60")
set -euo pipefail
: "${SUITE:?set SUITE to the suite file, e.g. experiments/methods.toml}"
: "${OUT:?set OUT to the results folder every worker writes, e.g. /shared/moe-results}"
: "${MOE_HARNESS_STORAGE:?set MOE_HARNESS_STORAGE to the queue, e.g. postgresql://user@dbhost/moe}"
worker="${SLURM_ARRAY_TASK_ID:-${SKYPILOT_NODE_RANK:-0}}"
echo "moe-harness worker ${worker} on $(hostname): ${SUITE} -> ${OUT}" >&2
# NOTE: word splitting of MOE_HARNESS_WORKER_ARGS is wanted: it holds several options
# shellcheck disable=SC2086
exec moe-harness run "${SUITE}" --out "${OUT}" --no-progress ${MOE_HARNESS_WORKER_ARGS:-}
