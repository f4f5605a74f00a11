# shellcheck shell=bash
# paired-figures.sh (bash, sourced): the arithmetic of the paired figures that scripts/mpi-tests
# and scripts/ucx-tests print. Each run measures both sides back to back, so each run gives one
# ratio, and the figure is the median of those ratios with their range: the emulated host's
# speed drifts by more than the differences sought within minutes, and a pair a minute apart
# shares the drift that separate medians would not. VALUES is a space-separated list.

median() {  # VALUES: the middle one (the lower middle for an even count), nothing for none
    tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }'
}

spread() {  # VALUES: "smallest-largest"
    tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{ v[NR] = $1 } END { if (NR) printf "%.2f-%.2f", v[1], v[NR] }'
}

ratio() {  # A B: "A/Bx", or "-" without a B
    awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }'
}

quotient() {  # A B: A/B to four places (one run's ratio), nothing when either is missing
    [[ -n $1 && -n $2 ]] || return 0
    awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.4f ", a / b }'
}

paired() {  # RATIOS: "median (range)", or "-" for none
    if [[ -n ${1// /} ]]; then echo "$(ratio "$(median "$1")" 1) ($(spread "$1"))"; else echo "-"; fi
}
