#!/usr/bin/env bash
# A real SLURM on this Debian machine, for the tests and for trying the SLURM launcher: munge, MariaDB +
# slurmdbd (so that sacct works, as submitit needs), slurmctld and one slurmd per node, without systemd.
#
#   bash scripts/slurm_cluster.sh up [--nodes N]  install what is missing (apt, as root), configure, start,
#                                                 wait until every node is idle
#   bash scripts/slurm_cluster.sh down            stop every daemon (running jobs go on; the next up finds
#                                                 them) and remove the nodes' namespaces and links
#   bash scripts/slurm_cluster.sh status          exit 0 when sinfo and sacct answer
#   bash scripts/slurm_cluster.sh lose <node>     the node dies: SIGKILL to its slurmd and all it runs
#   bash scripts/slurm_cluster.sh revive <node>   the node boots again: its slurmd starts and registers
#
# One node (the default) is this machine, under its own name. With --nodes N >= 2, node es-node<i> is a
# network namespace of its own, joined by a veth pair to the bridge esbr0 (10.77.0.0/24): the host side is
# 10.77.0.1, where slurmctld and slurmdbd listen, and node i is 10.77.0.1<i>. Each node has its own hostname
# (a UTS namespace), /etc/hosts (/etc/netns/<node>/hosts, bound in a mount namespace), spool, pid and log; its
# namespace has no route but the bridge, so its traffic goes to the other nodes and the host side only.
# Every node sees the same disk, as a cluster's shared filesystem. Debian's slurmd is built without
# --enable-multiple-slurmd: in its own namespace each slurmd sees one node.
#
# `up` exits 3 with one line when it cannot run here (not root, or no apt-get and no SLURM installed); where
# it cannot make namespaces it says so in one line and starts the one-node cluster.
# Debian 12 packages: munge slurmctld slurmd slurm-client slurmdbd mariadb-server (SLURM 22.05, /etc/slurm).
set -euo pipefail

CLUSTER=encoder-study
CONF=/etc/slurm
SPOOL=/var/spool/slurm
LOGS=/var/log/slurm
DB_PASSWORD=encoder-study
APT_LOG=/tmp/slurm_cluster_apt.log
BRIDGE=esbr0
SUBNET=10.77.0
HOST_ADDR=$SUBNET.1

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

# --- the nodes: this machine, or es-node1..N in namespaces ---

namespaced_names() { local i; for ((i = 1; i <= $1; i++)); do echo "es-node$i"; done; }
node_addr() { echo "$SUBNET.1${1#es-node}"; }  # es-node2 -> 10.77.0.12
node_names() { sed -n 's/^NodeName=\([^ ]*\).*/\1/p' "$@"; }  # of slurm.conf's node lines (a file, or stdin)
configured_nodes() { [[ -f $CONF/slurm.conf ]] && node_names "$CONF/slurm.conf"; }

node_lines() {  # slurm.conf's node lines for a cluster of <nodes>
  local hardware node
  hardware=$(slurmd -C | head -n 1)
  if (($1 == 1)); then
    echo "$hardware"
    return
  fi
  for node in $(namespaced_names "$1"); do  # each namespace sees the whole machine: CPUs=2 ... RealMemory=...
    echo "NodeName=$node NodeAddr=$(node_addr "$node") ${hardware#NodeName=* }"
  done
}

