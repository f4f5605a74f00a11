# shellcheck shell=bash
# kernel.sh (bash, sourced by scripts/rxe-vm): `setup`, the kernel the VM boots. Which one
# RXE_VM_KERNEL asks for, its Debian packages downloaded (never installed) into the cache,
# unpacked into vmlinuz and a base initramfs (static busybox and the modules rxe needs). Its own
# file because it is a job of its own, the one with apt and dpkg in it, done once per kernel;
# the driver keeps what a run does. Uses the driver's CACHE, LOGDIR, log, die, now_ms, since,
# require_root and setup_packages.

# Bump when the initramfs layout or module list changes: rebuilt from the cached .deb. (The
# /init is not in it: each run brings its own, from rxe-vm.d/init.)
INITRD_FORMAT=4
# Load order matters only loosely: modprobe --show-depends expands the dependencies (and
# skips what a kernel has built in). dummy gets numdummies=0 so that we name our own; veth
# makes two hosts in one VM.
MODULES=(virtio_pci 9pnet_virtio 9p overlay crc32_generic crc32-pclmul
    rdma_rxe rdma_ucm dummy veth)
# Debian's newest kernel: trixie-backports, through apt lists kept under the cache, from the
# archive the machine's own apt sources use.
NEWEST_SUITE="trixie-backports main"
# shellcheck source-path=SCRIPTDIR source=debian-archive.sh
source "${BASH_SOURCE[0]%/*}/debian-archive.sh"

# apt options that read and write the newest kernel's own lists and cache (never the host's).
newest_apt_options() {
    local dir=$CACHE/apt-newest
    printf '%s\n' -o "Dir::Etc::sourcelist=$dir/sources.list" -o Dir::Etc::sourceparts=- \
        -o "Dir::State::Lists=$dir/lists" -o "Dir::Cache=$dir/cache"
}

# Fetches the newest kernel's apt lists (once; again with `refresh`).
newest_lists() {
    local dir=$CACHE/apt-newest options
    if [[ ${1:-} == refresh || ! -f $dir/.updated ]]; then
        mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial"
        printf 'deb %s %s\n' "$(debian_archive /etc)" "$NEWEST_SUITE" >"$dir/sources.list"
        chown -R _apt "$dir/lists" "$dir/cache" 2>/dev/null || true
        mapfile -t options < <(newest_apt_options)
        apt-get "${options[@]}" update -q </dev/null >&2 || return 1
        touch "$dir/.updated"
    fi
}

# The kernel version a linux-image-amd64 meta package points at (stable or newest lists).
meta_target() {
    local options=()
    [[ $1 == newest ]] && mapfile -t options < <(newest_apt_options)
    apt-cache "${options[@]}" depends linux-image-amd64 2>/dev/null |
        awk '$1 ~ /Depends:$/ && $2 ~ /^linux-image-[0-9]/ { sub("^linux-image-", "", $2); print $2; exit }'
}

# The newest kernel version in the cache with marker file $1 (.newest: its newest kernel's
# packages came down; .complete: its cache was built) and of flavour $2 (a stable one lacks .newest).
cached_kernel() {
    local f
    find "$CACHE/kernels" -mindepth 2 -maxdepth 2 -name "$1" 2>/dev/null |
        while read -r f; do
            f=${f%/*}
            if [[ $2 == newest || ! -f $f/.newest ]]; then printf '%s\n' "${f##*/}"; fi
        done | sort -V | tail -n 1
}

# Which kernel RXE_VM_KERNEL asks for: prints its version and flavour (stable: one linux-image
# .deb from Debian 12; newest: linux-binary + linux-modules .debs from trixie-backports).
resolve_kernel() {
    local want=${RXE_VM_KERNEL:-stable} kver
    case $want in
    stable) ;;
    newest)
        if ! newest_lists; then
            # Offline: a finished newest kernel in the cache will do.
            kver=$(cached_kernel .newest newest)
            [[ -n $kver ]] || die "cannot fetch the apt lists of $(<"$CACHE/apt-newest/sources.list")"
            echo "$kver newest"
            return
        fi
        kver=$(meta_target newest)
        [[ -n $kver ]] || die "trixie-backports names no linux-image-amd64 kernel"
        echo "$kver newest"
        return ;;
    *)
        if [[ -f $CACHE/kernels/$want/.newest || $want == *+deb1[3-9]* ]]; then
            echo "$want newest"
        else
            echo "$want stable"
        fi
        return ;;
    esac
    kver=$(meta_target stable) || true
    if [[ -z $kver ]]; then
        # No apt lists yet: a finished stable cache is enough, otherwise fetch the lists.
        kver=$(cached_kernel .complete stable)
        if [[ -n $kver ]]; then
            echo "$kver stable"
            return
        fi
        apt-get update -q </dev/null >&2
        kver=$(meta_target stable)
    fi
    [[ -n $kver ]] || die "cannot resolve linux-image-amd64 to a kernel package"
    echo "$kver stable"
}

