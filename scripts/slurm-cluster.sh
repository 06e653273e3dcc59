#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for `make test-cluster` (tests/cluster): munge, slurmctld and
# slurmd as root, one node named after this host with more CPUs declared than it has (several tiny jobs at once),
# no accounting, partition `debug`. Idempotent: when the cluster is already up it only says so.
#
#   bash scripts/slurm-cluster.sh          # start (or confirm) the cluster
#   bash scripts/slurm-cluster.sh stop     # stop slurmd and slurmctld (munged stays)
#
# Needs root (and apt-get where slurm-wlm/munge are missing). On failure it prints one line
#   slurm-cluster: cannot start: <why>
# and exits with code 3. Logs: $SLURM_CLUSTER_LOGS (default /var/log/slurm-cluster).
set -uo pipefail

LOGS=${SLURM_CLUSTER_LOGS:-/var/log/slurm-cluster}
STATE=${SLURM_CLUSTER_STATE:-/var/spool/slurm-cluster}
CONF=/etc/slurm/slurm.conf
NODE=$(hostname -s 2>/dev/null || hostname)
CPUS=${SLURM_CLUSTER_CPUS:-8}
MEM_MB=${SLURM_CLUSTER_MEM_MB:-8000}
WAIT_S=${SLURM_CLUSTER_WAIT_S:-60}

fail() { echo "slurm-cluster: cannot start: $*"; exit 3; }
say() { echo "slurm-cluster: $*"; }

node_state() { sinfo -h -n "$NODE" -o '%T' 2>/dev/null | head -1; }
ctld_up() { scontrol ping 2>/dev/null | grep -q 'is UP'; }
pid_alive() {   # the daemon of a pid file runs (a zombie does not count: containers may not reap them)
    local pid
    [[ -f $1 ]] && pid=$(cat "$1") && [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null \
        && [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]]
}

stop_daemons() {
    local f
    for f in "$STATE/slurmd.pid" "$STATE/slurmctld.pid"; do
        if pid_alive "$f"; then
            kill "$(cat "$f")" 2>/dev/null
            for _ in $(seq 50); do pid_alive "$f" || break; sleep 0.2; done
        fi
        rm -f "$f"
    done
}

if [[ ${1:-} == stop ]]; then
    stop_daemons
    say "stopped"
    exit 0
fi

[[ $(id -u) == 0 ]] || fail "needs root (it starts munged, slurmctld and slurmd)"

# --- packages ------------------------------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    command -v apt-get >/dev/null || fail "slurmctld/slurmd/munged missing and no apt-get to install them"
    say "installing slurm-wlm and munge (apt-get) ..."
    { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y slurm-wlm munge; } \
        >"/tmp/slurm-cluster-apt.log" 2>&1 || fail "apt-get install slurm-wlm munge failed (see /tmp/slurm-cluster-apt.log)"
fi
for tool in slurmctld slurmd munged sinfo sbatch scontrol squeue; do
    command -v "$tool" >/dev/null || fail "$tool not found after installing slurm-wlm and munge"
done

mkdir -p "$LOGS" "$STATE/ctld" "$STATE/d" /etc/slurm || fail "cannot create $LOGS or $STATE"

# --- munge -------------------------------------------------------------------------------------------------------
getent passwd munge >/dev/null || fail "no 'munge' user (the munge package creates it)"
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
if [[ ! -s /etc/munge/munge.key ]]; then
    say "creating /etc/munge/munge.key"
    if command -v mungekey >/dev/null; then
        mungekey --create --keyfile=/etc/munge/munge.key --force >/dev/null 2>&1
    fi
    [[ -s /etc/munge/munge.key ]] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none \
        || fail "cannot create /etc/munge/munge.key"
fi
chown munge:munge /etc/munge /etc/munge/munge.key /var/lib/munge /var/log/munge /run/munge
chmod 0700 /etc/munge /var/lib/munge /var/log/munge
chmod 0400 /etc/munge/munge.key
chmod 0755 /run/munge
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged >>"$LOGS/munged.start.log" 2>&1 \
        || su -s /bin/sh munge -c /usr/sbin/munged >>"$LOGS/munged.start.log" 2>&1 \
        || fail "munged did not start (see $LOGS/munged.start.log and /var/log/munge/munged.log)"
    for _ in $(seq 50); do munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.2; done
    munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 || fail "munged is not answering (see /var/log/munge/munged.log)"
fi

# --- slurm.conf --------------------------------------------------------------------------------------------------
new_conf=$(cat <<EOF
# Written by scripts/slurm-cluster.sh: a one-node test cluster (no accounting).
ClusterName=skinlesion
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s)
AuthInfo=cred_expire=10
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
ReturnToService=2
KillWait=5
MinJobAge=30
InactiveLimit=0
Waittime=0
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
)

changed=0
if [[ ! -f $CONF ]] || [[ "$(cat "$CONF")" != "$new_conf" ]]; then
    changed=1
fi

if [[ $changed == 0 ]] && ctld_up && pid_alive "$STATE/slurmd.pid"; then
    st=$(node_state)
    case $st in
        idle|mixed|allocated|completing)
            say "already up: node $NODE $st, partition debug (logs: $LOGS)"
            exit 0 ;;
    esac
fi

if [[ $changed == 1 ]]; then
    [[ -f $CONF && ! -f $CONF.orig-before-slurm-cluster ]] && cp "$CONF" "$CONF.orig-before-slurm-cluster"
    printf '%s\n' "$new_conf" >"$CONF" || fail "cannot write $CONF"
    stop_daemons   # a changed configuration needs fresh daemons
fi

# --- daemons -----------------------------------------------------------------------------------------------------
if ! pid_alive "$STATE/slurmctld.pid"; then
    # -c: a fresh controller forgets the jobs of an earlier session (a test cluster; they would compete)
    slurmctld -c >>"$LOGS/slurmctld.start.log" 2>&1 || fail "slurmctld did not start (see $LOGS/slurmctld.log)"
fi
for _ in $(seq 50); do ctld_up && break; sleep 0.2; done
ctld_up || fail "slurmctld is not answering (see $LOGS/slurmctld.log)"
if ! pid_alive "$STATE/slurmd.pid"; then
    slurmd >>"$LOGS/slurmd.start.log" 2>&1 || fail "slurmd did not start (see $LOGS/slurmd.log)"
fi

deadline=$((SECONDS + WAIT_S))
resumed=0
while :; do
    st=$(node_state)
    case $st in
        idle|mixed|allocated|completing) break ;;
        down*|drain*|fail*)
            if [[ $resumed == 0 ]]; then
                scontrol update nodename="$NODE" state=resume >/dev/null 2>&1
                resumed=1
            fi ;;
    esac
    if ((SECONDS >= deadline)); then
        reason=$(sinfo -h -R -n "$NODE" -o '%E' 2>/dev/null | head -1)
        fail "node $NODE is '${st:-unknown}' after ${WAIT_S}s${reason:+ ($reason)} (see $LOGS/slurmd.log, $LOGS/slurmctld.log)"
    fi
    sleep 1
done
say "up: node $NODE $(node_state) ($CPUS CPUs declared), partition debug; config $CONF, logs $LOGS"
