# shellcheck shell=bash
# debian-archive.sh (sourced, bash): debian_archive prints the address of the Debian archive
# this machine's own apt sources use, for apt lists of our own that reach suites the machine
# does not follow (trixie-backports for the newest kernel in scripts/rxe-vm, trixie's sources
# in scripts/libfabric-fabtests). Its own file because both scripts need it; taken from the
# machine so that no mirror is written into the tree (a machine behind a mirror or a proxy
# keeps using it).

# The first enabled `deb` source, one-line (sources.list, *.list) or deb822 (*.sources), that
# serves the machine's own release (VERSION_CODENAME: the main archive, not -security, not a
# third party's repository); else the first whose address ends in /debian; else Debian's own
# default address, deb.debian.org, which its installer writes (said on stderr). $1: the folder
# that holds apt/ and os-release (default /etc; another one to try it out).
debian_archive() {
    local etc=${1:-/etc} codename='' f uri
    local -a one_line=() deb822=()
    # shellcheck disable=SC1091 # the machine's, not ours
    codename=$(. "$etc/os-release" 2>/dev/null && printf '%s' "${VERSION_CODENAME:-}")
    for f in "$etc/apt/sources.list" "$etc"/apt/sources.list.d/*.list; do
        [[ -r $f ]] && one_line+=("$f")
    done
    for f in "$etc"/apt/sources.list.d/*.sources; do
        [[ -r $f ]] && deb822+=("$f")
    done
    # Each source as "URI SUITE...", one a line: the one-line files' first, then the deb822 ones.
    uri=$(
        {
            if ((${#one_line[@]})); then
                sed -e 's/#.*//' -e 's/\[[^]]*\]//' "${one_line[@]}" |
                    awk '$1 == "deb" && NF >= 3 { $1 = ""; print }'
            fi
            # deb822: a stanza per blank-line-separated paragraph; continuation lines join.
            if ((${#deb822[@]})); then awk '
                function flush() {
                    if (types ~ /(^| )deb( |$)/ && tolower(enabled) != "no" && uris != "")
                        { n = split(uris, u, " "); for (j = 1; j <= n; j++) print u[j], suites }
                    types = uris = suites = enabled = ""; key = ""
                }
                FNR == 1 { flush() }
                /^#/ { next }
                /^[ \t]*$/ { flush(); next }
                /^[ \t]/ { v = $0; sub(/^[ \t]+/, "", v); val[key] = val[key] " " v; set(); next }
                {
                    key = tolower($0); sub(/:.*/, "", key)
                    v = $0; sub(/^[^:]*:[ \t]*/, "", v); val[key] = v; set()
                }
                function set() {
                    if (key == "types") types = val[key]; else if (key == "uris") uris = val[key]
                    else if (key == "suites") suites = val[key]; else if (key == "enabled") enabled = val[key]
                }
                END { flush() }' "${deb822[@]}"
            fi
        } | awk -v codename="$codename" '
            { for (i = 2; i <= NF; i++) if (codename != "" && $i == codename) { found = $1; exit } }
            fallback == "" && $1 ~ /\/debian\/?$/ { fallback = $1 }
            END { print (found != "" ? found : fallback) }'
    ) || uri=''
    if [[ -z $uri ]]; then
        uri=http://deb.debian.org/debian
        echo "debian_archive: no Debian archive in the machine's apt sources; using $uri" >&2
    fi
    printf '%s\n' "${uri%/}"
}
