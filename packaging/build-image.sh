#!/usr/bin/env bash
# Builds edgegw's container image with buildah (no Docker engine needed).
#
#   packaging/build-image.sh [IMAGE]     (default: localhost/edgegw:$VERSION)
#
# The image is also tagged localhost/edgegw:latest and exported to
# dist/edgegw-image_$VERSION_$GOARCH.tar (docker-archive, loadable with
# `podman load -i` or `docker load -i`).
#
# Environment:
#   VERSION, GOARCH, SOURCE_DATE_EPOCH   as for build.sh; the image's creation
#                                        time and file times come from
#                                        SOURCE_DATE_EPOCH
#   FORMAT   docker (default) or oci. The docker format keeps the image's
#            HEALTHCHECK; its layer is bit-identical across rebuilds of the
#            same tree, but its config records the random ID and hostname of
#            buildah's build container, so the image ID is not. The OCI
#            format is bit-identical as a whole but has no field for a
#            health check (run it with podman --health-cmd instead).
#   CA_BUNDLE  PEM roots copied into the image for the cloud's TLS
#              (default /etc/ssl/certs/ca-certificates.crt)
set -euo pipefail
cd "$(dirname "$0")/.."

command -v buildah >/dev/null || {
	echo "build-image.sh: needs buildah (apt-get install --no-install-recommends buildah runc)" >&2
	exit 2
}
VERSION=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || true)}
VERSION=${VERSION:-0.0.0-dev}
GOARCH=${GOARCH:-$(go env GOARCH)}
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
# shellcheck source=packaging/stamp.sh
source packaging/stamp.sh # COMMIT, BUILD_DATE, STAMP_LDFLAGS
FORMAT=${FORMAT:-docker}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
IMAGE=${1:-localhost/edgegw:$VERSION}
case $FORMAT in docker | oci) ;; *) echo "build-image.sh: FORMAT must be docker or oci" >&2; exit 2 ;; esac
[[ -s $CA_BUNDLE ]] || { echo "build-image.sh: no CA bundle at $CA_BUNDLE (install ca-certificates or set CA_BUNDLE)" >&2; exit 2; }

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT

echo "== edgegw $VERSION image $IMAGE (linux/$GOARCH, $FORMAT format, SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH)"
CGO_ENABLED=0 GOOS=linux go build -trimpath \
	-ldflags "-s -w $STAMP_LDFLAGS" \
	-o "$ctx/rootfs/usr/bin/edgegw" ./cmd/edgegw
install -D -m 0644 packaging/edgegw.toml "$ctx/rootfs/etc/edgegw/edgegw.toml"
install -D -m 0644 "$CA_BUNDLE" "$ctx/rootfs/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nedgegw:x:65532:65532:edgegw:/var/lib/edgegw:/sbin/nologin\n' >"$ctx/rootfs/etc/passwd"
printf 'root:x:0:\nedgegw:x:65532:\n' >"$ctx/rootfs/etc/group"
chmod 0644 "$ctx/rootfs/etc/passwd" "$ctx/rootfs/etc/group"
install -d -m 1777 "$ctx/rootfs/tmp"
# Owned by 65532 in the image (COPY --chown): the state volume and the
# directory of the admin socket.
install -d -m 0700 "$ctx/state/var/lib/edgegw"
install -d -m 0750 "$ctx/state/run/edgegw"
cp packaging/Containerfile "$ctx/Containerfile"
find "$ctx" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

old=$(buildah images --quiet --no-trunc "$IMAGE" 2>/dev/null | head -n1 || true)
id=$(buildah build --quiet --timestamp "$SOURCE_DATE_EPOCH" --format "$FORMAT" --arch "$GOARCH" \
	--build-arg "VERSION=$VERSION" --build-arg "COMMIT=$COMMIT" -t "$IMAGE" -f "$ctx/Containerfile" "$ctx" | tail -n1)
buildah tag "$IMAGE" localhost/edgegw:latest
# The previous build under this tag is now unnamed: drop it (unless in use).
if [[ -n $old && $old != *"$id"* ]]; then
	buildah rmi "$old" >/dev/null 2>&1 || true
fi

mkdir -p dist
archive=dist/edgegw-image_${VERSION}_${GOARCH}.tar
rm -f "$archive"
buildah push --quiet "$IMAGE" "docker-archive:$archive:$IMAGE"
echo "image $IMAGE (ID ${id:0:12}), archive $archive ($(sha256sum <"$archive" | cut -c1-12))"