# Makes sure of the packages and of the kernel RXE_VM_KERNEL asks for, cached in
# $CACHE/kernels/VERSION/{vmlinuz,base.cpio.gz}; prints that folder. Quick when cached.
setup() {
    require_root
    local t0 kver flavour kernel
    t0=$(now_ms)
    mkdir -p "$CACHE/kernels" "$LOGDIR"
    # One setup at a time (two CI jobs, or two engineers, on one machine).
    exec 8>"$CACHE/.lock"
    flock 8
    setup_packages
    kernel=$(resolve_kernel)
    read -r kver flavour <<<"$kernel"
    if [[ -f $CACHE/kernels/$kver/.complete && $(cat "$CACHE/kernels/$kver/.complete") == "$INITRD_FORMAT" ]]; then
        log "using cached kernel $kver ($flavour) and initramfs from $CACHE/kernels/$kver ($(since "$t0") s)"
        exec 8>&-   # unlock; and qemu must not inherit it
        echo "$CACHE/kernels/$kver"
        return 0
    fi
    if ! kernel_debs_present "$kver" "$flavour" && ! download_kernel "$kver" "$flavour"; then
        # Stale lists: Debian drops a kernel's package from the archive once a newer ABI
        # replaces it. Fetch the lists, take the kernel they name now.
        [[ ${RXE_VM_KERNEL:-stable} == stable || ${RXE_VM_KERNEL} == newest ]] ||
            die "cannot download the packages of kernel $kver"
        log "download failed; updating the apt lists and trying again"
        if [[ $flavour == newest ]]; then newest_lists refresh; else apt-get update -q </dev/null >&2; fi
        kernel=$(resolve_kernel)
        read -r kver flavour <<<"$kernel"
        if [[ -f $CACHE/kernels/$kver/.complete && $(cat "$CACHE/kernels/$kver/.complete") == "$INITRD_FORMAT" ]]; then
            log "using cached kernel $kver ($flavour) and initramfs from $CACHE/kernels/$kver ($(since "$t0") s)"
            exec 8>&-
            echo "$CACHE/kernels/$kver"
            return 0
        fi
        kernel_debs_present "$kver" "$flavour" || download_kernel "$kver" "$flavour" ||
            die "cannot download the packages of kernel $kver"
    fi
    build_kernel_cache "$kver" "$flavour"
    log "setup done: kernel $kver ($flavour) cached in $CACHE/kernels/$kver ($(since "$t0") s)"
    exec 8>&-
    echo "$CACHE/kernels/$kver"
}

# The packages kernel $1 of flavour $2 comes in: one linux-image .deb (Debian 12), or
# linux-binary and linux-modules (Debian 13 and its backports, where linux-image is a small
# meta package).
kernel_packages() {
    if [[ $2 == newest ]]; then
        printf '%s\n' "linux-binary-$1" "linux-modules-$1"
    else
        printf '%s\n' "linux-image-$1"
    fi
}

# True when every package of kernel $1 (flavour $2) is in its cache folder.
kernel_debs_present() {
    local pkg
    while read -r pkg; do
        compgen -G "$CACHE/kernels/$1/${pkg}_*.deb" >/dev/null || return 1
    done < <(kernel_packages "$1" "$2")
}

