#!/bin/sh
# tributary-entrypoint: run the aggregator or a worker, as TRIBUTARY_ROLE says.
#   TRIBUTARY_ROLE=aggregator (default)  tributary-aggregator ARGS...
#   TRIBUTARY_ROLE=worker                tributary-worker ARGS...
# A worker's client id is TRIBUTARY_WORKER_CLIENT_ID; when unset, the number that ends
# TRIBUTARY_POD_NAME (a StatefulSet pod: tributary-worker-7 -> 7) or the hostname. Its
# partition id defaults to that number too (TRIBUTARY_WORKER_PARTITION_ID overrides it).
set -eu

die() {
    echo "tributary-entrypoint: $*" >&2
    exit 2
}

# Print the decimal number that ends $1 (leading zeros dropped), or nothing.
trailing_number() {
    printf '%s\n' "$1" | sed -n 's/^\(.*[^0-9]\)\{0,1\}\([0-9][0-9]*\)$/\2/p' | sed 's/^0*\([0-9]\)/\1/'
}

role="${TRIBUTARY_ROLE:-aggregator}"
case "$role" in
    aggregator)
        exec tributary-aggregator "$@"
        ;;
    worker)
        if [ -z "${TRIBUTARY_WORKER_CLIENT_ID:-}" ]; then
            name="${TRIBUTARY_POD_NAME:-$(uname -n)}"
            id="$(trailing_number "$name")"
            [ -n "$id" ] || die "set TRIBUTARY_WORKER_CLIENT_ID: '$name' does not end in a number"
            TRIBUTARY_WORKER_CLIENT_ID="$id"
            export TRIBUTARY_WORKER_CLIENT_ID
        fi
        exec tributary-worker "$@"
        ;;
    *)
        die "TRIBUTARY_ROLE is '$role': set it to aggregator or worker"
        ;;
esac
