#!/usr/bin/env bash
# A real single-node SLURM on this Debian machine, for the tests and for trying the SLURM launcher:
# munge, MariaDB + slurmdbd (so that sacct works, as submitit needs), slurmctld and slurmd, without systemd.
#
#   bash scripts/slurm_cluster.sh up       install what is missing (apt, as root), configure, start, wait until idle
#   bash scripts/slurm_cluster.sh down     stop every daemon (running jobs go on; the next up finds them)
#   bash scripts/slurm_cluster.sh status   exit 0 when sinfo and sacct answer
#
# `up` exits 3 with one line when it cannot run here (not root, or no apt-get and no SLURM installed).
# Debian 12 packages: munge slurmctld slurmd slurm-client slurmdbd mariadb-server (SLURM 22.05, /etc/slurm).
set -euo pipefail

CLUSTER=encoder-study
CONF=/etc/slurm
SPOOL=/var/spool/slurm
LOGS=/var/log/slurm
DB_PASSWORD=encoder-study
APT_LOG=/tmp/slurm_cluster_apt.log

say() { echo "slurm_cluster: $*" >&2; }
cannot() { say "cannot bring up SLURM here: $*"; exit 3; }

wait_for() {  # wait_for <seconds> <command...>: poll until the command succeeds
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { say "timed out waiting for: $*"; return 1; }
    sleep 0.5
  done
}

install_packages() {
  local missing=() binary
  for binary in munged mungekey slurmctld slurmd slurmdbd sbatch mariadbd; do
    command -v "$binary" >/dev/null 2>&1 || missing+=("$binary")
  done
  ((${#missing[@]} == 0)) && return 0
  command -v apt-get >/dev/null || cannot "${missing[*]} missing and no apt-get to install them"
  say "installing munge, SLURM and MariaDB (apt-get, log in $APT_LOG)"
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      munge slurmctld slurmd slurmdbd slurm-client mariadb-server; } >"$APT_LOG" 2>&1 \
    || { tail -n 5 "$APT_LOG" >&2; cannot "apt-get failed (log: $APT_LOG)"; }
}

start_munge() {
  mkdir -p /run/munge && chown munge:munge /run/munge
  [[ -s /etc/munge/munge.key ]] || runuser -u munge -- mungekey -c
  pgrep -x munged >/dev/null || runuser -u munge -- munged
  wait_for 10 bash -c 'munge -n | unmunge'
}

start_database() {
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  pgrep -x mariadbd >/dev/null || (setsid mysqld_safe </dev/null >/dev/null 2>&1 &)
  wait_for 60 mariadb -e 'select 1'  # root logs in through the unix socket, no password
  mariadb -e "create database if not exists slurm_acct_db;
    create user if not exists 'slurm'@'localhost' identified by '$DB_PASSWORD';
    grant all on slurm_acct_db.* to 'slurm'@'localhost'; flush privileges;"
}

write_configs() {
  mkdir -p "$CONF" "$SPOOL/ctld" "$SPOOL/d" "$LOGS"
  install -m 600 /dev/stdin "$CONF/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASSWORD
StorageLoc=slurm_acct_db
LogFile=$LOGS/slurmdbd.log
PidFile=/run/slurmdbd.pid
EOF
  cat >"$CONF/slurm.conf" <<EOF
ClusterName=$CLUSTER
SlurmctldHost=$(hostname -s)
SlurmUser=root
AuthType=auth/munge
# a requeued job waits cred_expire + 1 s before it may start again (default 120 s; 5 is the minimum)
AuthInfo=cred_expire=5
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
# no mail here; the default /bin/mail is missing and slurmctld logs an error for it
MailProg=/bin/true
# no cgroups in a container without systemd
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
# look at pending jobs every few seconds (default 60 s), so a requeued job restarts soon after its wait
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# a job without --mem would otherwise get the whole node's memory and keep every other job waiting
DefMemPerCPU=1024
# a node that was down comes back by itself once slurmd registers
ReturnToService=2
JobRequeue=1
KillWait=5
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
$(slurmd -C | head -n 1) State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

register_accounts() {  # each of these says "already exists" (and fails) from the second `up` on
  sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 || true
  sacctmgr -i add account research cluster="$CLUSTER" >/dev/null 2>&1 || true
  sacctmgr -i add user root account=research cluster="$CLUSTER" >/dev/null 2>&1 || true
}

node_ready() { sinfo -h -n "$1" -o %t | grep -Eq '^(idle|mix|alloc)'; }

up() {
  if [[ $EUID -ne 0 ]]; then
    status && { say "up: already running"; return 0; }
    cannot "starting the daemons needs root"
  fi
  install_packages
  start_munge
  start_database
  write_configs
  pgrep -x slurmdbd >/dev/null || slurmdbd
  wait_for 30 sacctmgr -n show cluster
  register_accounts
  pgrep -x slurmctld >/dev/null || slurmctld
  pgrep -x slurmd >/dev/null || slurmd
  wait_for 30 scontrol ping
  local node; node=$(slurmd -C | head -n 1 | sed 's/NodeName=\([^ ]*\).*/\1/')
  if ! wait_for 20 node_ready "$node"; then  # state kept from before `down` may say down or drained
    scontrol update nodename="$node" state=resume
    wait_for 20 node_ready "$node"
  fi
  say "up: cluster $CLUSTER, $(sinfo -h -o 'partition %P, %D node(s) %N, %c CPUs, %m MB, %t')"
}

stop() {  # stop <daemon>: TERM it, and wait until it is gone (a later `up` would take it for running)
  pkill -x "$1" || return 0
  wait_for 30 bash -c "! pgrep -x $1" || pkill -KILL -x "$1" || true
}

down() {
  stop slurmd
  stop slurmctld
  stop slurmdbd
  stop mariadbd  # mysqld_safe exits once the server has shut down cleanly
  stop munged
  say "down"
}

status() {
  sinfo -h >/dev/null 2>&1 && sacct -n -X -S now >/dev/null 2>&1
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
