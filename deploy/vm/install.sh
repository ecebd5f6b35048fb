#!/usr/bin/env bash
# install.sh: install Tributary on a Debian 12 / Ubuntu 24.04 machine from a source tree.
#
#   sudo deploy/vm/install.sh [--root DIR] [--skip-python] [--source DIR]
#
# Creates the system user `tributary`, a venv at /opt/tributary/venv with the project in
# it, the systemd units, /etc/tributary/{aggregator,worker,role}.env and experiment.yaml
# (existing files in /etc/tributary are kept: they hold the operator's edits), the
# `tributary-role` and `tributary-secrets` commands, and enables tributary-role.service,
# which picks the role at boot. Running it again upgrades the venv and the units and keeps
# the configuration. It installs no secret: the tokens, the CA and the aggregator's
# certificate come from `tributary-secrets` (docs/deploy.md).
#
#   --source DIR    the project tree to install (default: the tree holding this script)
#   --root DIR      lay the files out under DIR (an image being built, or a test); no user
#                   is created and systemctl only makes links (`systemctl --root=DIR`)
#   --skip-python   do not create the venv nor run pip
# Environment:
#   TRIBUTARY_TORCH_INDEX_URL  pip index for torch/torchvision, installed before the project
#                   (default https://download.pytorch.org/whl/cpu: the CPU-only wheels;
#                   empty: take torch from PyPI with the project, e.g. on a GPU machine)
#   PYTHON          the interpreter that makes the venv (default python3, 3.11 or newer)
#   SYSTEMCTL       the systemctl command (default systemctl)
set -euo pipefail

readonly VENV=/opt/tributary/venv
readonly DEFAULT_TORCH_INDEX=https://download.pytorch.org/whl/cpu

root=""
skip_python=0
source_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
torch_index="${TRIBUTARY_TORCH_INDEX_URL-$DEFAULT_TORCH_INDEX}"
python="${PYTHON:-python3}"
systemctl_cmd="${SYSTEMCTL:-systemctl}"

die() {
    echo "install.sh: $*" >&2
    exit 2
}

# Copy a file unless the destination already exists (the operator's edits win).
install_once() {
    local mode="$1" src="$2" dest="$3"
    if [[ -e "$dest" ]]; then
        echo "kept $dest"
    else
        install -D -m "$mode" "$src" "$dest"
    fi
}

create_user() {
    if ! getent group tributary >/dev/null; then
        groupadd --system tributary
    fi
    if ! getent passwd tributary >/dev/null; then
        useradd --system --gid tributary --home-dir /var/lib/tributary --no-create-home \
            --shell /usr/sbin/nologin --comment "Tributary federated learning" tributary
    fi
}

install_python() {
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$python is older than 3.11: install python3.11 or newer (PYTHON=...)"
    [[ -x "$VENV/bin/python" ]] || "$python" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip
    if [[ -n "$torch_index" ]]; then
        "$VENV/bin/pip" install --quiet --index-url "$torch_index" torch torchvision
    fi
    "$VENV/bin/pip" install --quiet "$source_dir"
}

install_files() {
    local vm="$source_dir/deploy/vm" units="$root/etc/systemd/system" etc="$root/etc/tributary"
    local unit
    for unit in tributary-aggregator.service tributary-worker@.service tributary-role.service; do
        install -D -m 0644 "$vm/$unit" "$units/$unit"
    done
    install -D -m 0755 "$vm/tributary-role" "$root/usr/local/sbin/tributary-role"
    install -D -m 0755 "$vm/tributary-secrets" "$root/usr/local/sbin/tributary-secrets"
    # systemd reads the env files as root: 0600 keeps a TRIBUTARY_AGG_ADMIN_TOKEN line private.
    install_once 0600 "$vm/aggregator.env" "$etc/aggregator.env"
    install_once 0600 "$vm/worker.env" "$etc/worker.env"
    install_once 0644 "$vm/role.env" "$etc/role.env"
    install_once 0644 "$source_dir/deploy/experiment.yaml" "$etc/experiment.yaml"
}

main() {
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --root) [[ $# -ge 2 ]] || die "--root needs a directory"; root="${2%/}"; shift 2 ;;
            --source) [[ $# -ge 2 ]] || die "--source needs a directory"; source_dir="$2"; shift 2 ;;
            --skip-python) skip_python=1; shift ;;
            *) die "unknown argument '$1' (see the header of this script)" ;;
        esac
    done
    [[ -f "$source_dir/pyproject.toml" && -d "$source_dir/deploy/vm" ]] \
        || die "$source_dir is not a Tributary source tree (no pyproject.toml or deploy/vm)"
    if [[ -z "$root" ]]; then
        [[ "$(id -u)" == 0 ]] || die "run as root (or with --root DIR)"
        create_user
    elif [[ "$skip_python" == 0 ]]; then
        die "--root needs --skip-python: a venv only works at the path it was made in"
    fi
    [[ "$skip_python" == 1 ]] || install_python
    install_files
    if [[ -n "$root" ]]; then
        "$systemctl_cmd" "--root=$root" enable tributary-role.service
    else
        "$systemctl_cmd" daemon-reload
        "$systemctl_cmd" enable tributary-role.service
    fi
    echo "installed; edit $root/etc/tributary/role.env, then run: tributary-role apply"
}

main "$@"
