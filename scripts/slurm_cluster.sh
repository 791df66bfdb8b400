#!/usr/bin/env bash
# A real single-node SLURM on this Debian machine, for the tests and for trying the SLURM launcher:
# munge, MariaDB + slurmdbd (so that sacct works, as submitit needs), slurmctld and slurmd, without systemd.
#
#   bash scripts/slurm_cluster.sh up       install what is missing (apt, as root), configure, start, wait until idle
#   bash scripts/slurm_cluster.sh down     stop every daemon
#   bash scripts/slurm_cluster.sh status   exit 0 when sinfo and sacct answer
#
# `up` exits 3 with one line when it cannot run here (not root, no apt-get and no SLURM installed).
set -euo pipefail

CLUSTER=encoder-study
CONF=/etc/slurm
SPOOL=/var/spool/slurm
LOGS=/var/log/slurm
DB_PASSWORD=encoder-study

say() { echo "slurm_cluster: $*" >&2; }

wait_for() {  # wait_for <seconds> <command...>: poll until the command succeeds
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { say "timed out waiting for: $*"; return 1; }
    sleep 0.5
  done
}

install_packages() {
  local missing=()
  for binary in munged slurmctld slurmd slurmdbd sbatch mariadbd; do
    command -v "$binary" >/dev/null 2>&1 || missing+=("$binary")
  done
  ((${#missing[@]} == 0)) && return 0
  if [[ $EUID -ne 0 ]] || ! command -v apt-get >/dev/null; then
    say "cannot bring up SLURM here: ${missing[*]} missing, and installing needs root and apt-get"
    exit 3
  fi
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    munge slurmctld slurmd slurmdbd slurm-client mariadb-server >/dev/null
}

start_munge() {
  mkdir -p /run/munge && chown munge:munge /run/munge
  [[ -s /etc/munge/munge.key ]] || runuser -u munge -- mungekey -c
  pgrep -x munged >/dev/null || runuser -u munge -- munged
  wait_for 10 bash -c 'munge -n | unmunge'
}

start_database() {
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  if ! pgrep -x mariadbd >/dev/null; then
    (mysqld_safe --skip-networking=0 --bind-address=127.0.0.1 >/dev/null 2>&1 &)
  fi
  wait_for 60 mariadb -e 'select 1'
  mariadb -e "create database if not exists slurm_acct_db;
    create user if not exists 'slurm'@'localhost' identified by '$DB_PASSWORD';
    grant all on slurm_acct_db.* to 'slurm'@'localhost'; flush privileges;"
}

write_configs() {
  mkdir -p "$CONF" "$SPOOL/ctld" "$SPOOL/d" "$LOGS"
  cat >"$CONF/slurmdbd.conf" <<EOF
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
  chmod 600 "$CONF/slurmdbd.conf"
  cat >"$CONF/slurm.conf" <<EOF
ClusterName=$CLUSTER
SlurmctldHost=$(hostname -s)
SlurmUser=root
AuthType=auth/munge
# a requeued job may start again after cred_expire + 1 s (default 120 s)
AuthInfo=cred_expire=5
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
# no cgroups in a container without systemd
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# a node that was down comes back by itself once slurmd registers
ReturnToService=2
JobRequeue=1
KillWait=5
MinJobAge=60
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
$(slurmd -C | head -n 1) State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

up() {
  install_packages
  start_munge
  start_database
  write_configs
  pgrep -x slurmdbd >/dev/null || slurmdbd
  wait_for 30 sacctmgr -n show cluster
  sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 || true
  sacctmgr -i add account research cluster="$CLUSTER" >/dev/null 2>&1 || true
  sacctmgr -i add user root account=research cluster="$CLUSTER" >/dev/null 2>&1 || true
  pgrep -x slurmctld >/dev/null || slurmctld
  pgrep -x slurmd >/dev/null || slurmd
  wait_for 30 scontrol ping
  local node; node=$(slurmd -C | head -n 1 | sed 's/NodeName=\([^ ]*\).*/\1/')
  if ! wait_for 20 bash -c "sinfo -h -n $node -o %t | grep -Eq '^(idle|mix|alloc)'"; then
    scontrol update nodename="$node" state=resume
    wait_for 20 bash -c "sinfo -h -n $node -o %t | grep -Eq '^(idle|mix|alloc)'"
  fi
  say "up: $(sinfo -h -o '%P %D node(s) %c CPUs %m MB %t')"
}

down() {
  for daemon in slurmd slurmctld slurmdbd; do pkill -x "$daemon" || true; done
  mariadb-admin shutdown >/dev/null 2>&1 || pkill -x mariadbd || true
  pkill -x munged || true
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
