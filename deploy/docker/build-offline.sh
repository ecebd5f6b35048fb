#!/usr/bin/env bash
# build-offline: the project image without a container registry, and without a package
# index during the build (docs/deploy.md, "The image on an air-gapped host").
#
#   build-offline.sh base        a minimal Debian image with Debian's python3, made with
#                                debootstrap from a Debian mirror and `docker import`
#   build-offline.sh wheelhouse  every wheel the project needs, in deploy/docker/wheelhouse/
#                                (pip wheel on this host, from its configured index)
#   build-offline.sh image       the project image on that base, from that wheelhouse
#   build-offline.sh all         the three in turn; base and wheelhouse are kept when present
#
# Settings (environment):
#   SUITE (bookworm), MIRROR (http://deb.debian.org/debian), BASE_IMAGE (tributary-base:SUITE)
#   PYTHON (python3): its pip makes the wheelhouse; the same minor version as the base's
#       python3 (3.11 on bookworm)
#   PIP_ARGS: more arguments of `pip wheel`, e.g. "--extra-index-url
#       https://download.pytorch.org/whl/cpu" for CPU-only torch
#   IMAGE (tributary:local), DOCKER (docker; the build needs BuildKit, which Debian's
#       docker CLI has built in and others get from the buildx plugin)
# `base` needs root and debootstrap. Exit status: 0 done, 1 a step failed, 2 bad usage.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/../.." && pwd)"
SUITE="${SUITE:-bookworm}"
BASE_IMAGE="${BASE_IMAGE:-tributary-base:$SUITE}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
IMAGE="${IMAGE:-tributary:local}"
PYTHON="${PYTHON:-python3}"
PIP_ARGS="${PIP_ARGS:-}"
DOCKER="${DOCKER:-docker}"
WHEELHOUSE="$REPO/deploy/docker/wheelhouse"
# Debian's python3 (3.11 on bookworm) with venv; the image needs nothing else from Debian.
BASE_PACKAGES="python3,python3-venv"

die() {
    echo "build-offline: $*" >&2
    exit "${2:-1}"
}

have_image() {
    "$DOCKER" image inspect "$1" >/dev/null 2>&1
}

build_base() {
    if have_image "$BASE_IMAGE"; then
        echo "build-offline: $BASE_IMAGE exists; keeping it (docker rmi it to make it again)" >&2
        return
    fi
    [[ "$(id -u)" == 0 ]] || die "debootstrap needs root"
    command -v debootstrap >/dev/null || die "needs debootstrap: apt-get install debootstrap"
    local root
    root="$(mktemp -d /tmp/tributary-base.XXXXXX)"
    trap 'rm -rf "$root"' EXIT
    echo "build-offline: debootstrap $SUITE from $MIRROR into $root" >&2
    debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$root" "$MIRROR" >&2
    # No package index or cached .deb in the image: it installs nothing at run time.
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
        "$root"/var/log/* "$root"/usr/share/doc/* "$root"/usr/share/man/*
    tar -C "$root" -c . | "$DOCKER" import \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$root"
    trap - EXIT
    echo "build-offline: made $BASE_IMAGE" >&2
}

# The project's runtime dependencies, read from pyproject.toml.
dependencies() {
    python3 - "$REPO/pyproject.toml" <<'PY'
import sys
import tomllib

with open(sys.argv[1], "rb") as stream:
    print("\n".join(tomllib.load(stream)["project"]["dependencies"]))
PY
}

build_wheelhouse() {
    if compgen -G "$WHEELHOUSE/*.whl" >/dev/null; then
        echo "build-offline: $WHEELHOUSE has wheels; keeping them (empty it to make it again)" >&2
        return
    fi
    mkdir -p "$WHEELHOUSE"
    local requirements
    requirements="$(mktemp)"
    dependencies >"$requirements"
    # setuptools: the build backend of pyproject.toml, for installing the project offline.
    # shellcheck disable=SC2086
    "$PYTHON" -m pip wheel --wheel-dir "$WHEELHOUSE" $PIP_ARGS -r "$requirements" "setuptools>=77" >&2
    rm -f "$requirements"
    echo "build-offline: $(find "$WHEELHOUSE" -name '*.whl' | wc -l) wheels in $WHEELHOUSE" >&2
}

build_image() {
    have_image "$BASE_IMAGE" || die "no image $BASE_IMAGE: run build-offline.sh base first"
    compgen -G "$WHEELHOUSE/*.whl" >/dev/null \
        || die "no wheels in $WHEELHOUSE: run build-offline.sh wheelhouse first"
    DOCKER_BUILDKIT=1 "$DOCKER" build -f "$REPO/deploy/docker/Dockerfile" \
        --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg WHEELHOUSE=1 \
        -t "$IMAGE" "$REPO"
}

main() {
    [[ $# == 1 ]] || die "usage: build-offline.sh base | wheelhouse | image | all" 2
    case "$1" in
        base) build_base ;;
        wheelhouse) build_wheelhouse ;;
        image) build_image ;;
        all) build_base && build_wheelhouse && build_image ;;
        *) die "usage: build-offline.sh base | wheelhouse | image | all" 2 ;;
    esac
}

main "$@"
