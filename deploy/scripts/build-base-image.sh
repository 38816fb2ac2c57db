#!/usr/bin/env bash
# A local stand-in for python:3.11-slim, for machines that reach Debian's mirror but no container
# registry (CI here): `debootstrap bookworm` (minbase, plus python3, python3-venv and
# ca-certificates: Debian 12's Python is 3.11) imported with `docker import`. deploy/Dockerfile
# takes it as its base: docker build --build-arg PYTHON_IMAGE=message-service-base:bookworm ...
#
# Certificates this machine trusts beyond Debian's set (an egress proxy's CA, say) are added to
# the base's trust store, so pip inside the build reaches PyPI the way the host does.
#
# The image is kept: an existing tag is reused unless --force is given. Needs root (debootstrap
# and a chroot), debootstrap and a running Docker daemon.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: build-base-image.sh [-h] [--force] [TAG]

TAG defaults to $BASE_IMAGE, else message-service-base:bookworm.

Environment:
  DEBIAN_MIRROR   the Debian mirror debootstrap downloads from (default http://deb.debian.org/debian)
  DEBIAN_SUITE    the release (default bookworm: Python 3.11, as python:3.11-slim)
USAGE
}

force=0
tag="${BASE_IMAGE:-message-service-base:bookworm}"
while [[ $# -gt 0 ]]; do
    case "$1" in
        -h | --help)
            usage
            exit 0
            ;;
        --force) force=1 ;;
        -*)
            usage >&2
            exit 2
            ;;
        *) tag="$1" ;;
    esac
    shift
done
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
suite="${DEBIAN_SUITE:-bookworm}"

if [[ $force -eq 0 ]] && docker image inspect "$tag" >/dev/null 2>&1; then
    echo "base image ${tag} exists (--force rebuilds it)"
    exit 0
fi
command -v debootstrap >/dev/null || {
    echo "debootstrap is not installed (apt-get install debootstrap)" >&2
    exit 1
}

rootfs="$(mktemp -d /tmp/message-service-rootfs.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT

echo "debootstrap ${suite} from ${mirror} into ${rootfs}"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$suite" "$rootfs" "$mirror" >"${rootfs}.log" 2>&1 || {
    tail -20 "${rootfs}.log" >&2
    exit 1
}
rm -f "${rootfs}.log"

# The host's extra trust anchors: every certificate of its bundle that Debian's does not have.
python3 - "$rootfs" <<'PY'
import pathlib
import re
import sys

root = pathlib.Path(sys.argv[1])
pattern = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
host = pattern.findall(pathlib.Path("/etc/ssl/certs/ca-certificates.crt").read_text())
base = set(pattern.findall((root / "etc/ssl/certs/ca-certificates.crt").read_text()))
extra = [cert for cert in host if cert not in base]
target = root / "usr/local/share/ca-certificates"
for number, cert in enumerate(extra):
    (target / f"host-extra-{number}.crt").write_text(cert + "\n")
print(f"{len(extra)} extra CA certificate(s) from this host")
PY
chroot "$rootfs" update-ca-certificates >/dev/null

# Like the official slim images: no package lists or downloaded .debs, `python` as python3.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb
ln -sf python3 "$rootfs/usr/bin/python"

tar -C "$rootfs" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    - "$tag" >/dev/null
echo "base image ${tag}: $(docker image inspect --format '{{.Size}}' "$tag") bytes"
