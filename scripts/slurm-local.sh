#!/usr/bin/env bash
# A one-node SLURM on localhost, for running examples/slurm/*.sbatch for real (tests/test_slurm_local.py).
#
#   scripts/slurm-local.sh start [DIR]   # munged + slurmctld + slurmd, configured under DIR; waits for the node
#   scripts/slurm-local.sh stop  [DIR]   # stops the three daemons started from DIR
#   scripts/slurm-local.sh env   [DIR]   # prints `export SLURM_CONF=...` for sbatch/squeue/scontrol
#
# Needs Debian's slurm-wlm and munge (apt-get install -y slurm-wlm munge) and root (slurmd runs jobs as
# the submitting user). DIR defaults to /tmp/ptycli-slurm. Nothing is written outside DIR except
# munge's key and socket (/etc/munge, /run/munge), which the munge package owns. No cgroups needed:
# process tracking is by process tree (proctrack/linuxproc), so it also runs in a container.
# One partition "debug" with all CPUs of this machine; finished jobs stay visible to scontrol for
# 5 minutes, and JobRequeue=1 so `scontrol requeue` (the sbatch examples' exit-75 path) works.
set -euo pipefail
cmd=${1:-}
dir=${2:-/tmp/ptycli-slurm}
conf=$dir/slurm.conf

need() { command -v "$1" >/dev/null || { echo "slurm-local: $1 not found (apt-get install -y slurm-wlm munge)" >&2; exit 2; }; }

write_conf() {
    local host cpus mem
    host=$(hostname -s)
    cpus=$(nproc)
    mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))
    mkdir -p "$dir/state" "$dir/spool" "$dir/log"
    cat > "$conf" <<EOF
ClusterName=ptycli-local
SlurmctldHost=$host
SlurmctldPort=${SLURMCTLD_PORT:-6817}
SlurmdPort=${SLURMD_PORT:-6818}
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
MinJobAge=300
KillWait=10
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
    # slurmd looks for cgroup.conf next to slurm.conf even when no cgroup plugin is used
    : > "$dir/cgroup.conf"
}

start_munge() {
    if munge -n </dev/null >/dev/null 2>&1; then
        return
    fi
    mkdir -p /run/munge && chown munge:munge /run/munge 2>/dev/null || true
    [ -f /etc/munge/munge.key ] || { mungekey --create 2>/dev/null || create-munge-key -f; }
    # munged refuses to start as root unless forced; --force also accepts the container's permissions
    if id munge >/dev/null 2>&1; then
        su -s /bin/sh munge -c "munged --force" || munged --force
    else
        munged --force
    fi
    touch "$dir/munged.started"  # so `stop` ends the munged that this script started, and no other
    for _ in $(seq 50); do munge -n </dev/null >/dev/null 2>&1 && return; sleep 0.1; done
    echo "slurm-local: munged did not start" >&2; exit 1
}

case "$cmd" in
start)
    need slurmctld; need slurmd; need munged; need sinfo
    [ "$(id -u)" = 0 ] || { echo "slurm-local: run as root (slurmd starts jobs as their user)" >&2; exit 2; }
    write_conf
    start_munge
    export SLURM_CONF=$conf
    slurmctld -f "$conf"
    slurmd -f "$conf"
    # the node comes up UNKNOWN, then IDLE once slurmd has registered with slurmctld
    for _ in $(seq 60); do
        state=$(sinfo -h -N -o %T 2>/dev/null | head -1 || true)
        case "$state" in idle*|mixed*|allocated*) echo "export SLURM_CONF=$conf"; exit 0 ;; esac
        sleep 1
    done
    echo "slurm-local: the node did not come up (see $dir/log/)" >&2
    tail -5 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
    exit 1
    ;;
stop)
    for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid"; do
        [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    for _ in $(seq 50); do
        alive=0
        for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid"; do
            [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null && alive=1
        done
        [ "$alive" = 0 ] && break
        sleep 0.2
    done
    if [ -f "$dir/munged.started" ] && [ -f /run/munge/munged.pid ]; then
        kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true
        rm -f "$dir/munged.started"
    fi
    ;;
env)
    echo "export SLURM_CONF=$conf"
    ;;
*)
    echo "usage: $0 start|stop|env [DIR]" >&2
    exit 2
    ;;
esac
