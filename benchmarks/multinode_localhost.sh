#!/usr/bin/env bash
# DeepSpeed's multi-node launch path, run for real on one machine.
#
#   bash benchmarks/multinode_localhost.sh DIR [--set KEY=VALUE ...]
#
# Two "nodes": ssh servers on 127.0.0.2 and 127.0.0.3, each in its own PID, mount and UTS
# namespaces (hostname varpo-node1/2, resolving to its own address), reached with a throwaway key.
# A hostfile names both; `deepspeed --hostfile … --master_addr 127.0.0.2 --launcher pdsh` starts one
# CPU rank (gloo) per node through pdsh → ssh → deepspeed.launcher.launch --node_rank=%n, and every
# variable a rank needs reaches it through a .deepspeed_env file (DS_ENV_FILE) and the runner's own
# PYTHON* exports: an ssh session starts with a clean environment.
#
# Runs (configs/cpu_zero3_2rank.yaml: PPO, every role under ZeRO-3; --set adds overrides to all):
#   DIR/one_node          the same config, 2 ranks on one node (the single-node launcher)
#   DIR/two_nodes         1 rank on each node, checkpoints every step
#   DIR/resumed_one_rank  a copy of two_nodes resumed on 1 rank for one more step (universal checkpoint)
#   failures: a hostfile with an unreachable host (preflight launch/check_hosts.py, then DeepSpeed
#   alone), and rank 1 SIGKILLed on node 2 mid-run: each must end within a bound (no hang).
# DIR/multinode.json compares them; DIR/logs/ keeps every log; DIR/cleanup.json says what was left.
#
# Needs root (namespaces, ssh servers; installs openssh-server and pdsh with apt-get if missing).
# Everything it starts is stopped and its keys/configs are removed on exit, also on failure or ^C.
# VARPO_MULTINODE_FAIL_AFTER_NODES=1 stops right after the nodes are up (tests the cleanup).
set -euo pipefail