# Downloads (never installs) the packages of kernel $1 (flavour $2) into their cache folder.
# Explicit error checks: called as a condition, where set -e does not apply.
download_kernel() {
    local kver=$1 flavour=$2 dir=$CACHE/kernels/$1 dl packages options=()
    mapfile -t packages < <(kernel_packages "$kver" "$flavour")
    [[ $flavour == newest ]] && mapfile -t options < <(newest_apt_options)
    log "downloading ${packages[*]} (about $([[ $flavour == newest ]] && echo 120 || echo 70) MB)"
    mkdir -p "$dir" || return 1
    dl=$(mktemp -d "$dir/download.XXXXXX") || return 1
    # apt drops privileges to _apt for downloads; let it write there (else a warning).
    chown _apt "$dl" 2>/dev/null || true
    if (cd "$dl" && apt-get "${options[@]}" download -q "${packages[@]}" </dev/null >&2) &&
        mv "$dl"/*.deb "$dir/"; then
        rm -rf "$dl"
        [[ $flavour == newest ]] && touch "$dir/.newest"
        return 0
    fi
    rm -rf "$dl"
    rmdir "$dir" 2>/dev/null || true
    return 1
}

# Extracts kernel $1 (flavour $2) from its cached packages into vmlinuz, and base.cpio.gz: static
# busybox and the modules, decompressed, with modules.list (their load order and options).
build_kernel_cache() {
    local kver=$1 kdir=$CACHE/kernels/$1 work deb m line ko n=0
    mkdir -p "$kdir"
    rm -f "$kdir/.complete"
    kernel_debs_present "$kver" "$2" || die "no cached packages of kernel $kver"
    log "extracting kernel $kver and building the initramfs"
    rm -rf "$kdir"/build.*   # left by an interrupted setup
    work=$(mktemp -d "$kdir/build.XXXXXX")
    for deb in "$kdir"/*.deb; do dpkg -x "$deb" "$work/root"; done
    # Merged /usr (Debian 13): modules under usr/lib/modules; modprobe and depmod look in lib/.
    if [[ -d $work/root/usr/lib/modules && ! -e $work/root/lib/modules ]]; then
        mkdir -p "$work/root/lib"
        ln -s ../usr/lib/modules "$work/root/lib/modules"
    fi
    # The .deb ships no modules.dep; modprobe needs it to resolve dependencies. (Its warnings
    # about files only an installed kernel has, modules.builtin*, are noise here.)
    depmod -b "$work/root" "$kver" 2>/dev/null
    if [[ -f $work/root/boot/vmlinuz-$kver ]]; then
        cp "$work/root/boot/vmlinuz-$kver" "$kdir/vmlinuz"
    elif [[ -f $work/root/usr/lib/modules/$kver/vmlinuz ]]; then
        cp "$work/root/usr/lib/modules/$kver/vmlinuz" "$kdir/vmlinuz"
    else
        die "no vmlinuz in the packages of kernel $kver"
    fi

    local ird=$work/initrd
    mkdir -p "$ird"/{bin,sbin,dev,proc,sys,lib/modules,lower,rw,newroot}
    cp "$(command -v busybox)" "$ird/bin/busybox"
    file -L "$ird/bin/busybox" 2>/dev/null | grep -q 'statically linked' ||
        ldd "$ird/bin/busybox" 2>&1 | grep -q 'not a dynamic' ||
        die "busybox is not static (install busybox-static)"
    ln -s busybox "$ird/bin/sh"
    : >"$ird/modules.list"
    declare -A seen=()
    for m in "${MODULES[@]}"; do
        # -C /dev/null: ignore the host's modprobe.d options; we add our own below.
        while read -r line; do
            [[ $line == insmod\ * ]] || continue
            ko=${line#insmod }
            ko=${ko%% *}
            [[ -n ${seen[$ko]:-} ]] && continue
            seen[$ko]=1
            n=$((n + 1))
            local name base
            base=$(basename "$ko")
            # busybox's insmod wants plain .ko files: newer kernels ship them compressed.
            case $base in
            *.ko.xz) base=${base%.xz}; name=$(printf '%02d-%s' "$n" "$base"); xz -dc "$ko" >"$ird/lib/modules/$name" ;;
            *.ko.zst) base=${base%.zst}; name=$(printf '%02d-%s' "$n" "$base"); zstd -qdc "$ko" >"$ird/lib/modules/$name" ;;
            *) name=$(printf '%02d-%s' "$n" "$base"); cp "$ko" "$ird/lib/modules/$name" ;;
            esac
            if [[ $base == dummy.ko ]]; then
                printf '%s numdummies=0\n' "$name" >>"$ird/modules.list"
            else
                printf '%s\n' "$name" >>"$ird/modules.list"
            fi
        # A module this kernel builds in is "not found" here (no modules.builtin): nothing to load.
        done < <(modprobe -C /dev/null -d "$work/root" -S "$kver" --show-depends "$m" 2>/dev/null)
    done
    grep -q rdma_rxe "$ird/modules.list" || die "rdma_rxe not found in kernel $kver"
    (cd "$ird" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) |
        gzip -9 >"$kdir/base.cpio.gz"
    cp "$ird/modules.list" "$kdir/modules.list"
    rm -rf "$work"
    printf '%s\n' "$INITRD_FORMAT" >"$kdir/.complete"
}
