# shellcheck shell=bash
# pair.sh (bash, sourced): the `pair` job's side, two hosts in one kernel, on the host or in
# the VM, as root. The job script scripts/rxe-vm writes sources this file by its path in the
# checkout and calls pair_main. Its own file for the reasons run.sh gives.
#
# Two rxe devices on the two ends of a veth, index 0 the server's, 1 the client's; each end in
# a network namespace of its own where the kernel's rxe reaches across them (a probe decides).
#
# The set-up functions print what they compute on stdout (or, when they fail, why: one line)
# and their chatter on stderr, which pair_main sends to the set-up log (shown only on failure).

PAIR_NS=(rxe-server rxe-client)
PAIR_DEV=(rxe0 rxe1)
PAIR_NETDEV=(veth0 veth1)
PAIR_MAC=(02:00:00:00:0a:01 02:00:00:00:0b:01)
PAIR_MERGE=${BASH_SOURCE[0]%/*}/merge-lines

# The job's state, global because more than one function (and the host's EXIT trap) acts on it:
# PAIR_MODE is netns (each end in its own namespace) or one (both in the initial namespace);
# PAIR_PID the two ends' session leaders (children of this shell: `wait` needs that); PAIR_TMP
# the FIFOs' folder.
PAIR_MODE=one
PAIR_PID=()
PAIR_TMP=''

# Run a command where end $1 lives.
pair_in() {
    local i=$1
    shift
    if [[ $PAIR_MODE == netns ]]; then ip netns exec "${PAIR_NS[i]}" "$@"; else "$@"; fi
}
pair_ip() {
    local i=$1
    shift
    if [[ $PAIR_MODE == netns ]]; then ip -n "${PAIR_NS[i]}" "$@"; else ip "$@"; fi
}

# Removes what pair_up made (also a killed run's leftovers on a host). Fails when rxe0/rxe1
# stay: then they are someone else's (`run` on a host leaves rxe0 on dummy0).
pair_down() {
    local i dev why=''
    for i in 0 1; do
        if [[ -e /run/netns/${PAIR_NS[i]} ]]; then
            ip -n "${PAIR_NS[i]}" link del "${PAIR_NETDEV[i]}" 2>/dev/null
            ip netns del "${PAIR_NS[i]}" >&2
        fi
        ip link del "${PAIR_NETDEV[i]}" 2>/dev/null
    done
    # rxe unregisters itself when its netdev goes, asynchronously.
    for ((i = 0; i < 100; i++)); do
        [[ ! -e /sys/class/infiniband/${PAIR_DEV[0]} && ! -e /sys/class/infiniband/${PAIR_DEV[1]} ]] &&
            return 0
        sleep 0.1
    done
    for dev in "${PAIR_DEV[@]}"; do
        [[ -e /sys/class/infiniband/$dev ]] &&
            why+="$dev exists and is not ours ($(rdma link show "$dev/1" 2>&1)); "
    done
    printf '%s\n' "$why"
    return 1
}

# Runs a set-up step, what it prints to stderr; when it fails, says which step and what it printed.
pair_do() {
    local out
    if out=$("$@" 2>&1); then
        [[ -z $out ]] || printf '%s\n' "$out" >&2
        return 0
    fi
    printf '%s\n' "$out" >&2
    printf '%s\n' "$*: ${out:-failed}"
    return 1
}

# Makes the veth pair and rxe0/rxe1 on its ends ($PAIR_MODE says where), waits for DAD; prints
# the two link-local addresses (no scope), the server's first.
pair_up() {
    local i ns nd tries
    local -a addr=()
    pair_do ip link add "${PAIR_NETDEV[0]}" address "${PAIR_MAC[0]}" type veth \
        peer name "${PAIR_NETDEV[1]}" address "${PAIR_MAC[1]}" || return 1
    for i in 0 1; do
        ns=${PAIR_NS[i]} nd=${PAIR_NETDEV[i]}
        if [[ $PAIR_MODE == netns ]]; then
            pair_do ip netns add "$ns" || return 1
            pair_do ip link set "$nd" netns "$ns" || return 1
            pair_do ip -n "$ns" link set lo up || return 1
        fi
        pair_do pair_ip "$i" link set "$nd" up || return 1
    done
    for i in 0 1; do
        pair_do pair_in "$i" rdma link add "${PAIR_DEV[i]}" type rxe netdev "${PAIR_NETDEV[i]}" || return 1
    done
    # rdma_cm needs both link-local addresses out of DAD (tentative), as in rxe_prepare.
    for i in 0 1; do
        nd=${PAIR_NETDEV[i]}
        for ((tries = 0; tries < 200; tries++)); do
            [[ -z $(pair_ip "$i" -6 addr show dev "$nd" tentative) &&
                -n $(pair_ip "$i" -6 addr show dev "$nd" scope link) ]] && break
            sleep 0.1
        done
        addr[i]=$(pair_ip "$i" -6 -o addr show dev "$nd" scope link -tentative |
            awk '{ sub("/.*", "", $4); print $4; exit }')
        [[ -n ${addr[i]} ]] || { echo "no IPv6 link-local address out of DAD on $nd"; return 1; }
    done
    echo "server ${PAIR_DEV[0]} on ${PAIR_NETDEV[0]} ${addr[0]}, client ${PAIR_DEV[1]} on ${PAIR_NETDEV[1]} ${addr[1]} ($PAIR_MODE)" >&2
    printf '%s %s\n' "${addr[0]}" "${addr[1]}"
}

# pair_probe DIR SERVER-ADDR: a short bounded rping from the client's end to the server's, the
# real test of whether this kernel's rxe reaches across (namespaces). Prints what the client
# got ("3 pings") or why it failed.
pair_probe() {
    local dir=$1 spid i ok=1 rc tries=3 why
    local srv="$2%${PAIR_NETDEV[0]}" peer="$2%${PAIR_NETDEV[1]}"
    pair_in 0 timeout 30 rping -s -a "$srv" -C 3 >"$dir/probe-server.log" 2>&1 </dev/null &
    spid=$!
    # Until the server listens (rdma res lists its cm_id; a tool without it costs 2 s here).
    # Seen listening, one retry is enough (the first connect can time out while neighbours resolve).
    for ((i = 0; i < 20; i++)); do
        rdma res show cm_id 2>/dev/null | grep -q "${PAIR_DEV[0]}/.*LISTEN" && { tries=2; break; }
        kill -0 "$spid" 2>/dev/null || break
        sleep 0.1
    done
    for ((i = 1; i <= tries; i++)); do
        rc=0
        pair_in 1 timeout 10 rping -c -a "$peer" -C 3 -v >"$dir/probe-client.log" 2>&1 </dev/null || rc=$?
        echo "probe $i: rping -c -a $peer: exit $rc" >&2
        cat "$dir/probe-client.log" >&2
        if ((rc == 0)); then ok=0; break; fi
        kill -0 "$spid" 2>/dev/null || break
    done
    if ((ok == 0)); then
        why="$(grep -c '^ping data' "$dir/probe-client.log") pings"
        wait "$spid" || { why="the server's rping failed: $(tail -n 1 "$dir/probe-server.log")"; ok=1; }
    else
        if ((rc == 124)); then
            why="no connection within 10 s"
        else
            why=$(grep -m 1 -i 'event\|error' "$dir/probe-client.log" ||
                tail -n 1 "$dir/probe-client.log")
            why="${why:-exit $rc}"
        fi
        kill "$spid" 2>/dev/null
        wait "$spid" 2>/dev/null
    fi
    echo "probe server: $(tr '\n' ' ' <"$dir/probe-server.log")" >&2
    printf '%s\n' "$why"
    return "$ok"
}

# pair_end I ROLE SCRIPT FIFO ADDR PEER-ADDR: runs end I (0 server, 1 client) as ROLE: `bash -c
# SCRIPT`, output into FIFO, in a session of its own (so that all it starts can be killed), in
# place of this shell: the caller runs it in the background.
pair_end() {
    local i=$1 role=$2 script=$3 fifo=$4
    export RDMAMEMORY_RXE=1 RDMAMEMORY_PAIR_ROLE=$role RDMAMEMORY_RXE_DEVICE=${PAIR_DEV[i]}
    export RDMAMEMORY_RXE_NETDEV=${PAIR_NETDEV[i]}
    export RDMAMEMORY_RXE_ADDR="$5%${PAIR_NETDEV[i]}"
    export RDMAMEMORY_PEER_ADDR="$6%${PAIR_NETDEV[i]}"
    if [[ $PAIR_MODE == netns ]]; then
        export RDMAMEMORY_PAIR_NETNS=${PAIR_NS[i]}
        exec setsid ip netns exec "${PAIR_NS[i]}" /bin/bash -c "$script" </dev/null >"$fifo" 2>&1
    fi
    export RDMAMEMORY_PAIR_NETNS=''
    exec setsid /bin/bash -c "$script" </dev/null >"$fifo" 2>&1
}

# Kills the whole sessions of ends $@ (0 server, 1 client): TERM, then KILL after 5 s.
pair_kill() {
    local groups=() e i
    for e in "$@"; do
        [[ -n ${PAIR_PID[e]:-} ]] && kill -TERM -- "-${PAIR_PID[e]}" 2>/dev/null &&
            groups+=("-${PAIR_PID[e]}")
    done
    ((${#groups[@]})) || return 0
    for ((i = 0; i < 50; i++)); do
        kill -0 -- "${groups[@]}" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL -- "${groups[@]}" 2>/dev/null
    return 0
}

# Seconds since $1 (microseconds, from EPOCHREALTIME), one decimal.
pair_secs() {
    local t=${EPOCHREALTIME/[.,]/}
    t=$(((t - $1) / 100000))
    echo "$((t / 10)).$((t % 10))"
}

# pair_fail LOG WHY: the set-up failed; says why, shows the log's tail, exits 125.
pair_fail() {
    echo "rxe-vm: error: two hosts: $2" >&2
    echo "rxe-vm: --- pair set-up log (a trace; its last 80 of $(wc -l <"$1") lines)" >&2
    tail -n 80 "$1" >&2
    exit 125
}

# pair_main SERVER CLIENT DIR CWD NETNS GRACE: the pair job. Sets up (namespaces if NETNS is
# auto and they work, or on), runs `bash -c SERVER` and `bash -c CLIENT` in CWD, reports in
# DIR, gives the server GRACE seconds after the client ended; exits with the job's status.
# Runs with errexit off; every step checks for itself.
pair_main() {
    local server=$1 client=$2 dir=$3 cwd=$4 want=$5 grace=$6 log=$3/pair-setup.log
    local t0=${EPOCHREALTIME/[.,]/} tp=${EPOCHREALTIME/[.,]/} why='' up='' probe='' err rc xfd
    local -a addr
    [[ $want == auto || $want == on || $want == off ]] ||
        { echo "rxe-vm: error: RXE_VM_PAIR_NETNS must be auto, on or off, not '$want'" >&2; exit 125; }
    : >"$log"
    # On a host (not in the VM): leave nothing behind, however this ends (a timeout sends TERM).
    if [[ $RXE_VM_MODE == host ]]; then
        # shellcheck disable=SC2064 # the log's name now
        trap "pair_kill 0 1; pair_down >>$(printf '%q' "$log") 2>&1; [[ -z \$PAIR_TMP ]] || rm -rf \"\$PAIR_TMP\"" EXIT
        trap 'echo "rxe-vm: pair: terminated" >&2; exit 143' TERM INT
    fi
    # Set-up chatter, traces included, goes to the log: shown only if it fails.
    exec {xfd}>>"$log"
    BASH_XTRACEFD=$xfd
    PS4='+ ${EPOCHREALTIME} '
    set -x
    {
        ip link set lo up
        modprobe veth 2>/dev/null
        modprobe rdma_rxe 2>/dev/null
        # The VM's /run/netns is the host's, under the overlay: start from an empty one.
        if [[ $RXE_VM_MODE == vm ]]; then mkdir -p /run/netns && mount -t tmpfs netns /run/netns; fi
    } >>"$log" 2>&1
    err=$(pair_down 2>>"$log") ||
        pair_fail "$log" "cannot clear the way for ${PAIR_DEV[*]} on ${PAIR_NETDEV[*]}: $err"
    # pair_up prints the addresses, or why it failed; the probe (it follows a working set-up)
    # what it got, or why not.
    if [[ $want != off ]]; then
        PAIR_MODE=netns
        if up=$(pair_up 2>>"$log") && tp=${EPOCHREALTIME/[.,]/} &&
            probe=$(pair_probe "$dir" "${up%% *}" 2>>"$log"); then
            why="rping probe across namespaces: $probe"
        else
            why="this kernel's rxe cannot reach across namespaces (rping probe: ${probe:-set-up failed: $up})"
            [[ $want == on ]] && pair_fail "$log" "RXE_VM_PAIR_NETNS=on, but $why"
            PAIR_MODE=one
            err=$(pair_down 2>>"$log") || pair_fail "$log" "cannot remove the namespaces again: $err"
        fi
    else
        why="RXE_VM_PAIR_NETNS=off"
    fi
    if [[ $PAIR_MODE == one ]]; then
        probe=''
        { up=$(pair_up 2>>"$log") && tp=${EPOCHREALTIME/[.,]/} &&
            probe=$(pair_probe "$dir" "${up%% *}" 2>>"$log"); } ||
            pair_fail "$log" "rping between ${PAIR_NETDEV[0]} and ${PAIR_NETDEV[1]} in one namespace: ${probe:-set-up failed: $up}"
    fi
    read -r -a addr <<<"$up"
    set +x
    unset BASH_XTRACEFD
    exec {xfd}>&-
    if [[ $PAIR_MODE == netns ]]; then
        echo "rxe-vm: two hosts: server in netns ${PAIR_NS[0]} (${PAIR_DEV[0]} on ${PAIR_NETDEV[0]}), client in netns ${PAIR_NS[1]} (${PAIR_DEV[1]} on ${PAIR_NETDEV[1]}); $why; set-up $(pair_secs "$t0") s, probe $(pair_secs "$tp") s" >&2
    else
        echo "rxe-vm: two hosts, one namespace: server ${PAIR_DEV[0]} on ${PAIR_NETDEV[0]}, client ${PAIR_DEV[1]} on ${PAIR_NETDEV[1]}; $why; set-up $(pair_secs "$t0") s, probe $(pair_secs "$tp") s" >&2
    fi

    { PAIR_TMP=$(mktemp -d /tmp/rxe-vm-pair.XXXXXX) && mkfifo "$PAIR_TMP/server" "$PAIR_TMP/client"; } ||
        pair_fail "$log" "cannot make the output FIFOs"
    # The merger opens the server's FIFO, then the client's: each open waits for its writer.
    perl "$PAIR_MERGE" "$PAIR_TMP/server" "$PAIR_TMP/client" </dev/null &
    local mpid=$! src crc i
    cd "$cwd" || pair_fail "$log" "cannot cd to $cwd"
    touch "$dir/started"
    pair_end 0 server "$server" "$PAIR_TMP/server" "${addr[0]}" "${addr[1]}" &
    PAIR_PID[0]=$!
    pair_end 1 client "$client" "$PAIR_TMP/client" "${addr[1]}" "${addr[0]}" &
    PAIR_PID[1]=$!
    wait "${PAIR_PID[1]}" 2>/dev/null
    crc=$?
    # The client is done: the server gets a bounded grace to finish by itself.
    for ((i = 0; i < grace * 10; i++)); do
        kill -0 "${PAIR_PID[0]}" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "${PAIR_PID[0]}" 2>/dev/null; then
        echo "rxe-vm: server still running $grace s after the client exited: killed" >&2
        pair_kill 0
    fi
    wait "${PAIR_PID[0]}" 2>/dev/null # (bash's "Killed" job notice: said above already)
    src=$?
    # Whatever either left running would hold its FIFO open: end both sessions, then let the
    # merger drain what is left (bounded).
    pair_kill 0 1
    for ((i = 0; i < 100; i++)); do
        kill -0 "$mpid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$mpid" 2>/dev/null; then
        echo "rxe-vm: output still open 10 s after both ended (something escaped their sessions): not waiting" >&2
        kill "$mpid" 2>/dev/null
    fi
    wait "$mpid"
    rm -rf "$PAIR_TMP"
    PAIR_TMP=''
    echo "rxe-vm: server exit $src, client exit $crc" >&2
    rc=$crc
    ((rc == 0)) && rc=$src
    exit "$rc"
}