if [[ $# -lt 1 || $1 == -h || $1 == --help ]]; then
    sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
OUT=$(realpath -m "$1"); shift
SETS=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --set) [[ $# -ge 2 ]] || { echo "error: --set needs KEY=VALUE" >&2; exit 2; }; SETS+=(--set "$2"); shift 2 ;;
        *) echo "error: unknown argument '$1' (expected --set KEY=VALUE)" >&2; exit 2 ;;
    esac
done
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CONFIG=${VARPO_MULTINODE_CONFIG:-configs/cpu_zero3_2rank.yaml}
ADDRS=(127.0.0.2 127.0.0.3)
DOWN=127.0.0.4                      # no ssh server there: the unreachable host
SSH_PORT=${VARPO_MULTINODE_SSH_PORT:-22}
STEPS=2                             # compared PPO steps; the resume adds one
RUN_BOUND_S=${VARPO_MULTINODE_RUN_BOUND_S:-1500}   # any launch still running after this is a hang
FAIL_BOUND_S=300                    # a failed job must be over within this

[[ $EUID -eq 0 ]] || { echo "error: run as root (ssh servers in new namespaces; apt-get for missing tools)" >&2; exit 2; }
for tool in unshare realpath; do command -v $tool >/dev/null || { echo "error: $tool not found" >&2; exit 2; }; done
missing=()
[[ -x /usr/sbin/sshd ]] || missing+=(openssh-server)
command -v ssh >/dev/null || missing+=(openssh-client)
command -v pdsh >/dev/null || missing+=(pdsh)
if [[ ${#missing[@]} -gt 0 ]]; then
    echo "installing ${missing[*]} (apt-get)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=$(python -c 'import sys; print(sys.executable)')
PYBIN=$(dirname "$PY")
mkdir -p "$OUT/logs"
rm -rf "$OUT"/{one_node,two_nodes,resumed_one_rank,failure_rank_killed,failure_unreachable} \
    "$OUT"/{multinode,timings,cleanup,preflight_ok,failure_unreachable_preflight,failure_unreachable_hosts,probe_two_nodes,ssh_session_env}.json
WORK=$(mktemp -d "${TMPDIR:-/tmp}/varpo-multinode.XXXXXX")
NODE_PIDS=()      # unshare processes (one per node); killing one kills its whole PID namespace
NODE_INITS=()     # the ssh servers: PID 1 inside each node
BG_PIDS=()        # runners and watchers still to stop at exit
PORTS=()
MADE_RUN_SSHD=0
T_START=$(date +%s)

descendants() { local p; for p in $(ps -o pid= --ppid "$1" 2>/dev/null); do echo "$p"; descendants "$p"; done; }

cleanup() {
    local rc=$?
    set +e
    # SIGKILL, never SIGTERM/SIGINT: DeepSpeed's pdsh runner answers those with
    # `pdsh … pkill -f "python -u -m deepspeed.launcher.launch"` on every host (here: inside the nodes)
    # whole trees: the single-node runner leaves its launcher and ranks running when it dies alone
    local tree=()
    for pid in "${BG_PIDS[@]}"; do tree+=($(descendants "$pid") "$pid"); done
    for pid in "${tree[@]}"; do kill -KILL "$pid" 2>/dev/null; done
    for pid in "${NODE_INITS[@]}" "${NODE_PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null; done
    for pid in "${BG_PIDS[@]}" "${NODE_PIDS[@]}"; do wait "$pid" 2>/dev/null; done
    sleep 1
    local left=()
    for pid in "${NODE_INITS[@]}" "${NODE_PIDS[@]}"; do [[ -d /proc/$pid ]] && ! grep -q '^State:.*Z' /proc/$pid/status 2>/dev/null && left+=("$pid"); done
    for port in "${PORTS[@]}"; do rm -f /dev/shm/deepspeed_allreduce_buffer_*_"$port"_*; done
    local shm_left=0
    for port in "${PORTS[@]}"; do for f in /dev/shm/deepspeed_allreduce_buffer_*_"$port"_*; do [[ -e $f ]] && shm_left=$((shm_left + 1)); done; done
    rm -rf "$WORK"
    [[ $MADE_RUN_SSHD == 1 ]] && rmdir /run/sshd 2>/dev/null
    local procs
    local procs ranks
    procs=$(ps -eo pid=,args= | grep -F "$WORK" | grep -v grep | wc -l)
    ranks=$(ps -eo pid=,args= | grep -F -- "--out $OUT/" | grep -v grep | wc -l)   # launchers and ranks of every run
    printf '{"exit_code": %d, "node_processes_left": %d, "processes_naming_workdir_left": %d, "run_processes_left": %d, "workdir_removed": %s, "shm_buffers_left": %d}\n' \
        "$rc" "${#left[@]}" "$procs" "$ranks" "$([[ -e $WORK ]] && echo false || echo true)" "$shm_left" > "$OUT/cleanup.json"
    echo "cleanup: $(cat "$OUT/cleanup.json")"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

now() { date +%s.%N; }
secs() { python -c "print(round($2 - $1, 1))"; }
new_port() {   # a free port → PORT (remembered: its shared-memory buffers are removed at exit)
    PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    PORTS+=("$PORT")
}

# Wait for pid at most $2 s; SIGKILL it when over (rc 124). Sets WAIT_RC.
wait_bounded() {
    local pid=$1 bound=$2 t0
    t0=$(date +%s)
    while kill -0 "$pid" 2>/dev/null && [[ $(($(date +%s) - t0)) -lt $bound ]] && ! grep -q '^State:.*Z' /proc/$pid/status 2>/dev/null; do sleep 1; done
    if kill -0 "$pid" 2>/dev/null && ! grep -q '^State:.*Z' /proc/$pid/status 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; WAIT_RC=124
    else
        WAIT_RC=0; wait "$pid" || WAIT_RC=$?
    fi
}

# ---- the nodes -----------------------------------------------------------------------------------
[[ -d /run/sshd ]] || { mkdir -p /run/sshd; MADE_RUN_SSHD=1; }   # sshd's privilege-separation dir
ssh-keygen -q -t ed25519 -N '' -C varpo-multinode -f "$WORK/id_ed25519"
cp "$WORK/id_ed25519.pub" "$WORK/authorized_keys"
: > "$WORK/known_hosts"
{
    echo "Host ${ADDRS[*]} $DOWN"
    echo "  User root"
    echo "  Port $SSH_PORT"
    echo "  IdentityFile $WORK/id_ed25519"
    echo "  IdentitiesOnly yes"
    echo "  UserKnownHostsFile $WORK/known_hosts"
    echo "  StrictHostKeyChecking yes"
    echo "  BatchMode yes"
    echo "  ConnectTimeout 5"
    echo "  ServerAliveInterval 5"
    echo "  ServerAliveCountMax 3"
    echo "  LogLevel ERROR"
} > "$WORK/ssh_config"
for i in "${!ADDRS[@]}"; do
    n=$((i + 1)); addr=${ADDRS[$i]}; d="$WORK/node$n"
    mkdir -p "$d"
    ssh-keygen -q -t ed25519 -N '' -C "varpo-node$n" -f "$d/host_key"
    host_entry=$addr; [[ $SSH_PORT == 22 ]] || host_entry="[$addr]:$SSH_PORT"
    echo "$host_entry $(cut -d' ' -f1,2 "$d/host_key.pub")" >> "$WORK/known_hosts"
    printf '127.0.0.1 localhost\n%s varpo-node%d\n' "$addr" "$n" > "$d/hosts"
    cat > "$d/sshd_config" <<EOF
ListenAddress $addr
Port $SSH_PORT
HostKey $d/host_key
PidFile none
AuthorizedKeysFile $WORK/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
MaxStartups 64
LogLevel ERROR
EOF
    # own PID namespace: the node's processes (and DeepSpeed's pkill) see only each other, and
    # killing the namespace's init ends them all; own UTS + mount namespace: own hostname and /etc/hosts
    unshare --pid --fork --kill-child --mount --uts --mount-proc \
        sh -c "mount --bind '$d/hosts' /etc/hosts && hostname varpo-node$n && exec /usr/sbin/sshd -D -e -f '$d/sshd_config'" \
        > "$OUT/logs/sshd_node$n.log" 2>&1 &
    NODE_PIDS+=($!)
done
for i in "${!ADDRS[@]}"; do
    for _ in $(seq 50); do
        init=$(ps -o pid= --ppid "${NODE_PIDS[$i]}" | tr -d ' ')
        [[ -n $init ]] && ssh -F "$WORK/ssh_config" "${ADDRS[$i]}" true 2>/dev/null && break
        sleep 0.2
    done
    ssh -F "$WORK/ssh_config" "${ADDRS[$i]}" true || { echo "error: node ${ADDRS[$i]} did not come up; see $OUT/logs/sshd_node$((i + 1)).log" >&2; exit 1; }
    NODE_INITS+=("$init")
done
echo "nodes up: ${ADDRS[*]} (ssh servers pid ${NODE_INITS[*]})"
[[ ${VARPO_MULTINODE_FAIL_AFTER_NODES:-0} == 1 ]] && { echo "VARPO_MULTINODE_FAIL_AFTER_NODES=1: stopping here" >&2; exit 3; }

# What an ssh session brings by itself (no DS_ACCELERATOR, no VARPO_*): the env file must.
ssh -F "$WORK/ssh_config" "${ADDRS[1]}" "$PY -c 'import json, os, socket; print(json.dumps({\"hostname\": socket.gethostname(), **{k: os.environ.get(k) for k in (\"DS_ACCELERATOR\", \"VARPO_CACHE\", \"PYTHONPATH\", \"OMP_NUM_THREADS\")}}))'" \
    > "$OUT/ssh_session_env.json"

# ---- launcher inputs -----------------------------------------------------------------------------
printf '%s slots=1\n' "${ADDRS[@]}" > "$WORK/hostfile"
printf '%s slots=1\n' "${ADDRS[0]}" "$DOWN" > "$WORK/hostfile_down"
VARPO_CACHE_DIR=$(realpath -m "${VARPO_CACHE:-$HOME/.cache/varpo}")
{   # KEY=VALUE lines only: DeepSpeed's runner reads no comments or blank lines
    echo "DS_ACCELERATOR=cpu"
    echo "VARPO_CACHE=$VARPO_CACHE_DIR"
    echo "VARPO_NO_PROGRESS=1"
    echo "VARPO_MULTINODE_RUN=$(basename "$WORK")"
    echo "OMP_NUM_THREADS=1"
    echo "TOKENIZERS_PARALLELISM=false"
    echo "HF_HUB_OFFLINE=1"
    echo "TRANSFORMERS_OFFLINE=1"
    echo "PATH=$PYBIN:\$PATH"          # expanded on the node: DeepSpeed quotes it with "…"
    for v in HF_HOME TORCH_EXTENSIONS_DIR TRITON_CACHE_DIR; do [[ -n ${!v:-} ]] && echo "$v=${!v}"; done
} > "$WORK/.deepspeed_env"
cp "$WORK/hostfile" "$OUT/hostfile"; cp "$WORK/.deepspeed_env" "$OUT/deepspeed_env"   # a record (no secrets)

export DS_ACCELERATOR=cpu VARPO_NO_PROGRESS=1 OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export VARPO_CACHE=$VARPO_CACHE_DIR
export PYTHONPATH="$REPO:$REPO/kernels${PYTHONPATH:+:$PYTHONPATH}"
export DS_ENV_FILE="$WORK/.deepspeed_env"            # absolute: replaces ~/.deepspeed_env and ./.deepspeed_env
export PDSH_SSH_ARGS_APPEND="-F $WORK/ssh_config"    # pdsh's ssh module appends these options
cd "$REPO"
PPO=(launch/train_ppo.py --config "$CONFIG")
declare -A T

multinode() {   # multinode HOSTFILE OUT LOG [--set …]: start DeepSpeed's pdsh runner in the background → RUNNER
    local hostfile=$1 out=$2 log=$3; shift 3
    new_port
    "$PY" -m deepspeed.launcher.runner --hostfile "$hostfile" --master_addr "${ADDRS[0]}" --master_port "$PORT" \
        --launcher pdsh --no_ssh_check "${PPO[@]}" --out "$out" "${SETS[@]}" "$@" > "$log" 2>&1 &
    RUNNER=$!; BG_PIDS+=("$RUNNER")
}

# ---- one node, 2 ranks (also builds the embedded task's caches before any multi-node launch) --------
echo "one node, 2 ranks → $OUT/one_node"
t0=$(now); new_port
"$PY" -m deepspeed.launcher.runner --num_nodes 1 --num_accelerators 2 --master_port "$PORT" "${PPO[@]}" \
    --out "$OUT/one_node" "${SETS[@]}" --set ppo.steps=$STEPS --set ppo.checkpoint_every=1 > "$OUT/logs/one_node.log" 2>&1 &
pid=$!; BG_PIDS+=("$pid"); wait_bounded "$pid" "$RUN_BOUND_S"
[[ $WAIT_RC == 0 ]] || { echo "error: the one-node run failed (rc $WAIT_RC): $OUT/logs/one_node.log" >&2; tail -20 "$OUT/logs/one_node.log" >&2; exit 1; }
T[one_node]=$(secs "$t0" "$(now)")

# ---- preflight: every host answers and imports varpo with the exported environment ---------------
"$PY" launch/check_hosts.py --hostfile "$WORK/hostfile" --json "$OUT/preflight_ok.json"

# ---- two nodes, 1 rank each ------------------------------------------------------------------------
echo "two nodes, 1 rank each → $OUT/two_nodes"
t0=$(now)
multinode "$WORK/hostfile" "$OUT/two_nodes" "$OUT/logs/two_nodes.log" --set ppo.steps=$STEPS --set ppo.checkpoint_every=1
"$PY" benchmarks/multinode_probe.py watch --node-pid "${NODE_INITS[0]}" --node-pid "${NODE_INITS[1]}" \
    --addr "${ADDRS[0]}" --addr "${ADDRS[1]}" --until-pid "$RUNNER" --out "$OUT/probe_two_nodes.json" &
watcher=$!; BG_PIDS+=("$watcher")
wait_bounded "$RUNNER" "$RUN_BOUND_S"; wait "$watcher" || true
[[ $WAIT_RC == 0 ]] || { echo "error: the two-node run failed (rc $WAIT_RC): $OUT/logs/two_nodes.log" >&2; tail -30 "$OUT/logs/two_nodes.log" >&2; exit 1; }
T[two_nodes]=$(secs "$t0" "$(now)")

# ---- resume the 2-node checkpoint on 1 rank ----------------------------------------------------------
echo "resume on one rank → $OUT/resumed_one_rank"
cp -a "$OUT/two_nodes" "$OUT/resumed_one_rank"
t0=$(now)
"$PY" "${PPO[@]}" --out "$OUT/resumed_one_rank" "${SETS[@]}" \
    --set ppo.steps=$((STEPS + 1)) --set ppo.checkpoint_every=1 > "$OUT/logs/resume.log" 2>&1 &
pid=$!; BG_PIDS+=("$pid"); wait_bounded "$pid" "$RUN_BOUND_S"   # in the background: a TERM trap runs at once
[[ $WAIT_RC == 0 ]] || { echo "error: resume failed (rc $WAIT_RC): $OUT/logs/resume.log" >&2; tail -20 "$OUT/logs/resume.log" >&2; exit 1; }
T[resume]=$(secs "$t0" "$(now)")

# ---- failure: an unreachable host --------------------------------------------------------------------
echo "failure: unreachable host $DOWN"
t0=$(now); rc=0
"$PY" launch/check_hosts.py --hostfile "$WORK/hostfile_down" --json "$OUT/failure_unreachable_hosts.json" \
    > "$OUT/logs/unreachable_preflight.log" 2>&1 || rc=$?
"$PY" - "$OUT" "$rc" "$(secs "$t0" "$(now)")" "$DOWN" <<'EOF'
import json, sys
out, rc, s, down = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
log = open(f"{out}/logs/unreachable_preflight.log").read()
json.dump({"exit_code": rc, "seconds": s, "names_host": down in log, "message": [x for x in log.splitlines() if "error" in x]},
          open(f"{out}/failure_unreachable_preflight.json", "w"), indent=2)
EOF
# DeepSpeed alone: pdsh reports the host, the started rank waits for its peers until deepspeed.rendezvous_timeout_s
t0=$(now)
multinode "$WORK/hostfile_down" "$OUT/failure_unreachable" "$OUT/logs/unreachable_deepspeed.log" --set deepspeed.timeout_minutes=1 --set deepspeed.rendezvous_timeout_s=60
wait_bounded "$RUNNER" "$FAIL_BOUND_S"
T[unreachable_rc]=$WAIT_RC; T[unreachable_s]=$(secs "$t0" "$(now)")
T[unreachable_names_host]=$(grep -q "$DOWN" "$OUT/logs/unreachable_deepspeed.log" && echo true || echo false)

# ---- failure: a rank killed on node 2 mid-run ----------------------------------------------------------
echo "failure: rank 1 killed on node 2"
multinode "$WORK/hostfile" "$OUT/failure_rank_killed" "$OUT/logs/rank_killed.log" --set ppo.steps=50
# kill once rank 1 runs on node 2 and a step is done (the ranks are deep in their collectives): the
# probe waits for both, however slow the host, and says which never came if the job ends first
rc=0
killed=$("$PY" benchmarks/multinode_probe.py kill-rank --node-pid "${NODE_INITS[1]}" --rank 1 \
    --metrics "$OUT/failure_rank_killed/metrics.jsonl" --after-steps 1 --until-pid "$RUNNER" --timeout "$RUN_BOUND_S") || rc=$?
if [[ $rc != 0 ]]; then
    echo "error: the rank-kill drill found nothing to kill; its job's log, $OUT/logs/rank_killed.log, ends:" >&2
    tail -30 "$OUT/logs/rank_killed.log" >&2
    exit 1
fi
t0=$(now)
wait_bounded "$RUNNER" "$FAIL_BOUND_S"
T[killed_rc]=$WAIT_RC; T[killed_s]=$(secs "$t0" "$(now)")
T[killed_names_host]=$(grep -q "${ADDRS[1]}: ssh exited with exit code" "$OUT/logs/rank_killed.log" && echo true || echo false)
sleep 2
T[killed_left]=$("$PY" benchmarks/multinode_probe.py leftovers --node-pid "${NODE_INITS[0]}" --node-pid "${NODE_INITS[1]}")

# ---- report ------------------------------------------------------------------------------------------
"$PY" - "$OUT/timings.json" <<EOF
import json, sys
json.dump({
    "one_node": ${T[one_node]}, "two_nodes": ${T[two_nodes]}, "resume": ${T[resume]},
    "unreachable_deepspeed_alone": {"exit_code": ${T[unreachable_rc]}, "seconds": ${T[unreachable_s]},
        "names_host": ${T[unreachable_names_host]^}, "bounded_by": "deepspeed.rendezvous_timeout_s=60 (varpo meets the ranks before the process group exists)",
        "hung": ${T[unreachable_rc]} == 124},
    "rank_killed": {"killed_pid": $killed, "exit_code": ${T[killed_rc]}, "seconds_after_kill": ${T[killed_s]},
        "names_host": ${T[killed_names_host]^},
        "hung": ${T[killed_rc]} == 124, "processes_left_in_nodes": ${T[killed_left]}},
    "total": $(($(date +%s) - T_START)),
}, open(sys.argv[1], "w"), indent=2)
EOF
"$PY" benchmarks/multinode_probe.py report "$OUT"
