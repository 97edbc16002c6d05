#!/usr/bin/env bash
# A one-node SLURM cluster on localhost, for the tests marked `slurm` and for trying the SLURM launchers.
#
#   eval "$(scripts/slurm_local.sh start)"   # prints `export SLURM_CONF=...`; sbatch, squeue, ... then use it
#   scripts/slurm_local.sh stop              # stops the daemons it started, each by its pid, and removes the dir
#   scripts/slurm_local.sh run CMD ARGS...   # start, CMD with SLURM_CONF exported, stop (whatever CMD's outcome)
#
# Needs root and Debian's slurm-wlm and munge (apt-get install slurm-wlm munge); tested with slurm-wlm 22.05.
# Everything (config, munge key and socket, spool, state, logs, pid files) lives in one temp dir, named by
# SLURM_LOCAL_DIR (default: a new dir under $TMPDIR, remembered in /tmp/slurm-local.dir for `stop`). The system's
# /etc/slurm and /etc/munge are not touched. No cgroups: processes are tracked by their parent pids
# (proctrack/linuxproc), tasks are not bound (task/none), no accounting (so submitit warns that sacct has none).
# The node advertises the machine's CPUs (nproc) and 90% of its memory (free), so mem_gb requests are honoured.
set -euo pipefail

POINTER=/tmp/slurm-local.dir  # where `start` records its dir for `stop`

start() {
    if [ "$(id -u)" != 0 ]; then
        echo "$0 start needs root (slurmd runs the jobs as any user)" >&2
        exit 1
    fi
    for tool in munged slurmctld slurmd sinfo; do
        command -v "$tool" >/dev/null || { echo "$tool is not installed: apt-get install slurm-wlm munge" >&2; exit 1; }
    done
    if [ -f "$POINTER" ] && [ -d "$(cat "$POINTER")" ]; then
        echo "a local cluster is already running from $(cat "$POINTER"); run '$0 stop' first" >&2
        exit 1
    fi
    local dir=${SLURM_LOCAL_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/slurm-local.XXXXXX")}
    mkdir -p "$dir"/{munge,spool,state,log}
    chmod 700 "$dir" "$dir/munge"
    echo "$dir" >"$POINTER"

    dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$dir/munge/munge.key"
    munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
        --pid-file="$dir/munge/munged.pid" --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munged.seed"

    local host cpus mem_mb
    host=$(hostname -s)
    cpus=$(nproc)
    mem_mb=$(free -m | awk '/^Mem:/ {print int($2 * 0.9)}')
    cat >"$dir/slurm.conf" <<EOF
ClusterName=local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
SlurmctldPort=${SLURM_LOCAL_PORT:-6817}
SlurmdPort=$((${SLURM_LOCAL_PORT:-6817} + 1))
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
# No cgroups here: track processes by parent pid, bind no tasks, gather no accounting.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
# The node as configured below, not as slurmd would count sockets and cores.
SlurmdParameters=config_overrides
ReturnToService=2
# Scheduling passes and finished-job bookkeeping fast enough for tests that take seconds.
SchedulerParameters=sched_interval=1
MinJobAge=600
KillWait=5
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    export SLURM_CONF="$dir/slurm.conf"
    slurmctld
    slurmd
    for _ in $(seq 60); do  # the node registers within seconds
        if sinfo -h -o %t 2>/dev/null | grep -qx idle; then
            echo "export SLURM_CONF=$SLURM_CONF"
            return
        fi
        sleep 0.5
    done
    echo "the node did not come up; logs in $dir/log:" >&2
    tail -n 20 "$dir"/log/*.log >&2
    stop
    exit 1
}

stop() {
    [ -f "$POINTER" ] || { echo "no local cluster is running" >&2; return 0; }
    local dir pid
    dir=$(cat "$POINTER")
    for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munge/munged.pid"; do
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null || continue
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    done
    rm -rf "$dir" "$POINTER"
}

run() {
    local env
    env=$(start)  # an assignment, so that set -e stops here if the cluster doesn't come up
    trap stop EXIT
    eval "$env"
    "$@"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    run) shift; run "$@" ;;
    *) echo "usage: $0 start|stop|run CMD [ARGS...]" >&2; exit 2 ;;
esac
