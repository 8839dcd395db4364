#!/usr/bin/env bash
# A single-node SLURM cluster on this Debian machine, to try and test hydra/launcher=submitit_slurm.
#
#   scripts/slurm_cluster.sh start     install slurm-wlm + munge if missing (apt-get), write the config,
#                                      start munged, slurmctld and slurmd (nothing to do if running)
#   scripts/slurm_cluster.sh stop      cancel the cluster's jobs, stop the three daemons by pid
#   scripts/slurm_cluster.sh status    which daemons run (exit 0: all three, 3: none, 1: some)
#   scripts/slurm_cluster.sh env       the shell lines that point SLURM's commands at this cluster:
#                                      eval "$(scripts/slurm_cluster.sh env)"
#   scripts/slurm_cluster.sh run CMD   start, run CMD with that environment, stop again (if it
#                                      started the cluster) whatever CMD's outcome; CMD's exit status
#
# Needs root (slurmd runs jobs as their user). Everything it writes lives under one state folder,
# $LORASCOPE_SLURM_DIR (default /tmp/lorascope-slurm): config, munge key and socket, controller
# state, spool, logs, pid files. Nothing in /etc is changed, so SLURM's commands need SLURM_CONF
# (the `env` lines). One partition, `local`, holds the one node with this machine's CPUs and memory.
# There is no accounting storage: sacct does not work, squeue does.
set -euo pipefail

STATE=${LORASCOPE_SLURM_DIR:-/tmp/lorascope-slurm}
PARTITION=local
CONF=$STATE/etc/slurm.conf
SOCKET=$STATE/munge/munge.socket
RUN=$STATE/run
LOG=$STATE/log
DAEMONS=(munged slurmctld slurmd) # start order; stopped in reverse

say() { echo "slurm_cluster: $*"; }
die() {
    echo "slurm_cluster: error: $*" >&2
    exit 1
}

export SLURM_CONF=$CONF

pidfile() { echo "$RUN/$1.pid"; }

# The pid of a running daemon, from its pid file; empty if it is not running. The process name is
# checked too: a stale pid file may name a pid that the system has since given to another process.
running_pid() {
    local file pid
    file=$(pidfile "$1")
    [[ -s $file ]] || return 0
    pid=$(tr -d '[:space:]' <"$file")
    if [[ $pid =~ ^[0-9]+$ ]] && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$1" ]]; then
        echo "$pid"
    fi
}