make_namespaces() {  # the bridge, and per node a namespace with its veth pair, address and hosts file
  local node link hosts
  ip link show "$BRIDGE" >/dev/null 2>&1 \
    || { ip link add "$BRIDGE" type bridge && ip addr add "$HOST_ADDR/24" dev "$BRIDGE"; } || return 1
  ip link set "$BRIDGE" up || return 1
  hosts="127.0.0.1 localhost"$'\n'"$HOST_ADDR $(hostname -s)"
  for node in $(namespaced_names "$1"); do hosts+=$'\n'"$(node_addr "$node") $node"; done
  for node in $(namespaced_names "$1"); do
    mkdir -p "/etc/netns/$node" && echo "$hosts" >"/etc/netns/$node/hosts" || return 1
    [[ -e /run/netns/$node ]] && continue
    link=es-veth${node#es-node}
    ip netns add "$node" \
      && ip link add "$link" type veth peer name eth0 netns "$node" \
      && ip link set "$link" master "$BRIDGE" up \
      && ip netns exec "$node" ip addr add "$(node_addr "$node")/24" dev eth0 \
      && ip netns exec "$node" ip link set eth0 up \
      && ip netns exec "$node" ip link set lo up || return 1
  done
}

remove_namespaces() {  # every namespace, link and hosts file that make_namespaces made
  local node
  for node in $(ip netns list 2>/dev/null | grep -o '^es-node[0-9]*' || true); do
    ip netns pids "$node" | xargs -r kill -KILL
    ip netns del "$node"
  done
  rm -rf /etc/netns/es-node*
  ip link del "$BRIDGE" 2>/dev/null || true  # the veth ends went with their namespaces
}

slurmd_pids() {  # the pids of the slurmd of node <node>
  local pid
  for pid in $(pgrep -x slurmd || true); do  # a node's own namespace, or none for this machine's
    if [[ $(ip netns identify "$pid" 2>/dev/null || true) == "${1#"$(hostname -s)"}" ]]; then echo "$pid"; fi
  done
}

start_slurmd() {  # in the node's namespace, under the node's hostname, with the node's /etc/hosts
  [[ -n $(slurmd_pids "$1") ]] && return 0
  mkdir -p "$SPOOL/d-$1"
  if [[ $1 == es-node* ]]; then  # not `ip netns exec`: the fresh /sys it mounts has no cgroup, and slurmd needs it
    nsenter --net="/run/netns/$1" unshare --uts --mount \
      sh -c "mount --bind /etc/netns/$1/hosts /etc/hosts && hostname $1 && exec slurmd -N $1"
  else
    slurmd
  fi
}

stop_slurmds() {
  local node
  for node in $(configured_nodes || true); do slurmd_pids "$node" | xargs -r kill; done
  wait_for 30 bash -c '! pgrep -x slurmd' || pkill -KILL -x slurmd || true
}

# --- configuration ---

write_configs() {  # write_configs <nodes>
  local controller=localhost
  (($1 == 1)) || controller=$HOST_ADDR  # where the nodes reach slurmctld and slurmdbd
  mkdir -p "$CONF" "$SPOOL/ctld" "$LOGS"
  install -m 600 /dev/stdin "$CONF/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=$controller
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
SlurmctldHost=$(hostname -s)($controller)
SlurmUser=root
AuthType=auth/munge
# a requeued job waits cred_expire + 1 s before it may start again (default 120 s; 5 is the minimum)
AuthInfo=cred_expire=5
StateSaveLocation=$SPOOL/ctld
# %n: the node's name, so that the nodes' slurmd keep apart on the one disk
SlurmdSpoolDir=$SPOOL/d-%n
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd-%n.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd-%n.log
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
# a node whose slurmd stops answering is down after 10 s (default 300 s, a real cluster's patience)
SlurmdTimeout=10
JobRequeue=1
KillWait=5
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$controller
JobAcctGatherType=jobacct_gather/none
$(node_lines "$1" | sed 's/$/ State=UNKNOWN/')
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

register_accounts() {  # each of these says "already exists" (and fails) from the second `up` on
  sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 || true
  sacctmgr -i add account research cluster="$CLUSTER" >/dev/null 2>&1 || true
  sacctmgr -i add user root account=research cluster="$CLUSTER" >/dev/null 2>&1 || true
}

node_ready() { sinfo -h -n "$1" -o %t | grep -Eq '^(idle|mix|alloc)'; }

# --- commands ---

up() {
  local nodes=1 node
  case "${1:-}" in
    --nodes) nodes=${2:-}; [[ $nodes =~ ^[1-9]$ ]] || { say "up: --nodes takes a count from 1 to 9"; exit 2; } ;;
    "") ;;
    *) say "up: unknown option '$1' (up [--nodes N])"; exit 2 ;;
  esac
  if [[ $EUID -ne 0 ]]; then
    status && { say "up: already running"; return 0; }
    cannot "starting the daemons needs root"
  fi
  install_packages
  if ((nodes > 1)) && ! make_namespaces "$nodes" >/dev/null 2>&1; then
    remove_namespaces
    say "up: cannot make network namespaces here (ip netns, veth, bridge need root in a kernel that has them):" \
        "one node, not $nodes"
    nodes=1
  fi
  if [[ $(configured_nodes || true) != "$(node_lines "$nodes" | node_names)" ]]; then
    stop_slurmds  # another shape than the running one: the controller reads the new nodes when it starts
    stop slurmctld
    ((nodes > 1)) || remove_namespaces
  fi
  start_munge
  start_database
  write_configs "$nodes"
  pgrep -x slurmdbd >/dev/null || slurmdbd
  wait_for 30 sacctmgr -n show cluster
  register_accounts
  pgrep -x slurmctld >/dev/null || slurmctld
  for node in $(configured_nodes); do start_slurmd "$node"; done
  wait_for 30 scontrol ping
  for node in $(configured_nodes); do
    if ! wait_for 20 node_ready "$node"; then  # state kept from before `down` may say down or drained
      scontrol update nodename="$node" state=resume
      wait_for 20 node_ready "$node"
    fi
  done
  say "up: cluster $CLUSTER, $(sinfo -h -o 'partition %P, %D node(s) %N, %c CPUs and %m MB each, %t')"
}

stop() {  # stop <daemon>: TERM it, and wait until it is gone (a later `up` would take it for running)
  pkill -x "$1" || return 0
  wait_for 30 bash -c "! pgrep -x $1" || pkill -KILL -x "$1" || true
}

down() {
  stop_slurmds
  remove_namespaces
  stop slurmctld
  stop slurmdbd
  stop mariadbd  # mysqld_safe exits once the server has shut down cleanly
  stop munged
  say "down"
}

status() {
  sinfo -h >/dev/null 2>&1 && sacct -n -X -S now >/dev/null 2>&1
}

namespaced_node() {  # exits with one line unless <node> is a node in a namespace of this cluster
  [[ $1 == es-node* && -e /run/netns/$1 ]] && return 0
  say "no node '$1' in a namespace here; the nodes: $(configured_nodes | tr '\n' ' ')"
  exit 2
}

lose() {  # as a power cut: everything on the node dies at once, and nothing on it writes another byte
  namespaced_node "$1"
  ip netns pids "$1" | xargs -r kill -KILL
  say "lost $1: every process in its namespace killed"
}

revive() {
  namespaced_node "$1"
  start_slurmd "$1"
  wait_for 30 node_ready "$1" || { scontrol update nodename="$1" state=resume && wait_for 30 node_ready "$1"; }
  say "revived $1: $(sinfo -h -n "$1" -o %t)"
}

case "${1:-}" in
  up) up "${@:2}" ;;
  down) down ;;
  status) status ;;
  lose) lose "${2:-}" ;;
  revive) revive "${2:-}" ;;
  *) echo "usage: $0 up [--nodes N] | down | status | lose <node> | revive <node>" >&2; exit 2 ;;
esac
