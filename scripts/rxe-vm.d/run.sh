# shellcheck shell=bash
# run.sh (bash, sourced): the `run` job's side, on the host or in the VM, as root. The job
# script scripts/rxe-vm writes holds only what differs per run (the caller's environment, the
# command); it sources this file by its path in the checkout (the VM sees the host's / at the
# same paths) and calls run_job. Its own file so that the job's code is code one can read,
# lint and change, not text assembled with declare -f (where a helper left off the list was
# silently missing in the guest).

# The one-host rxe device: rxe0 on a dummy netdev, its MAC making GID 0 fe80::ff:fe00:1.
RXE_DEV=rxe0
RXE_NETDEV=dummy0
RXE_MAC=02:00:00:00:00:01

# Makes $RXE_DEV on $RXE_NETDEV unless it exists, waits for IPv6 DAD, and exports the
# RDMAMEMORY_RXE* variables: the environment the command inherits is what it is for.
rxe_prepare() {
    ip link set lo up
    if [[ ! -e /sys/class/infiniband/$RXE_DEV ]]; then
        if ! ip link show "$RXE_NETDEV" >/dev/null 2>&1; then
            ip link add "$RXE_NETDEV" type dummy 2>/dev/null || {
                modprobe dummy numdummies=0
                ip link add "$RXE_NETDEV" type dummy || return 1
            }
            ip link set "$RXE_NETDEV" address "$RXE_MAC" || return 1
        fi
        ip link set "$RXE_NETDEV" up
        modprobe rdma_rxe 2>/dev/null || true
        rdma link add "$RXE_DEV" type rxe netdev "$RXE_NETDEV" || return 1
    fi
    [[ -e /sys/class/infiniband/$RXE_DEV ]] || { echo "rxe-vm: no $RXE_DEV" >&2; return 1; }
    local netdev
    netdev=$(rdma link show "$RXE_DEV/1" | sed -n 's/.* netdev \([^ ]*\).*/\1/p')
    [[ -n $netdev ]] || { echo "rxe-vm: $RXE_DEV has no netdev" >&2; return 1; }
    ip link set "$netdev" up
    # rdma_cm needs the link-local address out of DAD (tentative); it takes under 5 s.
    local i
    for ((i = 0; i < 200; i++)); do
        [[ -z $(ip -6 addr show dev "$netdev" tentative) ]] &&
            [[ -n $(ip -6 addr show dev "$netdev" scope link) ]] && break
        sleep 0.1
    done
    local addr
    addr=$(ip -6 -o addr show dev "$netdev" scope link | awk '{ sub("/.*", "", $4); print $4; exit }')
    [[ -n $addr ]] || { echo "rxe-vm: no IPv6 link-local address on $netdev" >&2; return 1; }
    export RDMAMEMORY_RXE=1 RDMAMEMORY_RXE_DEVICE=$RXE_DEV RDMAMEMORY_RXE_NETDEV=$netdev
    export RDMAMEMORY_RXE_ADDR="$addr%$netdev"
}

# run_job DIR CWD COMMAND [ARGS]: rxe0 ready (its chatter into DIR/rxe-setup.log, shown only if
# it fails: exit 125), DIR/started touched (the host's boot clock stops there), then COMMAND in
# CWD, with stdin /dev/null, in place of this shell.
run_job() {
    local dir=$1 cwd=$2
    shift 2
    if ! rxe_prepare >"$dir/rxe-setup.log" 2>&1; then
        echo "rxe-vm: rxe setup failed:" >&2
        cat "$dir/rxe-setup.log" >&2
        exit 125
    fi
    cd "$cwd" || exit
    touch "$dir/started"
    set +euo pipefail
    exec "$@" </dev/null
}