install_packages() {
    local missing=()
    command -v munged >/dev/null || missing+=(munge)
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null ||
        missing+=(slurm-wlm)
    [[ ${#missing[@]} -eq 0 ]] && return 0
    command -v apt-get >/dev/null || die "${missing[*]} missing and no apt-get to install them"
    say "installing ${missing[*]} with apt-get"
    local t0=$SECONDS
    apt-get update -qq >"$LOG/apt.log" 2>&1 || die "apt-get update failed: see $LOG/apt.log"
    # On a machine with systemd, Debian's own munge and slurm services may start too: this cluster
    # shares no file, socket or port with them (they would need /etc/slurm/slurm.conf).
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge \
        >>"$LOG/apt.log" 2>&1 || die "apt-get install slurm-wlm munge failed: see $LOG/apt.log"
    say "installed in $((SECONDS - t0)) s"
}

write_config() {
    local node cpus mem
    # slurmd -C prints this machine as SLURM sees it: "NodeName=vm CPUs=2 ... RealMemory=24105".
    node=$(slurmd -C | head -1)
    local name=${node#NodeName=}
    name=${name%% *}
    cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$node")
    mem=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
    [[ -n $name && -n $cpus && -n $mem ]] || die "could not read this machine from slurmd -C: $node"
    cat >"$CONF" <<EOF
# Written by scripts/slurm_cluster.sh: a one-node cluster on $name.
ClusterName=lorascope
SlurmctldHost=$name(127.0.0.1)
SlurmctldPort=6817
SlurmdPort=6818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$(pidfile slurmctld)
SlurmdPidFile=$(pidfile slurmd)
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
# No cgroups here (containers, CI machines): track job processes by parent pid, bind no CPUs.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# A job that does not ask for memory gets its CPUs' share, not the whole node.
DefMemPerCPU=$((mem / cpus))
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# Refuse at sbatch time a job that no node of its partition can ever run (as most sites do), instead
# of leaving it pending forever.
EnforcePartLimits=ALL
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
NodeName=$name NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$name Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munged() {
    local key=$STATE/munge/munge.key
    if [[ ! -s $key ]]; then
        dd if=/dev/urandom of="$key" bs=1024 count=1 status=none
    fi
    chmod 0400 "$key"
    # munged refuses to run as root unless forced; the key and socket are private to this state folder.
    munged --force --socket="$SOCKET" --key-file="$key" --pid-file="$(pidfile munged)" \
        --log-file="$LOG/munged.log" --seed-file="$STATE/munge/munged.seed"
    wait_for munge_ok munged || die "munged does not answer (see $LOG/munged.log)"
}

munge_ok() { munge -n -S "$SOCKET" 2>/dev/null | unmunge -S "$SOCKET" >/dev/null 2>&1; }
ctld_ok() { scontrol ping 2>/dev/null | grep -q "is UP"; }
node_state() { sinfo --noheader --partition="$PARTITION" --format=%T 2>/dev/null | head -1; }
node_ok() { [[ "$(node_state)" =~ ^(idle|mixed|allocated|completing)$ ]]; }

# wait_for CHECK DAEMON: up to 30 s for CHECK to succeed, unless DAEMON is gone (after the 3 s
# it may take a daemon to write its pid file).
wait_for() {
    local i
    for ((i = 0; i < 60; i++)); do
        "$1" && return 0
        [[ $i -lt 6 || -n $(running_pid "$2") ]] || return 1
        sleep 0.5
    done
    return 1
}

start() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (slurmd starts jobs as their users)"
    mkdir -p "$STATE"/{etc,munge,ctld,spool,run,log}
    chmod 0700 "$STATE/munge"
    install_packages
    local missing=() d
    for d in "${DAEMONS[@]}"; do
        [[ -n $(running_pid "$d") ]] || missing+=("$d")
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        say "already running (partition $PARTITION, SLURM_CONF=$CONF)"
        return 0
    fi
    local t0=$SECONDS
    # The config follows this machine; rewritten only while the controller is down.
    [[ -n $(running_pid slurmctld) ]] || write_config
    [[ -n $(running_pid munged) ]] || start_munged
    if [[ -z $(running_pid slurmctld) ]]; then
        slurmctld -f "$CONF"
        wait_for ctld_ok slurmctld || die "slurmctld does not answer (see $LOG/slurmctld.log)"
    fi
    [[ -n $(running_pid slurmd) ]] || slurmd -f "$CONF"
    wait_for node_ok slurmd || die "the node is not idle but '$(node_state)' (see $LOG/slurmd.log and sinfo -R)"
    say "up in $((SECONDS - t0)) s: partition $PARTITION, $(sinfo --noheader --format='%c CPUs, %m MB' \
        --partition="$PARTITION"); export SLURM_CONF=$CONF"
}

# stop_daemon NAME: SIGTERM, up to 10 s to exit, then SIGKILL.
stop_daemon() {
    local pid i
    pid=$(running_pid "$1")
    if [[ -n $pid ]]; then
        kill "$pid" 2>/dev/null || true
        for ((i = 0; i < 20; i++)); do
            [[ -d /proc/$pid ]] || break
            sleep 0.5
        done
        if [[ -d /proc/$pid ]]; then
            say "$1 (pid $pid) did not stop on SIGTERM; killing it"
            kill -9 "$pid" 2>/dev/null || true
        fi
        say "stopped $1 (pid $pid)"
    fi
    rm -f "$(pidfile "$1")"
}

stop() {
    if [[ -n $(running_pid slurmctld) ]] && ctld_ok; then
        # Jobs first, so that no job step outlives its slurmd.
        if [[ -n $(squeue --noheader --partition="$PARTITION" --format=%i) ]]; then
            say "cancelling the jobs still on partition $PARTITION"
            scancel --partition="$PARTITION" || true
            local i
            for ((i = 0; i < 60; i++)); do
                [[ -z $(squeue --noheader --partition="$PARTITION" --states=PD,R,CG,S --format=%i) ]] && break
                sleep 0.5
            done
        fi
    fi
    local i
    [[ -n "$(running_pid munged)$(running_pid slurmctld)$(running_pid slurmd)" ]] || say "not running"
    for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
        stop_daemon "${DAEMONS[i]}"
    done
}

status() {
    local d pid up=0
    for d in "${DAEMONS[@]}"; do
        pid=$(running_pid "$d")
        if [[ -n $pid ]]; then
            echo "$d: running (pid $pid)"
            up=$((up + 1))
        else
            echo "$d: stopped"
        fi
    done
    if [[ -n $(running_pid slurmctld) ]]; then
        sinfo --partition="$PARTITION" 2>/dev/null || true
    fi
    echo "SLURM_CONF=$CONF"
    [[ $up -eq ${#DAEMONS[@]} ]] && return 0
    [[ $up -eq 0 ]] && return 3
    return 1
}

print_env() {
    echo "export SLURM_CONF=$CONF"
    echo "export LORASCOPE_SLURM_PARTITION=$PARTITION"
}

run() {
    [[ $# -gt 0 ]] || die "run needs a command"
    if ! status >/dev/null; then
        # The cluster goes down with this script, whatever ends it (a failed start included); a
        # signal is handled once CMD has ended, CMD being in the foreground.
        trap stop EXIT
        trap 'exit 130' INT TERM
    fi
    start
    export LORASCOPE_SLURM_PARTITION=$PARTITION
    local rc=0
    "$@" || rc=$?
    return "$rc"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status) status ;;
env) print_env ;;
run)
    shift
    run "$@"
    ;;
*)
    echo "usage: $0 start|stop|status|env|run CMD..." >&2
    exit 2
    ;;
esac
